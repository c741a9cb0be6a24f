"""Stage 5: check the three conditions (similarity, existence, probability) and reach a verdict.

- **Similarity**: each generation from the witness is compared with the image by the configured
  metric; a generation at or past the threshold is a replication.
- **Existence**: the witness is a conditioning the text encoder produced, and it is specific to the
  image. Either the model's prediction error on the image under the witness falls to at most the
  existence threshold of its error under the empty prompt (the default ``existence_max_error_ratio``,
  or a threshold calibrated on the model's own non-members), or, where the ratio stays higher but
  the witness replicates the image, the witness replicates its image significantly more often than
  a control witness replicates the image's never-seen twin (``verifier.control``).
- **Probability**: the replication rate over independent seeds at the best guidance scale, with
  exact one-sided Clopper-Pearson bounds. Sampling is sequential (``sampling_looks``): every scale
  gets ``generations`` seeds at the first look; where that leaves the condition undecided (the
  bounds straddle the minimum rate and the existence condition holds), the best scale's seeds
  double, up to ``sampling_doublings`` times. The looks are made valid together by a union bound
  (``look_confidences``): half the error rate goes to the first look, the other half is split
  evenly over the later looks, and each look's share is divided among the guidance scales.

Verdicts (exactly one):

| existence (error ratio, or witness-specific by the control) | replications | probability bound >= min rate | verdict |
|---|---|---|---|
| yes | any | yes | ``memorized`` |
| yes | >= 1 | no | ``rarely_reproduced`` |
| no | 0 | - | ``not_memorized`` (with the budget and the upper bound on the replication probability) |
| yes | 0 | - | ``inconclusive``: the error fell but nothing was replicated |
| no | >= 1 | - | ``inconclusive``: generations look alike, but the error did not fall and the control's
  twin is replicated as often: simple images (silhouettes, gradients, flat colour) are drawn without
  being memorized; similarity alone is no proof |
| any measurement NaN or infinite, or inversion diverged | | | ``inconclusive``, with what failed |
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from verifier.calibration import threshold_sources
from verifier.registry import SIMILARITY_METRICS
from verifier.similarity import best_index, replicated

# What the existence control is (``verifier.control`` runs it): the kind its record and files name.
TWIN = "the image turned upside down (a never-seen twin), inverted with the same schedule"


def clopper_pearson(successes: int, trials: int, confidence: float) -> tuple[float, float]:
    """Exact one-sided bounds (lower, upper), each holding with probability ``confidence``."""
    from scipy.stats import beta

    alpha = 1.0 - confidence
    lower = 0.0 if successes == 0 else float(beta.ppf(alpha, successes, trials - successes + 1))
    upper = 1.0 if successes == trials else float(beta.ppf(1.0 - alpha, successes + 1, trials - successes))
    return lower, upper


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


def sampling_looks(generations: int, doublings: int) -> list[int]:
    """Seeds per guidance scale at each look: ``generations``, then doubled ``doublings`` times."""
    return [generations * 2**look for look in range(doublings + 1)]


def look_confidences(confidence: float, scales: int, looks: int) -> list[float]:
    """The one-sided confidence of each (guidance scale, look) bound, so that all hold together.

    Union bound: the error rate ``1 - confidence`` is split over every bound a run may compute. With a
    single look it is divided among the scales (Bonferroni, as a fixed-sample test); with later looks
    half goes to the first look (where most images stop) and half is shared evenly by the later ones.
    """
    alpha = 1.0 - confidence
    if looks == 1:
        return [1.0 - alpha / scales]
    later = looks - 1
    return [1.0 - alpha / (2 * scales)] + [1.0 - alpha / (2 * scales * later)] * later


def undecided(replications: int, generations: int, look_confidence: float, min_rate: float) -> bool:
    """The look cannot tell the rate from the minimum: some replications, and the bounds straddle it."""
    lower, upper = clopper_pearson(replications, generations, look_confidence)
    return replications > 0 and lower < min_rate <= upper


def witness_specificity(witness_replications: int, control_replications: int, generations: int,
                        confidence: float) -> tuple[float, bool]:
    """One-sided Fisher exact test: does the witness replicate its image more often than the control its twin?

    Returns (p-value, significant at level 1 - confidence).
    """
    from scipy.stats import fisher_exact

    table = [[witness_replications, generations - witness_replications],
             [control_replications, generations - control_replications]]
    p_value = float(fisher_exact(table, alternative="greater").pvalue)
    return p_value, p_value <= 1.0 - confidence


def needs_control(error_ratio: float, replications: int, max_error_ratio: float) -> bool:
    """The control can change the verdict only when the witness replicates but the ratio stayed high."""
    return replications > 0 and math.isfinite(error_ratio) and error_ratio > max_error_ratio


SEQUENTIAL_METHOD = ("seeds double at the best guidance scale while the bounds straddle the minimum rate, and, "
                     "where a replication bound is set and nothing replicated without the existence condition, at "
                     "every scale whose upper bound is still above it; union bound over scales and looks: half the "
                     "error rate at the first look, half shared by the later looks")
DEFAULT_EXISTENCE_SOURCE = "config existence_max_error_ratio (default 0.5: docs/decisions.md)"


def decide(*, error_ratio: float, scores_by_scale: dict[float, np.ndarray], metric, threshold: float,
           max_error_ratio: float, min_rate: float, confidence: float, looks: list[int],
           replication_bound: float | None = None, problems: tuple[str, ...] = (), control: dict | None = None,
           existence_source: str = DEFAULT_EXISTENCE_SOURCE, similarity_source: str | None = None) -> Decision:
    """Apply the three conditions to one image's measurements (see the module's verdict table).

    ``metric`` needs ``name``, ``higher_is_similar``, ``threshold_source`` and ``weights``.
    ``control`` is the never-seen twin's measurement (``guidance_scale``, ``scores``, ``error_ratio``;
    see ``verifier.control``), or None where it was not needed.
    ``looks`` are the planned seeds per scale at each look (``sampling_looks``); each scale's bounds
    hold at the confidence of the look its seed count ended at. ``replication_bound`` is the target a
    ``not_memorized`` verdict's upper bound must reach at every scale (None: no target, the bound is
    what the seeds gave).
    ``problems`` are failures found upstream (a diverged inversion); any problem, or any measurement
    that is NaN or infinite, makes the verdict ``inconclusive`` with the reason: a broken
    measurement never becomes a clean verdict.
    """
    problems = list(problems)
    per_scale = _per_scale(scores_by_scale, metric, threshold, confidence, looks, problems)
    if not math.isfinite(error_ratio):
        problems.append(f"the error ratio is {error_ratio}")
    best = _best(per_scale)
    finite_scores = [v for s in per_scale for v in s["scores"] if v is not None]
    best_score = finite_scores[best_index(metric, finite_scores)] if finite_scores else None
    replications = sum(s["replications"] for s in per_scale)
    ratio = _finite(error_ratio)
    control_record = _control_record(control, best, metric, threshold, confidence, problems)

    similarity = _condition(best_score, threshold, replications > 0, metric.higher_is_similar,
                            metric=metric.name, threshold_source=similarity_source or metric.threshold_source,
                            direction="higher is more similar" if metric.higher_is_similar else "lower is more similar",
                            weights=metric.weights, replications=replications,
                            generations=sum(s["generations"] for s in per_scale))
    by_ratio = ratio is not None and ratio <= max_error_ratio
    by_control = control_record is not None and control_record["witness_specific"]
    existence = _condition(ratio, max_error_ratio, by_ratio or by_control, False,
                           measure="prediction error under the witness / under the empty prompt",
                           threshold_source=existence_source,
                           passed_by="error ratio" if by_ratio else ("control" if by_control else None),
                           control=control_record)
    probability = _condition(best["lower_bound"], min_rate, best["lower_bound"] >= min_rate, True,
                             measure="one-sided Clopper-Pearson lower bound on the replication rate at the best "
                                     "guidance scale",
                             confidence=confidence, looks=list(looks),
                             look_confidences=look_confidences(confidence, len(per_scale), len(looks)),
                             sequential=SEQUENTIAL_METHOD,
                             best_guidance_scale=best["guidance_scale"], rate=best["rate"],
                             upper_bound=best["upper_bound"], replication_bound=replication_bound,
                             per_scale=per_scale)
    conditions = {"similarity": similarity, "existence": existence, "probability": probability}
    verdict, reason = _verdict(problems, conditions, best, replications, error_ratio, max_error_ratio, min_rate,
                               confidence)
    return Decision(verdict, reason, conditions)


def _per_scale(scores_by_scale: dict[float, np.ndarray], metric, threshold: float, confidence: float,
               looks: list[int], problems: list[str]) -> list[dict]:
    """Each scale's replications and bounds at the confidence of the look its seed count ended at."""
    confidences = look_confidences(confidence, len(scores_by_scale), len(looks))
    per_scale = []
    for scale in sorted(scores_by_scale):
        scores = np.asarray(scores_by_scale[scale], dtype=np.float64)
        if not np.isfinite(scores).all():
            problems.append(f"{int((~np.isfinite(scores)).sum())} similarity scores at guidance {scale:g} are not finite")
        n = int(scores.size)
        if n not in looks:
            problems.append(f"{n} generations at guidance {scale:g} is not one of the planned looks {looks}")
        look = looks.index(n) if n in looks else len(looks) - 1
        per_scale.append(scale_bounds(scale, scores, metric, threshold, confidences[look])
                         | {"look": look, "confidence": confidences[look]})
    return per_scale


