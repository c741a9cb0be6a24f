"""How much of the machine's matrix-multiply throughput each stage of a verdict reaches.

    python benchmarks/efficiency.py [--model reference-32px] [--images 8] [--device auto] [--runs 3]

In one run, on one machine:

1. **the machine's peak**: the best throughput of a square float32 matrix multiply (2 n^3 FLOPs per
   product; n = 2048 on a CPU, 8192 on a GPU), best of ``--runs``;
2. **FLOPs**, counted by ``torch.utils.flop_counter.FlopCounterMode`` (matrix multiplies,
   convolutions and attention: the work a matmul unit does), of one denoiser evaluation (forward,
   batch 1) and of each stage on the model's first ``--images`` images with the default config:
   inversion (forward and backward, text encoder included), the prediction error (witness and
   empty prompt), sampling (the stock pipeline at every guidance scale, VAE decode included). A
   stage's FLOPs are counted on a shortened run (3 inversion steps, 2 seeds per scale) and scaled
   to the full one, which is exact because every step and every seed costs the same;
3. **time** of each stage at the full default budget, best of ``--runs``;

and prints per stage: denoiser evaluations, GFLOPs, seconds, achieved GFLOP/s and the fraction of
the measured peak.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
import os
import platform
import time

import torch
from torch.utils.flop_counter import FlopCounterMode


def matmul_peak(device: torch.device, runs: int) -> tuple[float, int]:
    """Best float32 matrix-multiply throughput (FLOP/s) and the matrix size it was measured at."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)  # warm-up
    best = 0.0
    for _ in range(runs):
        repeats = 10 if device.type == "cuda" else 3
        _sync(device)
        started = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b)
        _sync(device)
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - started))
    return best, n


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def counted(function) -> int:
    """FLOPs of one call of ``function`` (its backward too, when it runs one)."""
    with FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops()


def timed(function, device: torch.device, runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        _sync(device)
        started = time.perf_counter()
        function()
        _sync(device)
        best = min(best, time.perf_counter() - started)
    return best


def main() -> int:
    from verifier.api import denoiser_evaluations
    from verifier.config import VerifierConfig
    from verifier.error import prediction_error
    from verifier.images import prepare_image
    from verifier.invert import InversionSchedule, InversionSearch, image_generator, invert
    from verifier.models import load_model
    from verifier.reference_models import REFERENCE_MODELS, load_manifest, reference_model_path
    from verifier.registry import INVERSION_SPACES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="reference-32px", choices=REFERENCE_MODELS)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if args.images < 1 or args.runs < 1:
        parser.error(f"--images {args.images} and --runs {args.runs} must both be at least 1")

    config = VerifierConfig(device=args.device)
    folder = reference_model_path(args.model)
    model = load_model(folder, device=config.device, dtype=config.dtype)
    device = model.device
    images = load_manifest(args.model)["images"][: args.images]
    resolution = model.resolution
    pixels = [prepare_image(folder / image["file"], resolution) for image in images]
    hashes = [image["sha256"] for image in images]
    z0 = model.encode_images(pixels)
    space = INVERSION_SPACES.get(config.inversion_space)(model, config.inversion_tokens)
    empty = model.empty_conditioning()
    seeds = list(range(config.generations))

    def inversion(steps: int):  # the Adam loop alone (the checks of the grid error count as prediction error)
        generators = [image_generator(config.seed, sha, "inversion") for sha in hashes]
        InversionSearch(model, space, z0, generators, config.inversion_learning_rate,
                        config.inversion_noise_draws).run(steps)

    fixed = replace(config, inversion_max_steps=config.inversion_steps)
    empty_errors = prediction_error(model, z0, empty.expand(len(images)), timesteps=config.error_timesteps,
                                    noise_draws=config.error_noise_draws).mean(1)
    witness = invert(model, space, z0, hashes, schedule=InversionSchedule.of(fixed), empty_errors=empty_errors,
                     learning_rate=config.inversion_learning_rate, noise_draws=config.inversion_noise_draws,
                     seed=config.seed).conditioning

    def error():  # the inversion's planned checks of the grid error, and the empty prompt's
        checks = len(InversionSchedule.of(config).planned_checks())
        for conditioning in [witness] * checks + [empty.expand(len(images))]:
            prediction_error(model, z0, conditioning, timesteps=config.error_timesteps,
                             noise_draws=config.error_noise_draws)

    def sampling(count: int):
        for scale in config.guidance_scales:
            model.generate(witness, empty, seeds[:count], scale, config.sampling_steps, resolution)

    peak, size = matmul_peak(device, args.runs)
    one_evaluation = counted(lambda: _one_evaluation(model, z0, empty))
    plan = denoiser_evaluations(config)
    stages = {
        "inversion": (plan["inversion_forward_backward"], "forward+backward",
                      counted(lambda: inversion(3)) * config.inversion_steps / 3,
                      timed(lambda: inversion(config.inversion_steps), device, args.runs)),
        "prediction error": (plan["error_forward"], "forward", counted(error), timed(error, device, args.runs)),
        "sampling (first look)": (plan["sampling_forward"], "forward",
                                  counted(lambda: sampling(2)) * config.generations / 2,
                                  timed(lambda: sampling(config.generations), device, args.runs)),
    }
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"model {args.model} ({model.family}, {resolution} px, {model.describe()['denoiser_parameters']:,} denoiser "
          f"parameters), {len(images)} images in one batch, device {device} ({device_name}), dtype {config.dtype}, "
          f"torch threads {torch.get_num_threads()}, best of {args.runs} runs, default config")
    print(f"measured matmul peak: {peak / 1e9:.1f} GFLOP/s (float32 {size}x{size} products)")
    print(f"one denoiser evaluation (forward, batch 1): {one_evaluation / 1e6:.1f} MFLOP")
    print(f"\n{'stage':24s} {'denoiser evals/image':>22s} {'GFLOP':>10s} {'seconds':>9s} {'GFLOP/s':>9s} "
          f"{'of peak':>8s}")
    for name, (evaluations, kind, flops, seconds) in stages.items():
        print(f"{name:24s} {evaluations:>6d} {kind:>15s} {flops / 1e9:>10.2f} {seconds:>9.2f} "
              f"{flops / seconds / 1e9:>9.1f} {flops / seconds / peak:>8.1%}")
    return 0


def _one_evaluation(model, z0: torch.Tensor, empty) -> None:
    with torch.no_grad():
        timestep = torch.tensor([500], device=z0.device)
        model.predict(model.objective.noisy(z0[:1], torch.randn_like(z0[:1]), timestep), timestep, empty)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
