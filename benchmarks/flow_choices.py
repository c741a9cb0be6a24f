"""The flow-matching choices issue 8 leaves to measurement, measured on the shipped SD3-architecture model.

    python benchmarks/flow_choices.py [--model reference-sd3-32px] [--never-trained 12] [--threads N]

1. **The timestep density** the inversion draws from and the error grid follows
   (``flow_timestep_density``): ``logit_normal`` (mean 0, std 1: SD3's training density and diffusers'
   SD3 training script's default) or ``uniform`` over the scheduler's shifted table.
2. **The error form** (``error_form``): ``native`` (the model's own loss, ``|| v - (noise - x0) ||^2``) or
   ``x0`` (the clean latent the prediction implies: InvMM's form, diffusers' ``precondition_outputs``).

Each variant certifies the model's memorized images and the first ``--never-trained`` never-trained
ones with verifier's defaults otherwise, and prints: verdicts against the ground truth, the error
ratio's range per group, the AUC of ``1 - error ratio`` and of the replication rate, and the wall
time. One run per variant, on this machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

VARIANTS = (
    ("logit-normal density, native error (default)", "logit_normal", "native"),
    ("uniform density, native error", "uniform", "native"),
    ("logit-normal density, x0 error", "logit_normal", "x0"),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="reference-sd3-32px")
    parser.add_argument("--never-trained", type=int, default=12)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()

    from dataclasses import replace

    import torch
    from sklearn.metrics import roc_auc_score

    from verifier.api import certify
    from verifier.config import VerifierConfig
    from verifier.reference_models import load_manifest, reference_model_path

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = reference_model_path(args.model)
    manifest = load_manifest(args.model)
    memorized = [i for i in manifest["images"] if i["memorized"]]
    never = [i for i in manifest["images"] if i["split"] == "held_out"][: args.never_trained]
    images = [folder / i["file"] for i in memorized + never]
    truth = {i["id"]: "memorized" for i in memorized} | {i["id"]: "not_memorized" for i in never}
    print(f"model {args.model}: {len(memorized)} memorized, {len(never)} never-trained images; one run per variant; "
          f"{torch.get_num_threads()} torch threads")
    for title, density, form in VARIANTS:
        started = time.perf_counter()
        config = replace(VerifierConfig(device="cpu"), flow_timestep_density=density, error_form=form)
        certificates = certify(folder, images, Path(tempfile.mkdtemp()), config)
        seconds = time.perf_counter() - started
        agree = sum(c["verdict"] == truth[c["image"]["id"]] for c in certificates)
        labels = [truth[c["image"]["id"]] == "memorized" for c in certificates]
        ratios = [c["prediction_error"]["ratio"] for c in certificates]
        rates = [c["conditions"]["probability"]["rate"] for c in certificates]
        wrong = sorted(c["image"]["id"] + "=" + c["verdict"] for c in certificates if c["verdict"] != truth[c["image"]["id"]])
        print(f"\n{title}\n  verdicts agreeing with the ground truth: {agree}/{len(certificates)} ({', '.join(wrong) or 'all'})")
        for group, wanted in (("memorized", True), ("never trained", False)):
            values = [r for r, label in zip(ratios, labels) if label == wanted and r is not None]
            hits = [r for r, label in zip(rates, labels) if label == wanted]
            print(f"  error ratio, {group:14s} min {min(values):.3f} median {statistics.median(values):.3f} "
                  f"max {max(values):.3f}; replication rate median {statistics.median(hits):.3f}")
        print(f"  AUC: 1 - error ratio {roc_auc_score(labels, [1 - r for r in ratios]):.3f}, replication rate "
              f"{roc_auc_score(labels, rates):.3f}; {seconds / len(certificates):.2f} s/image")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
