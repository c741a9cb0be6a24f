"""Thresholds that know the model: measured on images known not to be in its training set.

``verifier.calibrate`` certifies a set of non-members with the run's config, collects the two quantities
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
from pathlib import Path
from typing import Sequence

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


def check_enough(n: int, rate: float, confidence: float) -> None:
    if n < non_members_needed(rate, confidence):
        raise CalibrationError(
            f"{n} non-members cannot bound a false-alarm rate of {rate:g} at {100 * confidence:g}% confidence; "
            f"at least {non_members_needed(rate, confidence)} are needed (or accept a higher --false-alarm-rate)")


def derive_thresholds(error_ratios: Sequence[float], best_similarities: Sequence[float], *, higher_is_similar: bool,
                      rate: float, confidence: float) -> dict:
    """Existence and similarity thresholds from non-member measurements (see module doc)."""
    n = len(error_ratios)
    check_enough(n, rate, confidence)
    rank = order_statistic_rank(n, rate, confidence)
    ratios = sorted(error_ratios)
    similarities = sorted(best_similarities, reverse=higher_is_similar)
    return {"rank": rank, "error_ratio_threshold": ratios[rank - 1],
            "similarity_threshold": similarities[rank - 1]}


def calibration_config_values(config_values: dict) -> dict:
    """The config values a calibration must share with the runs that use it."""
    return {key: value for key, value in config_values.items() if key not in NOT_CALIBRATED}


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
