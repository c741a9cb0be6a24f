"""Detection benchmark on a shipped reference model: confusion table, AUCs, cost per verdict.

    python benchmarks/detection.py [--model reference-32px] [--out DIR] [--config FILE] [--runs 1]

Certifies every image of the model's manifest with verifier's defaults (or --config), then prints:

- the confusion table of verdicts against the ground truth (memorized / seen-once or few
  duplicates / never trained);
- the AUC with which each continuous score separates memorized from never-trained images:
  ``1 - error ratio`` (higher = more memorized) and the replication rate;
- denoiser evaluations per verdict (hardware independent) and wall time per image, on this machine.

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="reference-32px", choices=["reference-32px", "fixture-16px"])
    parser.add_argument("--out", type=Path, default=None, help="keep the certificates of the last run here")
    parser.add_argument("--config", default=None, help="TOML/JSON config (default: verifier's defaults)")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()

    from sklearn.metrics import roc_auc_score

    from verifier.api import certify, denoiser_evaluations
    from verifier.config import build_config
    from verifier.reference_models import load_manifest, reference_model_path

    config = build_config(args.config)
    folder = reference_model_path(args.model)
    manifest = load_manifest(args.model)
    truth = {image["id"]: ("memorized" if image["memorized"] else
                           "never trained" if image["split"] == "held_out" else "trained, not memorized")
             for image in manifest["images"]}
    listing = Path(tempfile.mkdtemp()) / "images.jsonl"
    listing.write_text("".join(json.dumps({"path": str(folder / i["file"]), "id": i["id"]}) + "\n"
                               for i in manifest["images"]))
    seconds = []
    certificates = []
    for run in range(args.runs):
        out = Path(tempfile.mkdtemp(prefix="verifier-bench-"))
        started = time.perf_counter()
        certificates = certify(folder, [listing], out, config)
        seconds.append(time.perf_counter() - started)
        if args.out is not None and run == args.runs - 1:
            shutil.rmtree(args.out, ignore_errors=True)
            shutil.copytree(out, args.out)
        shutil.rmtree(out)

    rows = ["memorized", "trained, not memorized", "never trained"]
    columns = ["memorized", "rarely_reproduced", "inconclusive", "not_memorized"]
    table = {row: {column: 0 for column in columns} for row in rows}
    for certificate in certificates:
        table[truth[certificate["image"]["id"]]][certificate["verdict"]] += 1
    print(f"model: {args.model} ({len(certificates)} images), config: {args.config or 'defaults'}, runs: {args.runs}")
    print(f"machine: {platform.machine()} {platform.processor() or ''}, torch threads {torch.get_num_threads()}, "
          f"device {certificates[0]['environment']['device']}")
    print(f"\n{'ground truth':24s}" + "".join(f"{c:>19s}" for c in columns))
    for row in rows:
        print(f"{row:24s}" + "".join(f"{table[row][c]:>19d}" for c in columns))

    scored = [c for c in certificates if truth[c["image"]["id"]] in ("memorized", "never trained")]
    labels = [truth[c["image"]["id"]] == "memorized" for c in scored]
    if len(set(labels)) == 2:
        ratio_auc = roc_auc_score(labels, [1 - c["conditions"]["existence"]["value"] for c in scored])
        rate_auc = roc_auc_score(labels, [c["conditions"]["probability"]["rate"] for c in scored])
        print(f"\nAUC memorized vs never trained ({sum(labels)} vs {len(labels) - sum(labels)}): "
              f"error ratio {ratio_auc:.3f}, replication rate {rate_auc:.3f}")
    for group in rows:
        ratios = [c["conditions"]["existence"]["value"] for c in certificates if truth[c["image"]["id"]] == group]
        if ratios:
            print(f"error ratio, {group:24s} min {min(ratios):.3f}  median {statistics.median(ratios):.3f}  "
                  f"max {max(ratios):.3f}")
    evaluations = denoiser_evaluations(config)
    print(f"\ndenoiser evaluations per verdict: {evaluations['total']} "
          f"({evaluations['inversion_forward_backward']} forward+backward for inversion, "
          f"{evaluations['error_forward']} forward for the error, {evaluations['sampling_forward']} forward for sampling)")
    per_image = [s / len(certificates) for s in seconds]
    spread = f" (min {min(per_image):.2f}, max {max(per_image):.2f} over {args.runs} runs)" if args.runs > 1 else ""
    print(f"wall time per image: {statistics.median(per_image):.2f} s{spread}, batch size {config.batch_size}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
