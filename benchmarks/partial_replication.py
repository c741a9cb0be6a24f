"""Partial replication measured: parts found on the part model, false alarms on every family's never-trained images.

    python benchmarks/partial_replication.py [--model NAME ...] [--out DIR] [--threads N]

Certifies, with verifier's defaults, the images of each shipped reference model that say something
about parts:

- ``reference-part-32px``: the composites (a memorized logo on a background never trained: the part is
  replicated, the whole image is not), the decoys (another picture pasted in the logo's place: nothing
  memorized there) and the held-out images;
- every other reference model: its held-out (never-trained) images, where any part found is a false alarm.

Prints, per model and kind of image, the whole-image verdicts, how many images were candidates (the
best window replicated often enough to test), how many a part was found in, the never-seen twin's cost,
and per candidate its best window's replications against the twin's. One run per model.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

KINDS = {"part_composite": "logo on a never-trained background (part memorized)",
         "part_decoy": "another picture in the logo's place (nothing memorized there)",
         "held_out": "never trained"}


def main() -> int:
    from verifier.reference_models import REFERENCE_MODELS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", default=[m for m in REFERENCE_MODELS if m != "fixture-16px"],
                        choices=REFERENCE_MODELS)
    parser.add_argument("--out", type=Path, default=None,
                        help="keep each model's certificates in DIR/<model> (a rerun resumes them; its time is then "
                             "the resumed run's)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.model:
        measure(name, Path(tempfile.mkdtemp(prefix="verifier-parts-")) if args.out is None else args.out / name)
    return 0


def measure(name: str, out: Path) -> None:
    from verifier.api import certify
    from verifier.config import VerifierConfig
    from verifier.reference_models import load_manifest, reference_model_path

    folder = reference_model_path(name)
    manifest = load_manifest(name)
    chosen = [image for image in manifest["images"] if image["split"] in KINDS]
    started = time.perf_counter()
    certificates = certify(folder, [folder / image["file"] for image in chosen], out, VerifierConfig(device="cpu"))
    seconds = time.perf_counter() - started
    by_id = {certificate["image"]["id"]: certificate for certificate in certificates}
    print(f"\n== {name}: {len(chosen)} images, defaults, one run, {seconds:.0f} s "
          f"({torch_threads()} torch threads)")
    print(f"{'kind':64s} {'images':>6s} {'whole verdicts':>34s} {'candidates':>10s} {'part found':>10s}")
    for split, label in KINDS.items():
        rows = [by_id[image["id"]] for image in chosen if image["split"] == split]
        if not rows:
            continue
        verdicts = Counter(c["verdict"] for c in rows)
        found = sum(c["part_replication"]["found"] for c in rows)
        candidates = sum(c["part_replication"]["candidate"] for c in rows)
        print(f"{label:64s} {len(rows):>6d} {', '.join(f'{v} {n}' for v, n in sorted(verdicts.items())):>34s} "
              f"{candidates:>10d} {found:>10d}")
    costs = [c["budget"]["part_control_denoiser_evaluations"]["total"] for c in certificates
             if c["budget"]["part_control_denoiser_evaluations"]]
    spent = statistics.mean(c["budget"]["denoiser_evaluations_spent"]["total"] for c in certificates)
    print(f"twin control for parts: ran on {len(costs)} of {len(certificates)} images, "
          f"{statistics.mean(costs) if costs else 0:.0f} denoiser evaluations each; the verdict itself "
          f"{spent:.0f} per image on average")
    for image in chosen:
        part = by_id[image["id"]]["part_replication"]
        truth = image.get("part_replicated")
        best = part["best"]
        twin = part["control"]
        print(f"  {image['id']:40s} best window {best['box']} {best['replications']:>2d}/{best['generations']} at "
              f"guidance {best['guidance_scale']:g}"
              + (f", twin {twin['replications']}/{twin['generations']} (p {twin['p_value']:.2g})" if twin else "")
              + f" -> {'FOUND' if part['found'] else 'none'}"
              + ("" if truth is None else f" (ground truth: part replicated from its caption: {truth})"))


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