def scale_bounds(scale: float, scores: np.ndarray, metric, threshold: float, confidence: float) -> dict:
    """One guidance scale's replications among ``scores`` (similarities in seed order; non-finite ones never
    replicate) and their one-sided Clopper-Pearson bounds at ``confidence``."""
    hits = replicated(metric, scores, threshold) & np.isfinite(scores)
    k, n = int(hits.sum()), int(hits.size)
    lower, upper = clopper_pearson(k, n, confidence)
    return {"guidance_scale": float(scale), "replications": k, "generations": n, "rate": k / n,
            "lower_bound": lower, "upper_bound": upper, "scores": [_finite(value) for value in scores]}


def _best(per_scale: list[dict]) -> dict:
    """The scale with the highest lower bound (with equal seed counts: the most replications); ties: lowest scale."""
    return max(per_scale, key=lambda s: (s["lower_bound"], s["replications"], -s["guidance_scale"]))


def scales_to_extend(scores_by_scale: dict[float, np.ndarray], look: int, *, existence_holds: bool, metric,
                     threshold: float, min_rate: float, confidence: float, looks: list[int],
                     replication_bound: float | None = None) -> tuple[float, ...]:
    """The guidance scales whose seeds should double after ``look``; none where sampling can stop.

    Sampling goes on only where more seeds can settle what the certificate claims:

    - the existence condition holds by the error ratio, the best scale is the one at this look, and
      its bounds straddle the minimum rate (``undecided``): that scale, to tell ``memorized`` from
      ``rarely_reproduced``;
    - the existence condition fails and nothing replicated, so the verdict is ``not_memorized``, a
      target ``replication_bound`` is set, and some scales' upper bounds are still above it: those
      scales, until every scale's bound reaches the target (``VerifierConfig`` checks that the last
      look can).

    Everywhere else one more look could not change the verdict or its claim.
    """
    per_scale = _per_scale(scores_by_scale, metric, threshold, confidence, looks, [])
    if existence_holds:
        best = _best(per_scale)
        if best["look"] != look or not undecided(best["replications"], best["generations"], best["confidence"],
                                                 min_rate):
            return ()
        return (best["guidance_scale"],)
    if replication_bound is None or any(s["replications"] for s in per_scale):
        return ()
    return tuple(s["guidance_scale"] for s in per_scale if s["look"] == look and s["upper_bound"] > replication_bound)



