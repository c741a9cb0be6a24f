"""Compare variants of a default on a shipped reference model: the shared body of ``sdxl_choices.py`` and
``flow_choices.py``.

Each variant certifies the model's memorized images and its first ``never_trained`` never-trained ones
with verifier's defaults but for the variant's config values (and adapter attributes), and prints:
verdicts against the ground truth, the error ratio's range per group, the AUC of ``1 - error ratio``
and of the replication rate, and the wall time. One run per variant, on this machine.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path


def compare(model: str, never_trained: int, variants: list[tuple[str, dict, dict]]) -> None:
    """``variants``: (title, config values, adapter attributes) each."""
    from dataclasses import replace

    import torch
    from sklearn.metrics import roc_auc_score

    from verifier.api import certify
    from verifier.config import VerifierConfig
    from verifier.models import load_model
    from verifier.reference_models import load_manifest, reference_model_path

    folder = reference_model_path(model)
    manifest = load_manifest(model)
    memorized = [i for i in manifest["images"] if i["memorized"]]
    never = [i for i in manifest["images"] if i["split"] == "held_out"][:never_trained]
    images = [folder / i["file"] for i in memorized + never]
    truth = {i["id"]: "memorized" for i in memorized} | {i["id"]: "not_memorized" for i in never}
    print(f"model {model}: {len(memorized)} memorized, {len(never)} never-trained images; one run per variant; "
          f"{torch.get_num_threads()} torch threads")
    for title, values, attributes in variants:
        adapter = load_model(folder, device="cpu")
        for name, value in attributes.items():
            setattr(adapter, name, value)
        started = time.perf_counter()
        certificates = certify(adapter, images, Path(tempfile.mkdtemp()), replace(VerifierConfig(device="cpu"),
                                                                                   **values))
        seconds = time.perf_counter() - started
        agree = sum(c["verdict"] == truth[c["image"]["id"]] for c in certificates)
        labels = [truth[c["image"]["id"]] == "memorized" for c in certificates]
        ratios = [c["prediction_error"]["ratio"] for c in certificates]
        rates = [c["conditions"]["probability"]["rate"] for c in certificates]
        wrong = sorted(c["image"]["id"] + "=" + c["verdict"] for c in certificates
                       if c["verdict"] != truth[c["image"]["id"]])
        print(f"\n{title}\n  verdicts agreeing with the ground truth: {agree}/{len(certificates)} "
              f"({', '.join(wrong) or 'all'})")
        for group, wanted in (("memorized", True), ("never trained", False)):
            group_ratios = [r for r, label in zip(ratios, labels) if label == wanted and r is not None]
            hits = [r for r, label in zip(rates, labels) if label == wanted]
            print(f"  error ratio, {group:14s} min {min(group_ratios):.3f} median {statistics.median(group_ratios):.3f} "
                  f"max {max(group_ratios):.3f}; replication rate median {statistics.median(hits):.3f}")
        print(f"  AUC: 1 - error ratio {roc_auc_score(labels, [1 - r for r in ratios]):.3f}, replication rate "
              f"{roc_auc_score(labels, rates):.3f}; {seconds / len(certificates):.2f} s/image")
