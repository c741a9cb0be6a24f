"""Thresholds that know the model: measured on images known not to be in its training set.

``calibrate`` certifies a set of non-members with the run's config, collects the two quantities
verdicts rest on (each image's error ratio and its best similarity over every generation), and
derives thresholds with a distribution-free guarantee from order statistics:

for ``n`` non-members and the ``k``-th smallest error ratio ``X_(k)``, the probability that a new
non-member's ratio falls at or below ``X_(k)`` is ``F(X_(k))``, which is distributed as
``Beta(k, n - k + 1)`` whatever the model. verifier takes the largest ``k`` with
``P(Beta(k, n - k + 1) > rate) <= 1 - confidence``: then, with the stated confidence, a non-member
passes the threshold with probability at most ``rate``. The similarity threshold is the mirror
image (the ``k``-th largest best similarity). The smallest ``n`` that allows any threshold is
``ceil(log(1 - confidence) / log(1 - rate))`` (``k = 1``): 59 non-members for a 5% rate at 95%
confidence, 29 for 10%, 299 for 1%.

Since a ``memorized`` or ``rarely_reproduced`` verdict needs at least one replication, a
non-member receives either with probability at most ``rate`` (at the stated confidence) under a
calibrated similarity threshold, whatever the existence rule decides.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from pathlib import Path
from typing import Callable, Sequence

CALIBRATION_SCHEMA = {"id": "verifier.calibration", "version": 1}
# Config keys a calibration's thresholds replace, or that do not change the measured quantities.
NOT_CALIBRATED = ("similarity_threshold", "existence_max_error_ratio", "probability_min_rate",
                  "fail_on", "calibration", "device", "batch_size", "denoiser_batch", "gradient_checkpointing",
                  "lpips_weights", "sscd_weights")


class CalibrationError(ValueError):
    """A calibration that cannot be made or used; the message says why and what would fix it."""


def non_members_needed(rate: float, confidence: float) -> int:
    """The fewest non-members for which a threshold at ``rate`` with ``confidence`` exists."""
    return math.ceil(math.log(1.0 - confidence) / math.log(1.0 - rate))


def order_statistic_rank(n: int, rate: float, confidence: float) -> int | None:
    """The largest k such that the k-th order statistic bounds the false-alarm rate (see module doc)."""
    from scipy.stats import beta

    rank = None
    for k in range(1, n + 1):
        if beta.sf(rate, k, n - k + 1) <= 1.0 - confidence:
            rank = k
        else:
            break
    return rank


def _check_writable(out: Path) -> None:
    """The calibration file's folder can be created and written (checked before any certification)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"):
            pass
    except OSError as error:
        raise CalibrationError(f"--out {str(out)!r} cannot be written: {error.strerror or error}") from None


def _check_enough(n: int, rate: float, confidence: float) -> None:
    if n < non_members_needed(rate, confidence):
        raise CalibrationError(
            f"{n} non-members cannot bound a false-alarm rate of {rate:g} at {100 * confidence:g}% confidence; "
            f"at least {non_members_needed(rate, confidence)} are needed (or accept a higher --false-alarm-rate)")


def derive_thresholds(error_ratios: Sequence[float], best_similarities: Sequence[float], *, higher_is_similar: bool,
                      rate: float, confidence: float) -> dict:
    """Existence and similarity thresholds from non-member measurements (see module doc)."""
    n = len(error_ratios)
    _check_enough(n, rate, confidence)
    rank = order_statistic_rank(n, rate, confidence)
    ratios = sorted(error_ratios)
    similarities = sorted(best_similarities, reverse=higher_is_similar)
    return {"rank": rank, "error_ratio_threshold": ratios[rank - 1],
            "similarity_threshold": similarities[rank - 1]}


def calibration_config_values(config_values: dict) -> dict:
    """The config values a calibration must share with the runs that use it."""
    return {key: value for key, value in config_values.items() if key not in NOT_CALIBRATED}


