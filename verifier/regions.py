"""Stage 5d: a part of the image replicated although the whole image is not (issue 10, item 5).

Unintended memorization often copies a part (a logo, a watermark, a face) onto new surroundings. A
whole-image similarity misses it: the generation differs from the image everywhere but there. This
stage looks for it in the generations the witness already made, at no extra denoiser cost, and
checks what it finds against a control:

1. **windows**: a 3x3 grid of square windows, half the image's side, a quarter side apart (they
   overlap, so a part anywhere lies mostly inside one of them);
2. **window scores**: every generation's window against the image's window at the same place (SSIM
   with its documented threshold, whatever the run's whole-image metric: LPIPS and SSCD need larger
   inputs than a window); a window replicates in a generation when its score passes the threshold;
3. **the best window**: the (window, guidance scale) with the most replications among the first look's
   seeds. It is a candidate only where the whole image was not reproduced (verdict ``not_memorized`` or
   ``inconclusive``) and where it replicated often enough that the control could find it specific: at
   least the replications a one-sided Fisher exact test needs against a twin with none;
4. **the control**: the image's never-seen twin (upside down, ``verifier.control``) is inverted with
   the same schedule and sampled with the same seeds at the candidate's scale; its statistic is its own
   best window's replications, the same maximum over the same windows, so selecting the best window
   favours neither side (the image's count is also the best of its guidance scales, the twin's is at
   the candidate's scale only: the one asymmetry, which favours the image);
5. **the finding**: a part is replicated when the image's best window replicates significantly more
   often than the twin's best window (one-sided Fisher exact test at the run's confidence).

Measured on ``reference-part-32px`` (a logo stamped on thousands of different backgrounds) and on every
family's never-trained images: docs/context-and-policy.md, "Partial replication".
"""

from __future__ import annotations

import math

import numpy as np

from verifier.alignment import Cut, pixels_of
from verifier.conditions import clopper_pearson, witness_specificity

WINDOW_FRACTION = 2  # a window's side is the image's side / 2
STRIDE_FRACTION = 4  # windows start every side / 4
METHOD = ("3x3 grid of windows of half the image's side, a quarter side apart; each generation's window scored "
          "against the image's window at the same place with SSIM; the best (window, guidance scale) among the "
          "first look's seeds is checked against the never-seen twin's best window (one-sided Fisher exact test)")


def inside(covered: tuple[int, int, int, int], window: tuple[int, int, int]) -> bool:
    """Whether a window (top, left, side) lies wholly inside ``covered`` (top, left, height, width)."""
    top, left, side = window
    return (covered[0] <= top and top + side <= covered[0] + covered[2]
            and covered[1] <= left and left + side <= covered[1] + covered[3])