def _control_record(control: dict | None, best: dict, metric, threshold: float, confidence: float,
                    problems: list[str]) -> dict | None:
    if control is None:
        return None
    scores = np.asarray([np.nan if v is None else v for v in control["scores"]], dtype=np.float64)
    error_ratio = math.nan if control["error_ratio"] is None else float(control["error_ratio"])
    if not np.isfinite(scores).all() or not math.isfinite(error_ratio):
        problems.append("the control's measurements are not finite")
    hits = replicated(metric, scores, threshold) & np.isfinite(scores)
    p_value, specific = witness_specificity(best["replications"], int(hits.sum()), int(hits.size), confidence)
    return {"kind": TWIN, "guidance_scale": float(control["guidance_scale"]), "replications": int(hits.sum()),
            "generations": int(hits.size), "scores": [_finite(v) for v in scores], "error_ratio": _finite(error_ratio),
            "p_value": p_value, "witness_specific": bool(specific)}


def _verdict(problems, conditions, best, replications, error_ratio, max_error_ratio, min_rate, confidence):
    existence, probability = conditions["existence"], conditions["probability"]
    control = existence["control"]
    seeds = f"{best['replications']}/{best['generations']} seeds"
    if problems:
        return "inconclusive", (
            f"the measurement failed: {'; '.join(problems)}. Nothing can be concluded; check the config "
            "(learning rate, dtype) and the model")
    if existence["pass"]:
        why = (f"the witness lowers the error to {error_ratio:.3f} of the empty prompt's"
               if existence["passed_by"] == "error ratio" else
               f"the witness replicates the image in {seeds} while the never-seen twin's witness replicates its "
               f"twin in {control['replications']}/{control['generations']} (Fisher p = {control['p_value']:.3g}), "
               f"although the error only fell to {error_ratio:.3f} of the empty prompt's")
        if probability["pass"]:
            return "memorized", (f"{why}; the image is replicated in {seeds} (rate >= {best['lower_bound']:.3f} at "
                                 f"{100 * confidence:.0f}% confidence)")
        if replications > 0:
            return "rarely_reproduced", (f"{why}; the image is replicated in {seeds}: the rate's lower bound "
                                         f"{best['lower_bound']:.3f} is below {min_rate}")
        return "inconclusive", (
            f"the error fell to {error_ratio:.3f} of the empty prompt's, as for memorized images, but none of "
            f"{conditions['similarity']['generations']} generations replicated the image; raise generations or check "
            "the metric")
    if replications == 0:
        highest = max(s["upper_bound"] for s in probability["per_scale"])
        target = probability["replication_bound"]
        if target is not None and highest > target:  # the rule spends seeds until it is reached: a cut-short run
            return "inconclusive", (
                f"no generation replicated the image, but the replication probability's upper bound {highest:.3f} "
                f"did not reach the target replication_bound {target:g}: the sampling budget was cut short")
        return "not_memorized", (
            f"within the budget no conditioning lowered the error below {max_error_ratio:.3g} of the empty prompt's "
            f"(best {error_ratio:.3f}) and no generation replicated the image; replication probability <= "
            f"{highest:.3f} at every guidance scale at {100 * confidence:.0f}% confidence"
            + (f" (target {target:g})" if target is not None else ""))
    twin = (f"; the never-seen twin's witness replicates its twin as often ({control['replications']}/"
            f"{control['generations']}, Fisher p = {control['p_value']:.3g})" if control else "")
    return "inconclusive", (
        f"{replications} generations pass the similarity threshold but the error only fell to {error_ratio:.3f} of the "
        f"empty prompt's{twin}: simple images (silhouettes, gradients) are drawn without being memorized, so "
        "similarity alone is no proof")


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


