"""The library entry point: ``certify(model, images, out, config)``.

The recipe, top to bottom (method.md section 3):

1. load the model;
2. encode each image to its latent;
3. invert it into the text-conditioning space;
4. measure its prediction error under the witness and under the empty prompt;
5. check the three conditions on generations from the witness;
6. certify: write the certificate, the witness and the closest generation.

Images are processed in batches of ``config.batch_size``; each image has its own variables and
random streams, so its certificate does not depend on which images shared its batch.
"""

from __future__ import annotations

import platform
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from verifier.certificate import (
    SCHEMA, atomic_write_bytes, atomic_write_json, load_finished, png_bytes, report_html, run_key, summary,
    write_witness,
)
from verifier.conditions import decide, generate_from_witness
from verifier.config import VerifierConfig
from verifier.encode import encode_images
from verifier.error import prediction_error, timestep_grid
from verifier.images import PREPROCESSING, ProtectedImage, collect_images, prepare_image
from verifier.invert import empty_conditioning, invert
from verifier.model import LoadedModel, load_model
from verifier.registry import INVERSION_SPACES, SIMILARITY_METRICS


def _environment(model: LoadedModel) -> dict:
    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {
        "verifier": installed("verifier"),
        "torch": torch.__version__,
        "diffusers": installed("diffusers"),
        "transformers": installed("transformers"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(model.device),
        "device_name": torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else platform.machine(),
        "dtype": str(model.dtype).replace("torch.", ""),
        "torch_threads": torch.get_num_threads(),
    }


def denoiser_evaluations(config: VerifierConfig) -> dict:
    """Hardware-independent cost of one image's verdict, in denoiser (UNet) evaluations."""
    sampling = sum(config.generations * config.sampling_steps * (2 if g > 1 else 1) for g in config.guidance_scales)
    inversion = config.inversion_steps * config.inversion_noise_draws
    error = 2 * config.error_timesteps * config.error_noise_draws
    return {"inversion_forward_backward": inversion, "error_forward": error, "sampling_forward": sampling,
            "total": inversion + error + sampling}


def certify(model: str | Path | LoadedModel, images: Sequence[str | Path], out: str | Path,
            config: VerifierConfig | None = None, *, allow_pickle: bool = False,
            model_config: str | Path | None = None,
            progress: Callable[[str], None] | None = None) -> list[dict]:
    """Certify every image; return the certificates (also written to ``out``) in input order.

    Images already certified in ``out`` under the same model, config and image bytes are not redone.
    """
    config = config or VerifierConfig()
    out = Path(out)
    say = progress or (lambda message: None)
    started = time.time()

    # 1. Load the model (or take one already loaded) and the similarity metric.
    loaded = model if isinstance(model, LoadedModel) else load_model(
        model, device=config.device, dtype=config.dtype, allow_pickle=allow_pickle, model_config=model_config)
    metric = SIMILARITY_METRICS.get(config.similarity)(config)
    threshold = config.similarity_threshold if config.similarity_threshold is not None else metric.default_threshold
    resolution = config.resolution or loaded.resolution
    pipeline = loaded.pipeline
    protected = collect_images(list(images))
    config_values = config.fingerprint_dict()
    say(f"model {loaded.source} ({loaded.kind}, {loaded.prediction_type}, {resolution}px) on {loaded.device}; "
        f"{len(protected)} image{'s' if len(protected) != 1 else ''}")

    certificates: dict[str, dict] = {}
    image_pngs: dict[str, bytes] = {}
    todo: list[ProtectedImage] = []
    for image in protected:
        finished = load_finished(out, image.id, run_key(loaded.fingerprint, config_values, image.sha256))
        if finished is not None:
            certificates[image.id] = finished
        else:
            todo.append(image)
    if len(todo) < len(protected):
        say(f"resuming: {len(protected) - len(todo)} images already certified in {out}")

    empty = empty_conditioning(pipeline, loaded.device).float()
    space = INVERSION_SPACES.get(config.inversion_space)(pipeline, loaded.device, config.inversion_tokens)
    seeds = [config.seed * 1_000_003 + index for index in range(config.generations)]
    grid = timestep_grid(pipeline.scheduler, config.error_timesteps)
    environment = _environment(loaded)
    budget = {"inversion_space": config.inversion_space, "inversion_tokens": config.inversion_tokens,
              "inversion_steps": config.inversion_steps, "inversion_noise_draws": config.inversion_noise_draws,
              "restarts": 1, "generations_per_scale": config.generations,
              "guidance_scales": list(config.guidance_scales), "sampling_steps": config.sampling_steps,
              "denoiser_evaluations": denoiser_evaluations(config)}

    for first in range(0, len(todo), config.batch_size):
        batch = todo[first : first + config.batch_size]
        clock = {"batch_size": len(batch)}
        tick = time.time()
        # 2. Encode.
        pixels = [prepare_image(image.path, resolution) for image in batch]
        z0 = encode_images(pipeline, pixels, loaded.device)
        clock["encode_s"] = time.time() - tick
        # 3. Invert.
        tick = time.time()
        inversion = invert(pipeline, space, z0, [image.sha256 for image in batch], steps=config.inversion_steps,
                           learning_rate=config.inversion_learning_rate, noise_draws=config.inversion_noise_draws,
                           seed=config.seed)
        clock["invert_s"] = time.time() - tick
        # 4. Measure the prediction error under the witness and under the empty prompt.
        tick = time.time()
        inverted_error = prediction_error(pipeline, z0, inversion.conditioning, timesteps=config.error_timesteps,
                                          noise_draws=config.error_noise_draws)
        empty_error = prediction_error(pipeline, z0, empty.expand(len(batch), -1, -1),
                                       timesteps=config.error_timesteps, noise_draws=config.error_noise_draws)
        clock["error_s"] = time.time() - tick
        # 5. Generate from the witness and check the conditions.
        tick = time.time()
        generations = {scale: generate_from_witness(pipeline, inversion.conditioning, empty, seeds, scale,
                                                    config.sampling_steps, resolution)
                       for scale in config.guidance_scales}
        clock["generate_s"] = time.time() - tick
        # 6. Certify each image of the batch.
        for index, image in enumerate(batch):
            scores = {scale: metric(generations[scale][index], pixels[index]) for scale in config.guidance_scales}
            ratio = float(inverted_error[index].mean() / empty_error[index].mean())
            decision = decide(error_ratio=ratio, scores_by_scale=scores, metric=metric, threshold=threshold,
                              max_error_ratio=config.existence_max_error_ratio, min_rate=config.probability_min_rate,
                              confidence=config.confidence)
            best_scale, best_seed = _closest(scores, metric, seeds)
            closest = generations[best_scale][index][seeds.index(best_seed)]
            atomic_write_bytes(out / f"{image.id}.closest.png", png_bytes(closest))
            witness_file = f"{image.id}.witness.safetensors"
            witness_sha = write_witness(out / witness_file, inversion.conditioning[index], empty,
                                        inversion.variables[index],
                                        {"space": config.inversion_space, "seeds": seeds, "image_sha256": image.sha256})
            image_pngs[image.id] = png_bytes(pixels[index])
            certificate = {
                "schema": SCHEMA,
                "verdict": decision.verdict,
                "verdict_reason": decision.reason,
                "image": {"id": image.id, "path": str(image.path), "sha256": image.sha256,
                          "preprocessing": {"policy": PREPROCESSING, "resolution": resolution}},
                "model": loaded.describe(),
                "conditions": decision.conditions,
                "prediction_error": {
                    "timesteps": grid, "noise_draws": config.error_noise_draws,
                    "inverted": [float(v) for v in inverted_error[index]],
                    "empty": [float(v) for v in empty_error[index]],
                    "inverted_mean": float(inverted_error[index].mean()),
                    "empty_mean": float(empty_error[index].mean()),
                    "ratio": ratio,
                    "inversion_loss_first_last": [float(inversion.loss_curve[index, 0]),
                                                  float(inversion.loss_curve[index, -1])],
                },
                "witness": {
                    "file": witness_file, "sha256": witness_sha, "tensor": "prompt_embeds",
                    "negative_tensor": "negative_prompt_embeds (the empty prompt)",
                    "seeds": seeds, "generator": "torch.Generator('cpu').manual_seed(seed), one per image",
                    "guidance_scales": list(config.guidance_scales), "num_inference_steps": config.sampling_steps,
                    "height": resolution, "width": resolution,
                    "scheduler": {"class": type(pipeline.scheduler).__name__, "config": dict(pipeline.scheduler.config)},
                    "closest_generation": f"{image.id}.closest.png",
                    "closest_seed": best_seed, "closest_guidance_scale": best_scale,
                },
                "budget": budget,
                "config": config.to_dict(),
                "environment": environment,
                "timings": {key: (round(value / len(batch), 4) if key.endswith("_s") else value)
                            for key, value in clock.items()} | {"note": "seconds: this image's share of its batch"},
                "run_key": run_key(loaded.fingerprint, config_values, image.sha256),
            }
            atomic_write_json(out / f"{image.id}.json", certificate)
            certificates[image.id] = certificate
            say(f"{image.id}: {decision.verdict} (error ratio {ratio:.3f}, "
                f"{decision.conditions['probability']['rate']:.2f} replication rate)")

    ordered = [certificates[image.id] for image in protected]
    for image in protected:
        if image.id not in image_pngs:
            image_pngs[image.id] = png_bytes(prepare_image(image.path, resolution))
    atomic_write_json(out / "summary.json", summary(ordered, loaded.describe(), config.to_dict())
                      | {"seconds": round(time.time() - started, 2)})
    atomic_write_bytes(out / "report.html",
                       report_html(out, ordered, image_pngs, f"verifier report: {loaded.source}").encode())
    return ordered


def _closest(scores: dict[float, np.ndarray], metric, seeds: list[int]) -> tuple[float, int]:
    """(guidance scale, seed) of the generation most similar to the image."""
    best = None
    for scale, values in scores.items():
        index = int(np.argmax(values) if metric.higher_is_similar else np.argmin(values))
        value = values[index] if metric.higher_is_similar else -values[index]
        if best is None or value > best[0]:
            best = (value, scale, seeds[index])
    return best[1], best[2]