def calibrate(model, non_members: Sequence[str | Path], out: str | Path, config, *, rate: float = 0.05,
              work: str | Path | None = None, allow_pickle: bool = False, model_config: str | Path | None = None,
              progress: Callable[[str], None] | None = None) -> dict:
    """Certify ``non_members`` with ``config``, derive thresholds and write them to ``out`` (JSON).

    The non-members' certificates go to ``work`` (default: ``<out>.certificates/``), so an
    interrupted calibration resumes and anyone can re-check each measured value.
    """
    import dataclasses

    from verifier.api import certify
    from verifier.certificate.store import atomic_write_json, prepare_output_folder
    from verifier.images import collect_images
    from verifier.models import ModelAdapter, load_model

    if not (0 < rate < 1) or not math.isfinite(rate):
        raise CalibrationError(f"--false-alarm-rate {rate!r} is not allowed: expected a number in (0, 1)")
    out = Path(out)
    work = Path(work) if work is not None else out.with_name(out.name + ".certificates")
    config = dataclasses.replace(config, calibration=None)
    _check_enough(len(collect_images(list(non_members), exclude=work)), rate, config.confidence)
    _check_writable(out)
    prepare_output_folder(work)
    loaded = model if isinstance(model, ModelAdapter) else load_model(
        model, device=config.device, dtype=config.dtype, allow_pickle=allow_pickle, model_config=model_config)
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


def read_calibration(path: str | Path) -> tuple[dict, str]:
    """A calibration file's record and sha256, read before any model is loaded so a bad file is named at once."""
    path = Path(path)
    try:
        data = path.read_bytes()
        record = json.loads(data.decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CalibrationError(f"--calibration {str(path)!r} cannot be read as JSON: {error}") from None
    if not isinstance(record, dict) or record.get("schema") != CALIBRATION_SCHEMA:
        raise CalibrationError(f"--calibration {str(path)!r} is not a verifier calibration file "
                               f"(expected schema {CALIBRATION_SCHEMA})")
    return record, hashlib.sha256(data).hexdigest()


def check_calibration(path: str | Path, record: dict, sha256: str, model_fingerprint: str, config,
                      metric_weights_sha256: str | None) -> dict:
    """Check a calibration was made for this model, metric and measurement config.

    Returns what certificates record about it (including its sha256).
    """
    if record["model_fingerprint"] != model_fingerprint:
        raise CalibrationError(f"--calibration {str(path)!r} was measured on another model "
                               f"({record['model_fingerprint'][:19]}...); calibrate this model with `verifier calibrate`")
    if record.get("metric_weights_sha256") != metric_weights_sha256:
        raise CalibrationError(f"--calibration {str(path)!r} was measured with other similarity weights; calibrate "
                               "again with the weights this run uses")
    wanted = calibration_config_values(config.fingerprint_dict())
    changed = sorted(key for key in set(wanted) | set(record["config"]) if wanted.get(key) != record["config"].get(key))
    if changed:
        raise CalibrationError(
            f"--calibration {str(path)!r} was measured with other settings ({', '.join(changed)}); the thresholds hold "
            "only for the config they were measured with: calibrate again with this config")
    return {"file": str(path), "sha256": sha256, "images": record["images"],
            "false_alarm_rate": record["false_alarm_rate"], "confidence": record["confidence"],
            "rank": record["rank"], "error_ratio_threshold": record["error_ratio_threshold"],
            "similarity_threshold": record["similarity_threshold"]}


def threshold_sources(calibration: dict) -> tuple[str, str]:
    """(existence source, similarity source) as certificates state them."""
    common = (f"calibration {calibration['sha256'][:12]} on {calibration['images']} non-members: a non-member passes "
              f"with probability <= {calibration['false_alarm_rate']:g} at {100 * calibration['confidence']:g}% "
              f"confidence (order statistic {calibration['rank']})")
    return common, common