@dataclass(frozen=True)
class Thresholds:
    """The similarity and existence thresholds a verdict is decided with, and where each comes from."""

    similarity: float
    existence: float
    similarity_source: str
    existence_source: str


def resolve_thresholds(config_similarity: float | None, config_existence: float, metric_default: float,
                       metric_source: str, calibration: dict | None) -> Thresholds:
    """The one rule, for certify and every reader: a calibration's thresholds, else the config's similarity
    threshold or the metric's documented default, and the config's existence threshold."""
    if calibration is not None:
        existence_source, similarity_source = threshold_sources(calibration)
        return Thresholds(calibration["similarity_threshold"], calibration["error_ratio_threshold"],
                          similarity_source, existence_source)
    if config_similarity is not None:
        return Thresholds(config_similarity, config_existence, "config similarity_threshold", DEFAULT_EXISTENCE_SOURCE)
    return Thresholds(metric_default, config_existence, metric_source, DEFAULT_EXISTENCE_SOURCE)


def recorded_inputs(certificate: dict) -> dict:
    """``decide``'s arguments as a certificate records them, with the thresholds it names (its
    calibration's, else its config's)."""
    config = certificate["config"]
    similarity = certificate["conditions"]["similarity"]
    registered = SIMILARITY_METRICS.get(config["similarity"])
    metric = RecordedMetric(similarity["metric"], similarity["direction"] == "higher is more similar",
                            registered.threshold_source, similarity["weights"])
    thresholds = resolve_thresholds(config["similarity_threshold"], config["existence_max_error_ratio"],
                                    registered.default_threshold, registered.threshold_source,
                                    certificate["calibration"])
    scores = {s["guidance_scale"]: np.array([np.nan if v is None else v for v in s["scores"]], dtype=np.float64)
              for s in certificate["conditions"]["probability"]["per_scale"]}
    ratio = certificate["prediction_error"]["ratio"]
    control = certificate["conditions"]["existence"]["control"]
    return dict(error_ratio=float("nan") if ratio is None else ratio, scores_by_scale=scores, metric=metric,
                threshold=thresholds.similarity, max_error_ratio=thresholds.existence,
                min_rate=config["probability_min_rate"],
                confidence=config["confidence"],
                looks=sampling_looks(config["generations"], config["sampling_doublings"]),
                replication_bound=config["replication_bound"],
                problems=inversion_problems(certificate["prediction_error"]["inversion_loss_first_last"]),
                control=None if control is None else {key: control[key] for key in
                                                      ("guidance_scale", "scores", "error_ratio")},
                existence_source=thresholds.existence_source, similarity_source=thresholds.similarity_source)


