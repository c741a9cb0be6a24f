"""How long to invert: the error-ratio trajectory of every image of a reference model, and the
inversion schedule's rule replayed on it for several settings.

    python benchmarks/inversion_schedule.py --model reference-sd3-32px [--steps 240] [--threads N]
    python benchmarks/inversion_schedule.py --replay trajectories/*.json

1. Invert every image of the model's manifest (memorized, trained once or duplicated but not
   memorized, never trained) in one batch for ``--steps`` Adam steps with the default space,
   learning rate and noise draws, measuring each image's error ratio on the fixed grid (stage 4's
   measurement) every 20 steps. This is what the inversion sees at its checks.
2. Replay ``verifier.invert.InversionSchedule`` (the code a run uses) on those ratios for each
   setting below, and print per ground-truth group how many images end at or below the default
   existence threshold (0.5), their ratio range, the mean steps and how many went on past
   ``inversion_steps``.

``--save FILE`` keeps the trajectories (a JSON list, one entry per model), which ``--replay FILE...``
reads back without inverting again.
One run; the inversion is deterministic (per-image random streams), so a rerun gives the same numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

SETTINGS = [  # (inversion_steps, inversion_max_steps, inversion_min_drop in ratio units); the check window is 20
    (60, 60, 0.0),  # a fixed 60 steps (before the schedule)
    (60, 240, 0.01),
    (60, 240, 0.02),  # the default
    (60, 240, 0.03),
    (60, 240, 0.05),
    (60, 120, 0.02),
    (40, 240, 0.02),
]
WINDOW = 20


def trajectories(name: str, steps: int) -> dict:
    from verifier.config import VerifierConfig
    from verifier.error import prediction_error
    from verifier.images import prepare_image
    from verifier.invert import InversionSearch, image_generator
    from verifier.models import load_model
    from verifier.reference_models import load_manifest, reference_model_path
    from verifier.registry import INVERSION_SPACES

    config = VerifierConfig(device="cpu")
    folder, manifest = reference_model_path(name), load_manifest(name)
    model = load_model(folder, device="cpu")
    model.configure_objective(config.error_form, config.flow_timestep_density, manifest["resolution"])
    rows = manifest["images"]
    z0 = model.encode_images([prepare_image(folder / row["file"], manifest["resolution"]) for row in rows])
    space = INVERSION_SPACES.get(config.inversion_space)(model, config.inversion_tokens)
    grid = {"timesteps": config.error_timesteps, "noise_draws": config.error_noise_draws}
    empty = prediction_error(model, z0, model.empty_conditioning().expand(len(rows)), **grid).mean(1)
    search = InversionSearch(model, space, z0, [image_generator(config.seed, row["sha256"], "inversion") for row in rows],
                             config.inversion_learning_rate, config.inversion_noise_draws)
    ratios, started = {}, time.time()
    for step in range(WINDOW, steps + 1, WINDOW):
        search.run(WINDOW)
        ratios[step] = (prediction_error(model, z0, search.witness(), **grid).mean(1) / empty).tolist()
        print(f"  {name}: step {step}, {time.time() - started:.0f} s", flush=True)
    return {"model": name, "ids": [row["id"] for row in rows], "groups": [_group(row) for row in rows],
            "ratios": {str(step): values for step, values in ratios.items()}, "seconds": time.time() - started}


def _group(row: dict) -> str:
    if row["memorized"]:
        return "memorized"
    return "never trained" if row["split"] == "held_out" else "trained, not memorized"


def replay(data: dict, steps: int, max_steps: int, min_drop: float) -> list[tuple[int, float]]:
    """(steps taken, final ratio) per image under one setting, by the schedule's own rule."""
    from verifier.invert import InversionSchedule

    schedule = InversionSchedule(steps=steps, max_steps=max_steps, window=WINDOW, min_drop=min_drop,
                                 error_timesteps=0, error_noise_draws=0)
    ratios = {int(step): values for step, values in data["ratios"].items()}
    result = []
    for image in range(len(data["ids"])):
        step = schedule.replayed_checks([ratios[step][image] for step in schedule.check_steps()])[-1]
        result.append((step, ratios[step][image]))
    return result


def report(data: dict) -> None:
    last = max(int(step) for step in data["ratios"])
    print(f"\n== {data['model']}: {len(data['ids'])} images, ratios every {WINDOW} steps to {last} "
          f"(inverted in {data['seconds']:.0f} s, one run)")
    for steps, max_steps, min_drop in SETTINGS:
        if max_steps > last:
            continue
        outcome = replay(data, steps, max_steps, min_drop)
        print(f"inversion_steps {steps}, max {max_steps}, min_drop {min_drop:.2f}:")
        for group in ("memorized", "trained, not memorized", "never trained"):
            members = [outcome[i] for i, g in enumerate(data["groups"]) if g == group]
            if not members:
                continue
            ratios = [ratio for _, ratio in members]
            taken = [step for step, _ in members]
            print(f"  {group:24s} ratio <= 0.5: {sum(r <= 0.5 for r in ratios):2d}/{len(members):<2d}  "
                  f"ratio {min(ratios):.3f}-{max(ratios):.3f}  steps mean {statistics.mean(taken):5.1f}, "
                  f"{sum(t > steps for t in taken)} went on")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="*", default=[])
    parser.add_argument("--steps", type=int, default=240)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--save", default=None, help="write the trajectories to this JSON file")
    parser.add_argument("--replay", nargs="*", default=[], help="trajectory files from --save")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    runs = [run for path in args.replay for run in json.loads(open(path).read())]
    measured = []
    for name in args.model:
        measured.append(trajectories(name, args.steps))
        if args.save:  # after every model, so a long run keeps what it measured
            with open(args.save, "w") as handle:
                json.dump(measured, handle)
    runs += measured
    for data in runs:
        report(data)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
