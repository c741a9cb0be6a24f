"""The differential finding (issue 24): is an image's reproduction the fine-tune's doing, or its baseline's?

A differential run certifies each image twice with the same config, seeds and grid (``verifier.fine_tune``):
under the fine-tune (the base with its LoRA adapters) and under the baseline (by default the same base with the
adapters switched off), and it samples the fine-tune's witness under the baseline at the fine-tune's own seeds and
guidance scales (the *cross* sampling: does the baseline reproduce the image from the very conditioning that makes
the fine-tune reproduce it?). This module is the rule book's page for it: one pure function, no model, that turns
the two certificates and the cross scores into the record, so ``certify`` and ``verify`` cannot disagree.

The rule (docs/families.md, "The differential certificate"):

1. Either half ``inconclusive``: ``undetermined``.
2. Both halves reproduce the image (verdict memorized or rarely_reproduced): ``inherited``.
3. Only the baseline does: ``removed``. Neither does: ``neither``.
4. Only the fine-tune does: ``introduced`` when its replication count at its best guidance scale is higher than
   the baseline's best, at the run's confidence, by a one-sided Fisher exact test; the baseline's best is the
   higher rate of its own witness (at its best scale) and of the cross sampling (at any scale), so a baseline that
   reproduces the image from the fine-tune's conditioning is not credited with never doing so. Otherwise
   ``inherited`` when the cross sampling replicated the image at least once (the baseline does reproduce it, from
   the fine-tune's witness, not significantly less often), else ``undetermined`` (too few replications to tell
   the two models apart; more seeds would).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import fisher_exact

from verifier.conditions import recorded_inputs
from verifier.similarity import replicated
from verifier.taxonomy import REPRODUCED_VERDICTS

SCHEMA = {"name": "verifier-differential", "version": 1}
DIFFERENTIAL_CATEGORIES = ("introduced", "inherited", "removed", "neither", "undetermined")
TEST = "one-sided Fisher exact test: the fine-tune's replications at its best guidance scale against the baseline's " \
       "best (its own witness at its best scale, or the fine-tune's witness sampled under it at any scale)"
CROSS_MEASURE = "the fine-tune's witness sampled under the baseline at the fine-tune's seeds and guidance scales, " \
                "negative prompt the baseline's own empty prompt, scored as the fine-tune's generations were"


class DifferentialError(ValueError):
    """A differential run that cannot be made as asked; the message names the argument and what is allowed."""


def half_record(certificate: dict, file: str, sha256: str) -> dict:
    """What the differential record shows of one half: where its certificate is and the numbers it rests on."""
    probability = certificate["conditions"]["probability"]
    best = next(row for row in probability["per_scale"] if row["guidance_scale"] == probability["best_guidance_scale"])
    return {"certificate": file, "sha256": sha256, "model_fingerprint": certificate["model"]["fingerprint"],
            "verdict": certificate["verdict"], "error_ratio": certificate["prediction_error"]["ratio"],
            "best_guidance_scale": probability["best_guidance_scale"],
            "replications": best["replications"], "generations": best["generations"]}


def _cross_counts(fine_tune: dict, cross: dict) -> list[dict]:
    """Per guidance scale: how many cross generations replicate the image, by the fine-tune's metric and threshold."""
    inputs = recorded_inputs(fine_tune)  # the fine-tune certificate's own metric direction and threshold
    counts = []
    for row in cross["per_scale"]:
        scores = np.array([np.nan if value is None else value for value in row["scores"]], dtype=float)
        counts.append({"guidance_scale": row["guidance_scale"],
                       "replications": int(replicated(inputs["metric"], scores, inputs["threshold"]).sum()),
                       "generations": len(scores)})
    return counts