def redecide(certificate: dict) -> Decision:
    """The decision that follows from a certificate's own recorded numbers and the thresholds it names.

    Used to check a certificate before a resumed run reuses it, and by ``verify``.
    """
    return decide(**recorded_inputs(certificate))


def replayed_generations(certificate: dict) -> dict[float, int]:
    """Seeds per guidance scale that the sequential rule prescribes, replayed on the recorded scores.

    ``verify`` compares them with the recorded counts: sampling that went on after the rate was
    settled, or stopped while it was undecided, would bias the bounds.
    """
    inputs = recorded_inputs(certificate)
    scores, looks = inputs["scores_by_scale"], inputs["looks"]
    ratio = inputs["error_ratio"]
    counts = {scale: looks[0] for scale in scores}
    for look in range(len(looks) - 1):
        if any(len(scores[scale]) < counts[scale] for scale in scores):
            break  # fewer recorded than the rule asks for: the caller's comparison says so
        extended = scales_to_extend({scale: scores[scale][:counts[scale]] for scale in scores}, look,
                                    existence_holds=math.isfinite(ratio) and ratio <= inputs["max_error_ratio"],
                                    metric=inputs["metric"], threshold=inputs["threshold"],
                                    min_rate=inputs["min_rate"], confidence=inputs["confidence"], looks=looks,
                                    replication_bound=inputs["replication_bound"])
        if not extended:
            break
        for scale in extended:
            counts[scale] = looks[look + 1]
    return counts
