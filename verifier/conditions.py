"""Stage 5: check the three conditions (similarity, existence, probability) and reach a verdict.

- **Similarity**: each generation from the witness is compared with the image by the configured
  metric; a generation at or past the threshold is a replication.
- **Existence**: the witness is a conditioning the text encoder produced, and under it the model's
  prediction error on the image falls to at most ``existence_max_error_ratio`` of its error under
  the empty prompt. The ratio is relative to the model's own behaviour, so the default holds across
  models: images a model never saw barely move (ratios near 1), memorized ones fall far.
- **Probability**: the replication rate over ``generations`` independent seeds, at the best
  guidance scale, with an exact one-sided Clopper-Pearson bound; the bound's level is
  Bonferroni-corrected for the number of guidance scales tried.

Verdicts (exactly one):

| existence | replications | probability bound >= min rate | verdict |
|---|---|---|---|
| yes | any | yes | ``memorized`` |
| yes | >= 1 | no | ``rarely_reproduced`` |
| no | 0 | - | ``not_memorized`` (with the budget and the upper bound on the replication probability) |
| yes | 0 | - | ``inconclusive``: the error fell but nothing was replicated |
| no | >= 1 | - | ``inconclusive``: generations look alike without the error falling, which simple images
  (silhouettes, gradients, flat colour) do without being memorized; similarity alone is no proof |
| any measurement NaN or infinite, or inversion diverged | | | ``inconclusive``, with what failed |
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from verifier.similarity import replicated

from verifier.certificate.schema import VERDICTS  # noqa: F401  (every verdict, most severe first)


def clopper_pearson(successes: int, trials: int, confidence: float) -> tuple[float, float]:
    """Exact one-sided bounds (lower, upper), each holding with probability ``confidence``."""
    from scipy.stats import beta

    alpha = 1.0 - confidence
    lower = 0.0 if successes == 0 else float(beta.ppf(alpha, successes, trials - successes + 1))
    upper = 1.0 if successes == trials else float(beta.ppf(1.0 - alpha, successes + 1, trials - successes))
    return lower, upper


@torch.no_grad()
def generate_from_witness(pipeline, conditioning: torch.Tensor, empty: torch.Tensor, seeds: list[int],
                          guidance_scale: float, steps: int, resolution: int) -> np.ndarray:
    """Stock ``StableDiffusionPipeline`` generations, one per seed per image; float (B, N, H, W, 3) in [0, 1].

    Exactly what a third party runs to regenerate the replication:
    ``pipe(prompt_embeds=w, negative_prompt_embeds=empty, generator=torch.Generator('cpu').manual_seed(s), ...)``.
    """
    batch = conditioning.shape[0]
    generators = [torch.Generator("cpu").manual_seed(seed) for _ in range(batch) for seed in seeds]
    dtype = pipeline.unet.dtype
    output = pipeline(
        prompt_embeds=conditioning.to(dtype), negative_prompt_embeds=empty.expand(batch, -1, -1).to(dtype),
        num_images_per_prompt=len(seeds), generator=generators, guidance_scale=guidance_scale,
        num_inference_steps=steps, height=resolution, width=resolution, output_type="np",
    )
    images = np.asarray(output.images, dtype=np.float32)
    return images.reshape(batch, len(seeds), *images.shape[1:])


@dataclass
class Decision:
    verdict: str
    reason: str
    conditions: dict


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(float(value)) else None


def _condition(value: float | None, threshold: float, passed: bool, higher_passes: bool, **details) -> dict:
    margin = None if value is None else ((value - threshold) if higher_passes else (threshold - value))
    return {"value": value, "threshold": threshold, "margin": margin, "pass": bool(passed), **details}


def decide(*, error_ratio: float, scores_by_scale: dict[float, np.ndarray], metric, threshold: float,
           max_error_ratio: float, min_rate: float, confidence: float,
           problems: tuple[str, ...] = ()) -> Decision:
    """Apply the three conditions to one image's measurements (see the module's verdict table).

    ``metric`` needs ``name``, ``higher_is_similar``, ``threshold_source`` and ``weights``.
    ``problems`` are failures found upstream (a diverged inversion); any problem, or any measurement
    that is NaN or infinite, makes the verdict ``inconclusive`` with the reason: a broken
    measurement never becomes a clean verdict.
    """
    scales = sorted(scores_by_scale)
    per_scale_confidence = 1.0 - (1.0 - confidence) / len(scales)
    problems = list(problems)
    per_scale = []
    for scale in scales:
        scores = np.asarray(scores_by_scale[scale], dtype=np.float64)
        if not np.isfinite(scores).all():
            problems.append(f"{int((~np.isfinite(scores)).sum())} similarity scores at guidance {scale:g} are not finite")
        hits = replicated(metric, scores, threshold) & np.isfinite(scores)
        k, n = int(hits.sum()), int(hits.size)
        lower, upper = clopper_pearson(k, n, per_scale_confidence)
        per_scale.append({"guidance_scale": float(scale), "replications": k, "generations": n, "rate": k / n,
                          "lower_bound": lower, "upper_bound": upper,
                          "scores": [_finite(value) for value in scores]})
    if not math.isfinite(error_ratio):
        problems.append(f"the error ratio is {error_ratio}")
    best = max(per_scale, key=lambda s: (s["replications"], -s["guidance_scale"]))
    finite_scores = [v for s in per_scale for v in s["scores"] if v is not None]
    best_score = (max(finite_scores) if metric.higher_is_similar else min(finite_scores)) if finite_scores else None
    replications = sum(s["replications"] for s in per_scale)
    ratio = _finite(error_ratio)

    similarity = _condition(best_score, threshold, replications > 0, metric.higher_is_similar,
                            metric=metric.name, threshold_source=metric.threshold_source,
                            direction="higher is more similar" if metric.higher_is_similar else "lower is more similar",
                            weights=metric.weights, replications=replications,
                            generations=sum(s["generations"] for s in per_scale))
    existence = _condition(ratio, max_error_ratio, ratio is not None and ratio <= max_error_ratio, False,
                           measure="prediction error under the witness / under the empty prompt")
    probability = _condition(best["lower_bound"], min_rate, best["lower_bound"] >= min_rate, True,
                             measure="one-sided Clopper-Pearson lower bound on the replication rate at the best "
                                     "guidance scale",
                             confidence=confidence, per_scale_confidence=per_scale_confidence,
                             best_guidance_scale=best["guidance_scale"], rate=best["rate"],
                             upper_bound=best["upper_bound"], per_scale=per_scale)
    conditions = {"similarity": similarity, "existence": existence, "probability": probability}

    if problems:
        verdict, reason = "inconclusive", (
            f"the measurement failed: {'; '.join(problems)}. Nothing can be concluded; check the config "
            "(learning rate, dtype) and the model")
    elif existence["pass"] and probability["pass"]:
        verdict, reason = "memorized", (
            f"the witness lowers the error to {error_ratio:.3f} of the empty prompt's and replicates the image in "
            f"{best['replications']}/{best['generations']} seeds (rate >= {best['lower_bound']:.3f} at "
            f"{100 * confidence:.0f}% confidence)")
    elif existence["pass"] and replications > 0:
        verdict, reason = "rarely_reproduced", (
            f"the witness replicates the image in {best['replications']}/{best['generations']} seeds: the rate's lower "
            f"bound {best['lower_bound']:.3f} is below {min_rate}")
    elif not existence["pass"] and replications == 0:
        verdict, reason = "not_memorized", (
            f"within the budget no conditioning lowered the error below {max_error_ratio} of the empty prompt's "
            f"(best {error_ratio:.3f}) and no generation replicated the image; replication probability <= "
            f"{best['upper_bound']:.3f} at {100 * confidence:.0f}% confidence")
    elif existence["pass"]:
        verdict, reason = "inconclusive", (
            f"the error fell to {error_ratio:.3f} of the empty prompt's, as for memorized images, but none of "
            f"{similarity['generations']} generations replicated the image; raise generations or check the metric")
    else:
        verdict, reason = "inconclusive", (
            f"{replications} generations pass the similarity threshold but the error only fell to {error_ratio:.3f} of "
            "the empty prompt's: simple images (silhouettes, gradients) are drawn without being memorized, so "
            "similarity alone is no proof")
    return Decision(verdict, reason, conditions)


@dataclass(frozen=True)
class RecordedMetric:
    """What ``decide`` needs to know of a metric, as a certificate records it."""

    name: str
    higher_is_similar: bool
    threshold_source: str
    weights: dict | None


def inversion_problems(loss_first_last: list[float | None]) -> tuple[str, ...]:
    """A diverged inversion (its loss became NaN or infinite) as a problem for ``decide``."""
    if any(value is None or not math.isfinite(value) for value in loss_first_last):
        return ("the inversion diverged (its loss became NaN or infinite)",)
    return ()


def redecide(certificate: dict) -> Decision:
    """The decision that follows from a certificate's own recorded numbers and its config's thresholds.

    Used to check a certificate before a resumed run reuses it, and by ``verify``.
    """
    from verifier.registry import SIMILARITY_METRICS

    config = certificate["config"]
    similarity = certificate["conditions"]["similarity"]
    metric = RecordedMetric(similarity["metric"], similarity["direction"] == "higher is more similar",
                            similarity["threshold_source"], similarity["weights"])
    threshold = config["similarity_threshold"]
    if threshold is None:
        threshold = SIMILARITY_METRICS.get(config["similarity"]).default_threshold
    scores = {s["guidance_scale"]: np.array([np.nan if v is None else v for v in s["scores"]], dtype=np.float64)
              for s in certificate["conditions"]["probability"]["per_scale"]}
    ratio = certificate["prediction_error"]["ratio"]
    return decide(error_ratio=float("nan") if ratio is None else ratio, scores_by_scale=scores, metric=metric,
                  threshold=threshold, max_error_ratio=config["existence_max_error_ratio"],
                  min_rate=config["probability_min_rate"], confidence=config["confidence"],
                  problems=inversion_problems(certificate["prediction_error"]["inversion_loss_first_last"]))