def differential_record(image: dict, fine_tune: dict, fine_tune_ref: tuple[str, str], baseline: dict,
                        baseline_ref: tuple[str, str], cross: dict, baseline_description: dict) -> dict:
    """The whole differential record of one image, from its two certificates (with their files and sha256s) and the
    measured cross scores: everything in it but ``cross`` and ``baseline_model`` follows from the certificates."""
    fine, base = half_record(fine_tune, *fine_tune_ref), half_record(baseline, *baseline_ref)
    confidence = fine_tune["config"]["confidence"]
    cross_counts = _cross_counts(fine_tune, cross)
    cross_best = max(cross_counts, key=lambda row: (row["replications"] / max(row["generations"], 1),
                                                    row["replications"]))
    own_rate = base["replications"] / max(base["generations"], 1)
    cross_rate = cross_best["replications"] / max(cross_best["generations"], 1)
    compared_with = ("cross", cross_best) if cross_rate > own_rate else ("baseline", base)
    k_base, n_base = compared_with[1]["replications"], compared_with[1]["generations"]
    k_fine, n_fine = fine["replications"], fine["generations"]
    p_value = float(fisher_exact([[k_fine, n_fine - k_fine], [k_base, n_base - k_base]], alternative="greater")[1])
    category, reason = _category(fine, base, cross_best, p_value, round(1.0 - confidence, 12), k_base, n_base)
    return {
        "schema": dict(SCHEMA),
        "image": {"id": image["id"], "sha256": image["sha256"]},
        "baseline_model": baseline_description,
        "fine_tune": fine,
        "baseline": base,
        "cross": cross | {"counts": cross_counts},
        "finding": {"category": category, "reason": reason, "test": TEST, "p_value": p_value,
                    "alpha": round(1.0 - confidence, 12), "fine_tune_count": [k_fine, n_fine],
                    "baseline_count": [k_base, n_base],
                    "baseline_count_from": "the fine-tune's witness under the baseline at guidance "
                                           f"{cross_best['guidance_scale']:g}" if compared_with[0] == "cross" else
                                           f"the baseline's own witness at guidance {base['best_guidance_scale']:g}"},
    }


def _category(fine: dict, base: dict, cross_best: dict, p_value: float, alpha: float, k_base: int,
              n_base: int) -> tuple[str, str]:
    fine_reproduces, base_reproduces = (half["verdict"] in REPRODUCED_VERDICTS for half in (fine, base))
    counts = f"{fine['replications']}/{fine['generations']} under the fine-tune vs {k_base}/{n_base} under the baseline"
    if "inconclusive" in (fine["verdict"], base["verdict"]):
        which = " and ".join(name for name, half in (("fine-tune", fine), ("baseline", base))
                             if half["verdict"] == "inconclusive")
        return "undetermined", f"the {which} certificate is inconclusive"
    if fine_reproduces and base_reproduces:
        return "inherited", f"both reproduce it ({fine['verdict']} under the fine-tune, {base['verdict']} under " \
                            f"the baseline; {counts})"
    if base_reproduces:
        return "removed", f"the baseline reproduces it ({base['verdict']}), the fine-tune does not " \
                          f"({fine['verdict']})"
    if not fine_reproduces:
        return "neither", f"neither reproduces it ({fine['verdict']} under both)" if fine["verdict"] == base[
            "verdict"] else f"neither reproduces it ({fine['verdict']} under the fine-tune, {base['verdict']} " \
                            f"under the baseline)"
    if p_value <= alpha:
        return "introduced", f"the fine-tune reproduces it ({fine['verdict']}), the baseline does not " \
                             f"({base['verdict']}); {counts}, Fisher p = {p_value:.2g} <= {alpha:g}"
    if cross_best["replications"] > 0:
        return "inherited", f"the baseline reproduces it from the fine-tune's witness, not significantly less " \
                            f"often ({counts}, Fisher p = {p_value:.2g} > {alpha:g})"
    return "undetermined", f"the fine-tune reproduces it ({fine['verdict']}) and the baseline's certificate does " \
                           f"not, but {counts} is not a significant difference (Fisher p = {p_value:.2g} > " \
                           f"{alpha:g}); more seeds would tell"


def category_counts(records: list[dict]) -> dict[str, int]:
    """How many images fell in each differential category, in the categories' order."""
    found = [record["finding"]["category"] for record in records]
    return {category: found.count(category) for category in DIFFERENTIAL_CATEGORIES}
