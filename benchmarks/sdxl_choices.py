"""The two SDXL choices issue 7 leaves to measurement, measured on the shipped SDXL reference model.

    python benchmarks/sdxl_choices.py [--model reference-xl-32px] [--never-trained 12]

1. **The empty prompt**: the encoded empty string, or zeros (what ``force_zeros_for_empty_prompt``
   makes the stock pipeline use when no negative is given). It is both the error ratio's baseline
   and the negative of every generation.
2. **Soft tokens in the two encoders**: separate variables per encoder (``token_embeddings``), or
   one set shared through the least-squares map between the encoders' tables
   (``shared_token_embeddings``).

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
    ("encoded empty prompt, separate soft tokens (default)", "encoded", "token_embeddings"),
    ("zeros empty prompt, separate soft tokens", "zeros", "token_embeddings"),
    ("encoded empty prompt, shared soft tokens", "encoded", "shared_token_embeddings"),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="reference-xl-32px")
    parser.add_argument("--never-trained", type=int, default=12)
    args = parser.parse_args()

    from dataclasses import replace

    from sklearn.metrics import roc_auc_score

    from verifier.api import certify
    from verifier.config import VerifierConfig
    from verifier.models import load_model
    from verifier.reference_models import load_manifest, reference_model_path

    folder = reference_model_path(args.model)
    manifest = load_manifest(args.model)
    memorized = [i for i in manifest["images"] if i["memorized"]]
    never = [i for i in manifest["images"] if i["split"] == "held_out"][: args.never_trained]
    images = [folder / i["file"] for i in memorized + never]
    truth = {i["id"]: "memorized" for i in memorized} | {i["id"]: "not_memorized" for i in never}
    print(f"model {args.model}: {len(memorized)} memorized, {len(never)} never-trained images; one run per variant")
    for title, empty_prompt, space in VARIANTS:
        adapter = load_model(folder, device="cpu")
        adapter.empty_prompt = empty_prompt
        started = time.perf_counter()
        certificates = certify(adapter, images, Path(tempfile.mkdtemp()), replace(VerifierConfig(device="cpu"),
                                                                                   inversion_space=space))
        seconds = time.perf_counter() - started
        agree = sum(c["verdict"] == truth[c["image"]["id"]] for c in certificates)
        labels = [truth[c["image"]["id"]] == "memorized" for c in certificates]
        ratios = [c["prediction_error"]["ratio"] for c in certificates]
        rates = [c["conditions"]["probability"]["rate"] for c in certificates]
        print(f"\n{title}\n  verdicts agreeing with the ground truth: {agree}/{len(certificates)} "
              f"({', '.join(sorted(c['image']['id'] + '=' + c['verdict'] for c in certificates if c['verdict'] != truth[c['image']['id']])) or 'all'})")
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
