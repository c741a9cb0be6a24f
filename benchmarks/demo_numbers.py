"""`verifier demo` on the shipped reference models, in one precision or two: verdicts against the ground truth,
and the certificate numbers of one run against another's (or against recorded golden values).

    python benchmarks/demo_numbers.py [--model NAME ...] [--device cpu] [--autocast off bfloat16]
                                      [--golden FILE] [--write-golden FILE]

For each model and each ``--autocast`` setting it runs the real command, ``verifier demo --model NAME
--device D --autocast A --quiet`` (in this process, through the click entry point), reads the certificates
it wrote and keeps per image the verdict, the error ratio, the best similarity and the replications at the
best guidance scale. It then prints, per model:

- the demo's exit code (0: every scored verdict agrees with the manifest's ground truth);
- for each setting after the first, the verdicts that differ from the first setting's and the largest
  absolute differences of the error ratio and of the best similarity (the tolerance that setting needs);
- with ``--golden FILE``, the same comparison against the numbers recorded there (for example the CPU's
  float32 numbers, compared on a GPU).

``--write-golden FILE`` records the first setting's numbers (with the machine and versions they came
from), which is how ``benchmarks/figures/demo-golden-cpu.json`` was made. The GPU check
(``benchmarks/gpu_check.py``) calls :func:`run_demo` and :func:`compare` the same way.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

NUMBERS = ("error_ratio", "similarity")


def run_demo(model: str, out: Path, device: str, autocast: str, extra: list[str] | None = None) -> dict:
    """One real ``verifier demo`` run; its exit code, seconds and per-image numbers."""
    from verifier.cli import main

    started = time.perf_counter()
    try:
        main.main(["demo", "--model", model, "--out", str(out), "--device", device, "--autocast", autocast, "--quiet",
                   *(extra or [])], standalone_mode=False, prog_name="verifier")
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 3
    seconds = time.perf_counter() - started
    return {"model": model, "device": device, "autocast": autocast, "exit_code": code, "seconds": round(seconds, 1),
            "images": read_numbers(model, out)}


def read_numbers(model: str, out: Path) -> dict:
    """Per image of the demo's subset certified in ``out``: verdict, error ratio, best similarity, replications."""
    from verifier.cli.demo import demo_images
    from verifier.reference_models import load_manifest

    images = {}
    for image in demo_images(load_manifest(model), everything=False)[0]:
        path = out / f"{image['id']}.json"
        if not path.is_file():
            continue
        certificate = json.loads(path.read_text())
        conditions = certificate["conditions"]
        probability = conditions["probability"]
        best = next(s for s in probability["per_scale"] if s["guidance_scale"] == probability["best_guidance_scale"])
        images[image["id"]] = {"verdict": certificate["verdict"], "error_ratio": conditions["existence"]["value"],
                               "similarity": conditions["similarity"]["value"],
                               "replications": f"{best['replications']}/{best['generations']}",
                               "truth": "memorized" if image["memorized"] else image["split"]}
    return images


def compare(run: dict, reference: dict) -> dict:
    """Verdicts of ``run`` that differ from ``reference``'s and the largest absolute differences of its numbers."""
    shared = sorted(set(run["images"]) & set(reference["images"]))
    differing = [name for name in shared if run["images"][name]["verdict"] != reference["images"][name]["verdict"]]
    largest = {}
    for number in NUMBERS:
        gaps = [abs(run["images"][name][number] - reference["images"][name][number]) for name in shared
                if _finite(run["images"][name][number]) and _finite(reference["images"][name][number])]
        largest[number] = max(gaps, default=None)
    return {"images_compared": len(shared), "missing": sorted(set(reference["images"]) - set(run["images"])),
            "verdicts_differing": differing, "largest_difference": largest}


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def environment() -> dict:
    from importlib.metadata import version

    return {"torch": torch.__version__, "diffusers": version("diffusers"), "python": platform.python_version(),
            "machine": platform.machine(), "torch_threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d")}


def main() -> int:
    from verifier.reference_models import WHOLE_IMAGE_MODELS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", default=list(WHOLE_IMAGE_MODELS), choices=WHOLE_IMAGE_MODELS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--autocast", nargs="+", default=["off", "bfloat16"])
    parser.add_argument("--golden", type=Path, help="compare every run with the numbers recorded in this file")
    parser.add_argument("--write-golden", type=Path, help="record the first --autocast setting's numbers here")
    parser.add_argument("--out", type=Path, help="keep the demo folders here (default: a temporary folder)")
    args = parser.parse_args()
    golden = json.loads(args.golden.read_text())["models"] if args.golden else {}
    scratch = args.out or Path(tempfile.mkdtemp(prefix="verifier-demo-numbers-"))
    print(f"device {args.device}, autocast {', '.join(args.autocast)}, torch threads {torch.get_num_threads()}, "
          f"one run per model and setting; folders in {scratch}", flush=True)
    results: dict[str, list[dict]] = {}
    for model in args.model:
        for autocast in args.autocast:
            run = run_demo(model, scratch / f"{model}-{autocast}", args.device, autocast)
            results.setdefault(model, []).append(run)
            print(f"{model} autocast={autocast}: exit {run['exit_code']} in {run['seconds']:.0f} s, "
                  f"{len(run['images'])} images", flush=True)
            against = [("autocast=" + results[model][0]["autocast"], results[model][0])] if len(results[model]) > 1 else []
            against += [("golden", golden[model])] if model in golden else []
            for label, reference in against:
                found = compare(run, reference)
                print(f"  vs {label}: {len(found['verdicts_differing'])} of {found['images_compared']} verdicts differ"
                      f"{' (' + ', '.join(found['verdicts_differing']) + ')' if found['verdicts_differing'] else ''}; "
                      "largest |difference|: " + ", ".join(
                          f"{name} {value:.2e}" if value is not None else f"{name} -"
                          for name, value in found["largest_difference"].items()), flush=True)
    if args.write_golden:
        record = {"description": "verifier demo numbers per reference model (benchmarks/demo_numbers.py), recorded "
                                 f"on {args.device} with autocast={args.autocast[0]}",
                  "environment": environment(), "models": {model: runs[0] for model, runs in results.items()}}
        args.write_golden.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.write_golden}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main())
