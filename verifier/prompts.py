"""Stage 5e: the owner's prompts, tested for replication with the witness's machinery (issue 10).

Each prompt an owner lists for an image (``verifier.context``) is encoded as the stock pipeline
encodes it, then:

1. its prediction error on the image is measured on the same fixed grid and common noise as the
   witness's, so its error ratio (over the empty prompt's) reads like the witness's;
2. it generates ``generations`` seeds at every guidance scale, the run's own seed sequence, through
   the same stock pipeline call as the witness (``verifier.sampling.sample``, one fixed look);
3. each generation is scored against the image; replications per scale get exact one-sided
   Clopper-Pearson bounds at the run's confidence, split over the scales (Bonferroni).

A prompt *reproduces* the image when at least one of its generations replicates it; whether it does
so with probability at least ``probability_min_rate`` is recorded beside it (``reaches_min_rate``).
"""

from __future__ import annotations

import numpy as np
import torch

from verifier.conditions import look_confidences, recorded_inputs, scale_bounds
from verifier.error import prediction_error
from verifier.models.base import Conditioning, ModelAdapter
from verifier.sampling import sample


def prompt_tests(model: ModelAdapter, z0: torch.Tensor, pixels: list[np.ndarray], empty: Conditioning,
                 empty_errors: torch.Tensor, prompts: list[list[tuple[str, str]]], metric, *, threshold: float,
                 seeds: list[int], scales: tuple[float, ...], steps: int, resolution: int, timesteps: int,
                 noise_draws: int, confidence: float, min_rate: float) -> list[list[dict]]:
    """Per image, one record per (kind, prompt) in ``prompts[image]``; images without prompts get ``[]``.

    ``empty_errors`` are the images' errors under the empty prompt on the grid, (B, timesteps).
    """
    rows = [(index, kind, text) for index, listed in enumerate(prompts) for kind, text in listed]
    if not rows:
        return [[] for _ in prompts]
    conditioning = model.prompt_conditioning([text for _, _, text in rows])
    image_rows = [index for index, _, _ in rows]
    # 1. The error ratio under each prompt (the witness's grid and common noise).
    errors = prediction_error(model, z0[image_rows], conditioning, timesteps=timesteps, noise_draws=noise_draws)
    # 2-3. One look of generations at every scale, scored against the prompt's image.
    sampled = sample(model, conditioning, empty, [pixels[index] for index in image_rows], metric, seeds=seeds,
                     looks=[len(seeds)], scales=scales, steps=steps, resolution=resolution,
                     extend=lambda index, scores, look: ())
    per_scale_confidence = look_confidences(confidence, len(scales), 1)[0]
    results: list[list[dict]] = [[] for _ in prompts]
    for row, (index, kind, text) in enumerate(rows):
        per_scale = [scale_bounds(scale, sampled.scores[row][scale], metric, threshold, per_scale_confidence)
                     for scale in scales]
        ratio = float(errors[row].mean() / empty_errors[index].mean())
        results[index].append(prompt_record(kind, text, per_scale, ratio, per_scale_confidence, min_rate))
    return results


def replayed_prompts(certificate: dict, records: list[dict]) -> list[dict]:
    """The prompt records that follow from ``records``' recorded scores (a certificate's owner prompts or
    decoded witness) under the threshold and config the certificate names; ``verify`` compares them."""
    inputs = recorded_inputs(certificate)
    config = certificate["config"]
    confidence = look_confidences(config["confidence"], len(config["guidance_scales"]), 1)[0]
    replayed = []
    for recorded in records:
        per_scale = [scale_bounds(s["guidance_scale"], np.array([np.nan if v is None else v for v in s["scores"]],
                                                                 dtype=np.float64),
                                  inputs["metric"], inputs["threshold"], confidence) for s in recorded["per_scale"]]
        replayed.append(prompt_record(recorded["kind"], recorded["prompt"], per_scale, recorded["error_ratio"],
                                      confidence, inputs["min_rate"]))
    return replayed


def prompt_record(kind: str, prompt: str, per_scale: list[dict], error_ratio: float, per_scale_confidence: float,
                  min_rate: float) -> dict:
    """What a certificate says of one prompt; ``verify`` rebuilds it from the recorded scores."""
    best = max(per_scale, key=lambda result: (result["lower_bound"], result["replications"]))
    return {
        "kind": kind, "prompt": prompt,
        "error_ratio": error_ratio if error_ratio is not None and np.isfinite(error_ratio) else None,
        "per_scale": per_scale, "confidence": per_scale_confidence,
        "replications": sum(result["replications"] for result in per_scale),
        "generations": sum(result["generations"] for result in per_scale),
        "best_guidance_scale": best["guidance_scale"], "lower_bound": best["lower_bound"],
        "reproduces": any(result["replications"] > 0 for result in per_scale),
        "reaches_min_rate": best["lower_bound"] >= min_rate,
    }