def windows(resolution: int) -> list[tuple[int, int, int]]:
    """(top, left, side) of each window of a ``resolution``-pixel image, row by row."""
    side = resolution // WINDOW_FRACTION
    stride = max(1, resolution // STRIDE_FRACTION)
    starts = list(range(0, resolution - side + 1, stride))
    return [(top, left, side) for top in starts for left in starts]


class WindowSSIM:
    """SSIM of each window of each generation against the image's window at the same place: (N, windows)."""

    name = "ssim"
    higher_is_similar = True

    def __init__(self, resolution: int):
        from verifier.similarity import SSIM

        self.windows = windows(resolution)
        self.threshold = SSIM.default_threshold

    def __call__(self, generations: np.ndarray, target) -> np.ndarray:
        """``target``: prepared pixels, or a ``Cut``, whose windows reaching past its covered part score NaN
        (never a replication): the owner does not hold the pixels there."""
        from skimage.metrics import structural_similarity

        scored = [inside(target.covered, window) if isinstance(target, Cut) else True for window in self.windows]
        pixels = pixels_of(target)
        # SSIM's 7-pixel window, or the largest odd one a window of a very small image holds.
        size = min(7, self.windows[0][2] - (1 - self.windows[0][2] % 2))
        return np.array([[structural_similarity(generation[top:top + side, left:left + side],
                                                pixels[top:top + side, left:left + side],
                                                channel_axis=2, data_range=1.0, win_size=size) if scoring else np.nan
                          for (top, left, side), scoring in zip(self.windows, scored)] for generation in generations],
                        dtype=np.float64)

    def replications(self, scores: np.ndarray) -> np.ndarray:
        """Replications per window among ``scores`` (N, windows); non-finite scores never replicate."""
        scores = np.asarray(scores, dtype=np.float64)
        return (np.isfinite(scores) & (np.nan_to_num(scores, nan=-np.inf) >= self.threshold)).sum(axis=0)


def fewest_specific_replications(generations: int, confidence: float) -> int | None:
    """The fewest replications of ``generations`` a one-sided Fisher exact test finds specific against a
    control with none; None when no count can be."""
    for replications in range(1, generations + 1):
        if witness_specificity(replications, 0, generations, confidence)[1]:
            return replications
    return None


def best_window(window_scores: dict[float, np.ndarray], metric: WindowSSIM, seeds: int) -> dict:
    """The (window, scale) with the most replications among each scale's first ``seeds`` seeds; ties go to the
    lower scale, then the earlier window."""
    best = None
    for scale in sorted(window_scores):
        counts = metric.replications(window_scores[scale][:seeds])
        window = int(np.argmax(counts))
        if best is None or counts[window] > best["replications"]:
            best = {"window": window, "guidance_scale": float(scale), "replications": int(counts[window]),
                    "generations": int(min(seeds, len(window_scores[scale])))}
    return best


WHOLE_IMAGE_REPRODUCED = ("memorized", "rarely_reproduced")


def is_candidate(verdict: str, best: dict, confidence: float) -> bool:
    """The control runs where the whole image was not reproduced (``not_memorized``, or ``inconclusive``: a witness
    that lowers the error without replicating the whole image may be drawing a part of it) and the best window
    could prove specific."""
    needed = fewest_specific_replications(best["generations"], confidence)
    return verdict not in WHOLE_IMAGE_REPRODUCED and needed is not None and best["replications"] >= needed


def part_record(verdict: str, window_scores: dict[float, np.ndarray], metric: WindowSSIM, seeds: int,
                confidence: float, control: dict | None) -> dict:
    """The certificate's ``part_replication``: every window score, the best window, the control and the finding.

    ``control`` is the twin's window scores at the candidate's scale (``guidance_scale``, ``scores``) or None
    where it did not run. The caller adds the twin's witness file to ``control`` once it is written.
    """
    best = best_window(window_scores, metric, seeds)
    lower, upper = clopper_pearson(best["replications"], best["generations"], confidence)
    best |= {"box": list(metric.windows[best["window"]]), "rate": best["replications"] / best["generations"],
             "lower_bound": lower, "upper_bound": upper}
    candidate = is_candidate(verdict, best, confidence)
    control_record = None
    if control is not None:
        twin_counts = metric.replications(np.asarray(control["scores"]))
        twin_best = int(np.argmax(twin_counts))
        p_value, specific = witness_specificity(best["replications"], int(twin_counts[twin_best]),
                                                best["generations"], confidence)
        control_record = {"kind": "never-seen twin (the image upside down), its best window",
                          "guidance_scale": float(control["guidance_scale"]), "window": twin_best,
                          "replications": int(twin_counts[twin_best]), "generations": int(len(control["scores"])),
                          "scores": _rows(control["scores"]), "p_value": p_value, "witness_specific": bool(specific)}
    found = bool(candidate and control_record is not None and control_record["witness_specific"])
    return {
        "method": METHOD,
        "metric": metric.name,
        "threshold": metric.threshold,
        "windows": [list(window) for window in metric.windows],
        "per_scale": [{"guidance_scale": float(scale), "scores": _rows(window_scores[scale])}
                      for scale in sorted(window_scores)],
        "seeds_compared": seeds,
        "best": best,
        "candidate": candidate,
        "control": control_record,
        "found": found,
        "statement": statement(verdict, best, candidate, control_record, found),
    }


def statement(verdict: str, best: dict, candidate: bool, control: dict | None, found: bool) -> str:
    """The finding in words."""
    top, left, side = best["box"]
    where = (f"the {side}-pixel window at (top {top}, left {left}) replicated in {best['replications']} of "
             f"{best['generations']} generations at guidance {best['guidance_scale']:g}")
    if verdict in WHOLE_IMAGE_REPRODUCED:
        return f"not checked: the whole image's verdict is {verdict}; {where}"
    if not candidate:
        return f"no part replicated: {where}, too few for the control to find it specific"
    if control is None:
        return f"not decided: {where}, but the never-seen twin control did not run"
    twin = (f"the never-seen twin's best window in {control['replications']} of {control['generations']} "
            f"(Fisher p = {control['p_value']:.3g})")
    if found:
        return f"a part is replicated although the whole image is not: {where}; {twin}"
    return f"no part replicated specifically: {where}, but {twin}"


def _rows(scores) -> list[list[float | None]]:
    return [[float(v) if math.isfinite(float(v)) else None for v in row] for row in np.asarray(scores)]
