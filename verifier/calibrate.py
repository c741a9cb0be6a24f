"""Entry point: thresholds measured on the model itself (``verifier calibrate``).

Certifies non-members with the run's config (``verifier.api.certify``) and derives thresholds from their
measurements by the order-statistic rule of ``verifier.calibration``, which certify, ``verify`` and the report
read the thresholds back with.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from verifier.api import certify
from verifier.calibration import (CALIBRATION_SCHEMA, CalibrationError, calibration_config_values, check_enough,
                                  derive_thresholds, non_members_needed)
from verifier.certificate.store import atomic_write_json, prepare_output_folder
from verifier.images import collect_images
from verifier.models import ModelAdapter, load_model
from verifier.models.lora import LoraSpec
from verifier.models.textual_inversion import EmbeddingSpec


def calibrate(model, non_members: Sequence[str | Path], out: str | Path, config, *, rate: float = 0.05,
              work: str | Path | None = None, allow_pickle: bool = False, model_config: str | Path | None = None,
              loras: Sequence[LoraSpec] = (), embeddings: Sequence[EmbeddingSpec] = (), progress: Callable[[str], None] | None = None) -> dict:
    """Certify ``non_members`` with ``config``, derive thresholds and write them to ``out`` (JSON).

    The non-members' certificates go to ``work`` (default: ``<out>.certificates/``), so an
    interrupted calibration resumes and anyone can re-check each measured value.
    """
    if not (0 < rate < 1) or not math.isfinite(rate):
        raise CalibrationError(f"--false-alarm-rate {rate!r} is not allowed: expected a number in (0, 1)")
    out = Path(out)
    work = Path(work) if work is not None else out.with_name(out.name + ".certificates")
    config = dataclasses.replace(config, calibration=None)
    check_enough(len(collect_images(list(non_members), exclude=work)), rate, config.confidence)
    check_writable(out)
    prepare_output_folder(work)
    loaded = model if isinstance(model, ModelAdapter) else load_model(
        model, device=config.device, dtype=config.dtype, allow_pickle=allow_pickle, model_config=model_config,
        loras=loras, embeddings=embeddings)
    certificates = certify(loaded, non_members, work, config, progress=progress)
    n = len(certificates)
    rows = []
    for certificate in certificates:
        ratio = certificate["prediction_error"]["ratio"]
        scores = [v for s in certificate["conditions"]["probability"]["per_scale"] for v in s["scores"]]
        if ratio is None or None in scores:
            raise CalibrationError(f"non-member {certificate['image']['id']!r} has a non-finite measurement "
                                   f"({certificate['verdict_reason']}); a calibration cannot rest on it")
        higher = certificate["conditions"]["similarity"]["direction"] == "higher is more similar"
        rows.append({"id": certificate["image"]["id"], "sha256": certificate["image"]["sha256"], "error_ratio": ratio,
                     "best_similarity": max(scores) if higher else min(scores)})
    higher = certificates[0]["conditions"]["similarity"]["direction"] == "higher is more similar"
    thresholds = derive_thresholds([r["error_ratio"] for r in rows], [r["best_similarity"] for r in rows],
                                   higher_is_similar=higher, rate=rate, confidence=config.confidence)
    record = {
        "schema": CALIBRATION_SCHEMA,
        "model_fingerprint": loaded.fingerprint,
        "metric": config.similarity,
        "metric_direction": "higher is more similar" if higher else "lower is more similar",
        "metric_weights_sha256": (certificates[0]["conditions"]["similarity"]["weights"] or {}).get("sha256"),
        "config": calibration_config_values(config.fingerprint_dict()),
        "false_alarm_rate": rate,
        "confidence": config.confidence,
        "images": n,
        "non_members_needed": non_members_needed(rate, config.confidence),
        **thresholds,
        "method": "order statistics: P(Beta(k, n-k+1) > rate) <= 1 - confidence (verifier.calibration)",
        "non_members": rows,
        "certificates": str(work),
    }
    atomic_write_json(out, record)
    return record


def check_writable(out: Path) -> None:
    """The calibration file's folder can be created and written (checked before any certification)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"):
            pass
    except OSError as error:
        raise CalibrationError(f"--out {str(out)!r} cannot be written: {error.strerror or error}") from None
