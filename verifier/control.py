"""Stage 5b: a per-image control for "similar because the model draws such images anyway".

A witness that replicates an image is evidence of memorization only if the replication is specific
to that image: a model that draws flat colour, gradients or silhouettes for any conditioning near
them would "replicate" every such image, seen or not. The control measures that per image instead
of assuming it from an error-ratio cut-off:

1. make the image's **never-seen twin**: the image turned upside down. Training pipelines flip
   images left-right at most, so the twin was not in the training set; a simple image (flat,
   gradient, box) stays the same kind of image under the flip, a memorized photograph does not;
2. invert the twin with the same schedule and seeds' purpose as the image itself;
3. generate from the twin's witness with the same seeds at the guidance scale where the image's
   witness replicated most, and count how often the twin is replicated.

``conditions.decide`` then asks whether the image's witness replicates it significantly more often
than the twin's witness replicates the twin (one-sided Fisher exact test at the run's confidence).
The control runs only where it can change a verdict: the witness replicated the image but the
error ratio stayed above the existence threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from verifier.alignment import Cut, OwnerImage, latent_weights, pixels_of
from verifier.models.base import Conditioning, ModelAdapter


def never_seen_twin(target):
    """The image flipped top to bottom: prepared pixels (float RGB HWC in [0, 1]), an ``OwnerImage`` or a ``Cut``."""
    if isinstance(target, (OwnerImage, Cut)):
        return target.upside_down()
    return np.ascontiguousarray(target[::-1])


@dataclass
class ControlRun:
    """What the control measured for one image."""

    guidance_scale: float
    scores: np.ndarray  # similarity of each seed's generation to the twin (per window for the part check)
    error_ratio: float
    witness: Conditioning  # the twin's inverted conditioning (batch 1)
    variables: dict[str, torch.Tensor]
    inversion_steps: int  # what the twin's inversion spent
    checks: int
    screen: dict | None = None  # the framing search's control: the screen that chose the twin's cut


def run_controls(model: ModelAdapter, space, metric, requests: list[tuple[np.ndarray, str, float]], *,
                 empty: Conditioning, seeds: list[int], config, resolution: int, owners: list | None = None,
                 noise_floor: float = 0.0, screened: bool = False) -> list[ControlRun]:
    """Run the control for each (pixels or ``Cut``, image sha256, guidance scale) request, batched like
    certification.

    ``metric`` scores the twin's generations against the twin: the run's whole-image metric (stage 5b), or
    ``verifier.regions.WindowSSIM`` for the part check (stage 5d), whose scores are per window. For the
    framing searches (``verifier.framing``) the twin is inverted as the image was (``noise_floor``) and ``metric``
    is a ``FramedSimilarity`` that frames each request's ``owners`` entry turned upside down; ``screened``: that
    twin is screened over the candidate framings and its best cut inverted, as the image was (``verifier.screen``)."""
    from verifier.error import prediction_error
    from verifier.invert import InversionSchedule, invert
    from verifier.screen import screen

    results: list[ControlRun] = []
    for first in range(0, len(requests), config.batch_size):
        batch = requests[first : first + config.batch_size]
        twins = [never_seen_twin(pixels) for pixels, _, _ in batch]
        targets = twins if owners is None else [never_seen_twin(owner) for owner in owners[first:first + len(batch)]]
        stream = "control" if not noise_floor else "framing-control"
        screens = [None] * len(batch)
        if screened:
            found = screen(model, space, targets, [f"{sha}:{stream}" for _, sha, _ in batch], empty=empty,
                           config=config, noise_floor=noise_floor, resolution=resolution)
            unconditional, inversion, screens = found.empty_errors, found.inversion, found.records
        else:
            z0 = model.encode_images([pixels_of(twin) for twin in twins])
            weights = latent_weights(twins, z0)  # a cut's twin: its covered part only, as the cut's error
            unconditional = prediction_error(model, z0, empty.expand(len(batch)), timesteps=config.error_timesteps,
                                             noise_draws=config.error_noise_draws, weights=weights)
            inversion = invert(model, space, z0, [f"{sha}:{stream}" for _, sha, _ in batch],
                               schedule=InversionSchedule.of(config, fixed=bool(noise_floor)),
                               empty_errors=unconditional.mean(dim=1), learning_rate=config.inversion_learning_rate,
                               noise_draws=config.inversion_noise_draws, seed=config.seed, noise_floor=noise_floor,
                               weights=weights)
        inverted = inversion.errors
        for index, (_, _, scale) in enumerate(batch):
            generations = model.generate(inversion.conditioning[index], empty, seeds, scale, config.sampling_steps,
                                         resolution)[0]
            results.append(ControlRun(
                guidance_scale=scale, scores=metric(generations, targets[index]),
                error_ratio=float(inverted[index].mean() / unconditional[index].mean()),
                witness=inversion.conditioning[index],
                variables={name: value[index] for name, value in inversion.variables.items()},
                inversion_steps=inversion.steps[index], checks=len(inversion.checks[index]), screen=screens[index]))
    return results
