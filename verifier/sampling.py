"""Stage 5: generate from each witness with the stock pipeline and score every generation, look by look.

1. **First look**: every guidance scale gets the first ``looks[0]`` seeds.
2. **Later looks**: ``extend`` names, per image, the scales whose seeds should double (the probability
   condition is still undecided there, or a not_memorized claim has not reached its target; see
   ``conditions.scales_to_extend``); those scales get the next seeds of the sequence, up to ``looks[-1]``.

Seeds are one fixed sequence shared by every image and scale: a scale that ended at n seeds used the
first n, so a generation depends only on (witness, seed, scale), never on which look or batch made it.
Each image keeps its closest generation at full size and every generation as a small tile
(``verifier.certificate.sheet``: at most 96 pixels a side) for the report's contact sheet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from verifier.certificate.sheet import thumbnail, tile_size
from verifier.models.base import Conditioning, ModelAdapter


def seed_sequence(run_seed: int, count: int) -> list[int]:
    """The first ``count`` seeds of a run: one sequence for every image, scale and look."""
    return [run_seed * 1_000_003 + index for index in range(count)]


@dataclass
class Sampled:
    """What sampling measured for a batch of images."""

    scores: list[dict[float, np.ndarray]]  # per image, per scale: similarity of each seed's generation, in seed order
    closest: list[tuple[float, int, np.ndarray]]  # per image: (scale, seed, generation) most similar to the image
    tiles: list[dict[float, list[np.ndarray]]]  # per image, per scale: every generation as a tile, in seed order
    window_scores: list[dict[float, np.ndarray]]  # per image, per scale: (seeds, windows) scores (verifier.regions)

    def seeds_used(self, index: int) -> dict[float, int]:
        return {scale: len(values) for scale, values in self.scores[index].items()}


def sample(model: ModelAdapter, witnesses: Conditioning, empty: Conditioning, pixels: list[np.ndarray], metric, *,
           seeds: list[int], looks: list[int], scales: tuple[float, ...], steps: int, resolution: int,
           extend: Callable[[int, dict[float, np.ndarray], int], tuple[float, ...]],
           window_metric=None, window_targets: list[np.ndarray] | None = None,
           on_generated: Callable[[int], None] | None = None) -> Sampled:
    """Generate and score, look by look; ``extend(image index, its scores so far, look)`` picks the scales to extend.
    ``pixels`` holds each image's target for ``metric`` (prepared pixels, or an ``OwnerImage`` for the framing
    search's ``FramedSimilarity``). ``window_metric`` (``verifier.regions.WindowSSIM``) also scores each
    generation's windows against ``window_targets`` (default ``pixels``).
    ``on_generated(count)`` is told how many generations each call made (progress).

    The closest generation is the most similar one; ties go to the earlier look, then to the order of
    ``scales``, then to the lower seed.
    """
    count = len(pixels)
    scores: list[dict[float, np.ndarray]] = [{} for _ in range(count)]
    closest: list[tuple[float, float, int, np.ndarray] | None] = [None] * count
    tiles: list[dict[float, list[np.ndarray]]] = [{} for _ in range(count)]
    window_scores: list[dict[float, np.ndarray]] = [{} for _ in range(count)]
    tile = tile_size(resolution)
    window_targets = pixels if window_targets is None else window_targets
    sign = 1.0 if metric.higher_is_similar else -1.0

    def generate(indices: list[int], scale: float, first: int, last: int) -> None:
        images = model.generate(witnesses.select(indices), empty, seeds[first:last], scale, steps, resolution)
        if on_generated is not None:
            on_generated(len(indices) * (last - first))
        for row, index in enumerate(indices):
            values = np.asarray(metric(images[row], pixels[index]), dtype=np.float64)
            scores[index][scale] = np.concatenate([scores[index].get(scale, np.empty(0)), values])
            tiles[index].setdefault(scale, []).extend(thumbnail(image, tile) for image in images[row])
            if window_metric is not None:
                windows = window_metric(images[row], window_targets[index])
                before = window_scores[index].get(scale)
                window_scores[index][scale] = windows if before is None else np.concatenate([before, windows])
            signed = np.where(np.isfinite(values), sign * values, -np.inf)  # a non-finite score never wins
            best = int(np.argmax(signed))
            if closest[index] is None or signed[best] > closest[index][0]:
                closest[index] = (float(signed[best]), scale, seeds[first + best], images[row][best])

    # 1. First look: every scale, every image.
    for scale in scales:
        generate(list(range(count)), scale, 0, looks[0])
    # 2. Later looks: double the seeds where the condition or the claim is not settled.
    for look in range(1, len(looks)):
        wanted: dict[float, list[int]] = {}
        for index in range(count):
            for scale in extend(index, scores[index], look - 1):
                wanted.setdefault(scale, []).append(index)
        if not wanted:
            break
        for scale in scales:
            if scale in wanted:
                generate(wanted[scale], scale, looks[look - 1], looks[look])
    return Sampled(scores=scores, closest=[(scale, seed, image) for _, scale, seed, image in closest], tiles=tiles,
                   window_scores=window_scores)
