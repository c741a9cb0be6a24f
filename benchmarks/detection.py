"""Detection benchmark on the shipped reference models: confusion tables, AUCs, cost per verdict.

    python benchmarks/detection.py [--model NAME ...] [--out DIR] [--config FILE] [--runs 1] [--plot PNG]
    python benchmarks/detection.py --model NAME ... --from DIR [--plot PNG]   # tables and plot of a kept run

Certifies every image of each model's manifest (default: every shipped reference model) with
verifier's defaults (or --config); a reference LoRA (``--model reference-32px-lora``, the fine-tune rows) is
certified as its base with the LoRA (``--lora``), every image its manifest lists, the ground truth being what the
fine-tune reproduces (introduced or inherited: memorized; never trained by either: never trained). Then it prints
per model:

- the confusion table of verdicts against the ground truth (memorized / seen-once or few
  duplicates / never trained);
- the AUC with which each continuous score separates memorized from never-trained images:
  ``1 - error ratio`` (higher = more memorized) and the replication rate;
- denoiser evaluations per verdict (hardware independent: what each image spent, sequential
  sampling and the never-seen twin control included, averaged over the images) and wall time per
  image, on this machine;

and one line per model at the end (docs/benchmarks.md, "Per family"). With ``--plot PNG`` it also draws,
per model, the error ratio and the replication rate of every image grouped by ground truth, with the
thresholds the verdicts used (matplotlib; ``pip install -e ".[plot]"``).

Each run certifies into a fresh folder (no resume), so wall times are real; with --runs > 1 the
spread across runs is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch


ROWS = ["memorized", "trained, not memorized", "never trained"]
COLUMNS = ["memorized", "rarely_reproduced", "inconclusive", "not_memorized"]


def main() -> int:
    from verifier.reference_models import REFERENCE_LORAS, REFERENCE_MODELS, WHOLE_IMAGE_MODELS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", default=list(WHOLE_IMAGE_MODELS),
                        choices=REFERENCE_MODELS + tuple(REFERENCE_LORAS))
    parser.add_argument("--out", type=Path, default=None, help="keep the certificates of each model's last run here")
    parser.add_argument("--config", default=None, help="TOML/JSON config (default: verifier's defaults)")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--plot", type=Path, default=None, help="also draw the score distributions into this PNG")
    parser.add_argument("--from", dest="kept", type=Path, default=None,
                        help="read the certificates an earlier --out DIR kept (DIR/<model>) instead of certifying")
    args = parser.parse_args()

    from verifier.config import build_config

    config = build_config(args.config)
    if args.kept is not None:
        results = [kept(name, args.kept / name) for name in args.model]
    else:
        results = [measure(name, config, args.runs, None if args.out is None else args.out / name)
                   for name in args.model]
    print(f"config: {args.config or 'defaults'}, runs per model: {args.runs}, machine: {platform.machine()} "
          f"{platform.processor() or ''}, torch threads {torch.get_num_threads()}")
    for result in results:
        print_model(result, config)
    print_summary(results)
    if args.plot is not None:
        plot_distributions(results, args.plot)
        print(f"\nwrote {args.plot}")
    return 0


def measure(name: str, config, runs: int, keep: Path | None) -> dict:
    """Certify every image of reference model ``name`` ``runs`` times; its certificates and wall times."""
    from verifier.api import certify

    model, folder, manifest, loras = _reference(name)
    truth = ground_truth(name)
    listing = Path(tempfile.mkdtemp()) / "images.jsonl"
    listing.write_text("".join(json.dumps({"path": str(folder / i["file"]), "id": i["id"]}) + "\n"
                               for i in manifest["images"]))
    seconds = []
    certificates = []
    for run in range(runs):
        out = Path(tempfile.mkdtemp(prefix="verifier-bench-"))
        started = time.perf_counter()
        certificates = certify(model, [listing], out, config, loras=loras)
        seconds.append(time.perf_counter() - started)
        if keep is not None and run == runs - 1:
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(out, keep)
        shutil.rmtree(out)
    return {"name": name, "truth": truth, "certificates": certificates, "seconds": seconds}


def _reference(name: str) -> tuple[Path, Path, dict, list]:
    """(the model to load, the folder its manifest's files are in, the manifest, the LoRA adapters on the model)."""
    from verifier.models.lora import LoraSpec
    from verifier.reference_models import (REFERENCE_LORAS, load_lora_manifest, load_manifest, reference_lora_path,
                                           reference_model_path)

    if name in REFERENCE_LORAS:
        lora = reference_lora_path(name)
        return reference_model_path(REFERENCE_LORAS[name]), lora.parent, load_lora_manifest(name), [LoraSpec(lora)]
    return reference_model_path(name), reference_model_path(name), load_manifest(name), []


def ground_truth(name: str) -> dict[str, str]:
    """Each image's ground-truth group, from the model's manifest; for a reference LoRA, what the base with the LoRA
    reproduces (stock diffusers, its manifest's ``lora`` entry) and what neither model was trained on."""
    _, _, manifest, loras = _reference(name)
    if loras:
        return {image["id"]: ("memorized" if image["lora"]["memorized"] else
                              "never trained" if image["split"] in ("held_out", "base_held_out") else
                              "trained, not memorized") for image in manifest["images"]}
    return {image["id"]: ("memorized" if image["memorized"] else
                          "never trained" if image["split"] == "held_out" else "trained, not memorized")
            for image in manifest["images"]}


def kept(name: str, folder: Path) -> dict:
    """A kept run's certificates (``--out``); its wall time is not known."""
    from verifier.certificate.schema import read_certificate
    from verifier.verify import certificate_files

    return {"name": name, "truth": ground_truth(name), "seconds": [],
            "certificates": [read_certificate(path) for path in certificate_files(folder)]}


def _aucs(result: dict) -> tuple[float, float] | None:
    from sklearn.metrics import roc_auc_score

    truth = result["truth"]
    scored = [c for c in result["certificates"] if truth[c["image"]["id"]] in ("memorized", "never trained")]
    labels = [truth[c["image"]["id"]] == "memorized" for c in scored]
    if len(set(labels)) < 2:
        return None
    return (roc_auc_score(labels, [1 - c["conditions"]["existence"]["value"] for c in scored]),
            roc_auc_score(labels, [c["conditions"]["probability"]["rate"] for c in scored]))


def _table(result: dict) -> dict:
    table = {row: {column: 0 for column in COLUMNS} for row in ROWS}
    for certificate in result["certificates"]:
        table[result["truth"][certificate["image"]["id"]]][certificate["verdict"]] += 1
    return table


def _control_evaluations(certificates: list[dict]) -> float:
    """The never-seen twin control's denoiser evaluations, averaged over every image."""
    return sum((c["budget"]["control_denoiser_evaluations"] or {}).get("total", 0) for c in certificates) / len(
        certificates)


def _evaluations_per_verdict(certificates: list[dict]) -> float:
    """Denoiser evaluations each image actually spent (sequential sampling, control), averaged."""
    return statistics.mean(c["budget"]["denoiser_evaluations_spent"]["total"]
                           + (c["budget"]["control_denoiser_evaluations"] or {}).get("total", 0) for c in certificates)


def print_model(result: dict, config) -> None:
    from verifier.api import denoiser_evaluations

    certificates, truth = result["certificates"], result["truth"]
    model = certificates[0]["model"]
    print(f"\n== {result['name']}: {model['family']}, {model['prediction_type']}, {model['resolution']} px, "
          f"{len(certificates)} images, device {certificates[0]['environment']['device']}")
    table = _table(result)
    print(f"{'ground truth':24s}" + "".join(f"{c:>19s}" for c in COLUMNS))
    for row in ROWS:
        print(f"{row:24s}" + "".join(f"{table[row][c]:>19d}" for c in COLUMNS))
    aucs = _aucs(result)
    if aucs is not None:
        memorized = sum(truth[c["image"]["id"]] == "memorized" for c in certificates)
        never = sum(truth[c["image"]["id"]] == "never trained" for c in certificates)
        print(f"\nAUC memorized vs never trained ({memorized} vs {never}): error ratio {aucs[0]:.3f}, "
              f"replication rate {aucs[1]:.3f}")
    for group in ROWS:
        ratios = [c["conditions"]["existence"]["value"] for c in certificates if truth[c["image"]["id"]] == group]
        ratios = [r for r in ratios if r is not None]
        if ratios:
            print(f"error ratio, {group:24s} min {min(ratios):.3f}  median {statistics.median(ratios):.3f}  "
                  f"max {max(ratios):.3f}")
    planned = denoiser_evaluations(config)
    spent = [c["budget"]["denoiser_evaluations_spent"]["sampling_forward"] for c in certificates]
    extended = sum(value > planned["sampling_forward"] for value in spent)
    steps = [c["prediction_error"]["inversion_steps"] for c in certificates]
    went_on = {group: sum(c["prediction_error"]["inversion_steps"] > config.inversion_steps for c in certificates
                          if truth[c["image"]["id"]] == group) for group in ROWS}
    print(f"inversion steps: {statistics.mean(steps):.1f} on average, max {max(steps)}; images that went on past "
          f"{config.inversion_steps}: " + ", ".join(f"{group} {count}" for group, count in went_on.items()))
    inversion = statistics.mean(c["budget"]["denoiser_evaluations_spent"]["inversion_forward_backward"]
                                for c in certificates)
    error = statistics.mean(c["budget"]["denoiser_evaluations_spent"]["error_forward"] for c in certificates)
    print(f"denoiser evaluations per verdict: {inversion:.0f} forward+backward for inversion "
          f"({planned['inversion_forward_backward']} planned), {error:.0f} forward for the error, "
          f"{statistics.mean(spent):.0f} forward for "
          f"sampling on average ({planned['sampling_forward']} at the first look; {extended} of {len(spent)} images "
          f"sampled further, max {max(spent)}) + {_control_evaluations(certificates):.0f} per image on average for "
          f"the control")
    per_image = [s / len(certificates) for s in result["seconds"]]
    if not per_image:
        print("wall time per image: not known (certificates read from a kept run)")
        return
    spread = f" (min {min(per_image):.2f}, max {max(per_image):.2f} over {len(per_image)} runs)" \
        if len(per_image) > 1 else ""
    print(f"wall time per image: {statistics.median(per_image):.2f} s{spread}, batch size {config.batch_size}")


def print_summary(results: list[dict]) -> None:
    """One line per model: family, the scored verdicts that agree, AUCs, cost."""
    print(f"\n{'model':22s} {'family':7s} {'prediction':13s} {'memorized->memorized':>21s} "
          f"{'never->not_memorized':>21s} {'AUC ratio':>10s} {'AUC rate':>9s} {'evals/verdict':>14s} {'s/image':>8s}")
    for result in results:
        model = result["certificates"][0]["model"]
        table = _table(result)
        memorized, never = table["memorized"], table["never trained"]
        aucs = _aucs(result) or (float("nan"), float("nan"))
        per_image = statistics.median(s / len(result["certificates"]) for s in result["seconds"]) \
            if result["seconds"] else float("nan")
        print(f"{result['name']:22s} {model['family']:7s} {model['prediction_type']:13s} "
              f"{memorized['memorized']:>10d}/{sum(memorized.values()):<10d} "
              f"{never['not_memorized']:>10d}/{sum(never.values()):<10d} {aucs[0]:>10.3f} {aucs[1]:>9.3f} "
              f"{_evaluations_per_verdict(result['certificates']):>14.0f} {per_image:>8.2f}")


GROUP_COLOURS = {"memorized": "#c62828", "trained, not memorized": "#ef8f00", "never trained": "#2e7d32"}


def plot_distributions(results: list[dict], path: Path) -> dict[str, dict[str, int]]:
    """One row per model: the error ratio (left) and the best scale's replication rate (right) of every image,
    one strip per ground-truth group, with the existence threshold and the probability condition's minimum
    rate as dashed lines. Returns the points drawn per model and group (non-finite ratios are not drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figure, axes = plt.subplots(len(results), 2, figsize=(11, 2.8 * len(results)), squeeze=False)
    jitter = np.random.default_rng(0)
    drawn: dict[str, dict[str, int]] = {}
    for (ratio_axis, rate_axis), result in zip(axes, results):
        certificates, truth = result["certificates"], result["truth"]
        conditions = certificates[0]["conditions"]
        drawn[result["name"]] = {}
        for position, group in enumerate(reversed(ROWS)):
            chosen = [c for c in certificates if truth[c["image"]["id"]] == group]
            ratios = [c["conditions"]["existence"]["value"] for c in chosen]
            ratios = [r for r in ratios if r is not None]
            rates = [c["conditions"]["probability"]["rate"] for c in chosen]
            drawn[result["name"]][group] = len(ratios)
            for axis, values in ((ratio_axis, ratios), (rate_axis, rates)):
                axis.scatter(values, position + jitter.uniform(-0.18, 0.18, len(values)), s=18, alpha=0.75,
                             color=GROUP_COLOURS[group], label=f"{group} ({len(chosen)})")
        labels = [f"{group}" for group in reversed(ROWS)]
        for axis in (ratio_axis, rate_axis):
            axis.set_yticks(range(len(ROWS)), labels)
            axis.set_ylim(-0.6, len(ROWS) - 0.4)
            axis.grid(axis="x", alpha=0.3)
        ratio_axis.axvline(conditions["existence"]["threshold"], color="black", linestyle="--", linewidth=1)
        ratio_axis.set_xlabel("error ratio, witness / empty prompt (threshold dashed)")
        rate_axis.axvline(conditions["probability"]["threshold"], color="black", linestyle="--", linewidth=1)
        rate_axis.set_xlim(-0.03, 1.03)
        rate_axis.set_xlabel("replication rate, best guidance scale (minimum dashed)")
        ratio_axis.set_title(f"{result['name']}: error ratio", fontsize=10, loc="left")
        rate_axis.set_title(f"{result['name']}: replication rate", fontsize=10, loc="left")
        rate_axis.tick_params(labelleft=False)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return drawn


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
