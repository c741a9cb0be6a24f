"""Stage 4: the model's prediction error on an image, under a given conditioning.

Measured on a fixed grid of timesteps with noise draws that every image shares (common random
numbers): two images' errors, or one image's errors in two runs, differ only through the images
and conditionings, not through luck. The per-timestep curve is kept for the certificate.
"""

from __future__ import annotations

import torch

from verifier.diffusion import alphas_cumprod, squared_error

# Fixed so that errors are comparable across runs with different seeds, too.
COMMON_NOISE_SEED = 20240509


def timestep_grid(scheduler, count: int) -> list[int]:
    """``count`` timesteps at the centres of equal slices of the training schedule."""
    total = int(scheduler.config.num_train_timesteps)
    return [int((k + 0.5) * total / count) for k in range(count)]


def common_noise(shape: tuple[int, ...], draws: int, count: int) -> torch.Tensor:
    """(count, draws, *shape) standard normal noise, the same for every image and every run."""
    generator = torch.Generator("cpu").manual_seed(COMMON_NOISE_SEED)
    return torch.randn((count, draws, *shape), generator=generator)


@torch.no_grad()
def prediction_error(pipeline, z0: torch.Tensor, conditioning: torch.Tensor, *, timesteps: int, noise_draws: int,
                     chunk: int = 64) -> torch.Tensor:
    """Mean squared prediction error per image and grid timestep; shape (B, timesteps)."""
    device = z0.device
    abar = alphas_cumprod(pipeline.scheduler, device)
    grid = timestep_grid(pipeline.scheduler, timesteps)
    noise = common_noise(tuple(z0.shape[1:]), noise_draws, len(grid))
    batch = z0.shape[0]
    # Rows ordered (image, timestep, draw); evaluated in chunks so memory stays bounded.
    z_rows = z0.repeat_interleave(len(grid) * noise_draws, dim=0)
    c_rows = conditioning.repeat_interleave(len(grid) * noise_draws, dim=0)
    t_rows = torch.tensor(grid, device=device).repeat_interleave(noise_draws).repeat(batch)
    n_rows = noise.flatten(0, 1).repeat(batch, *([1] * (noise.dim() - 2))).to(device)
    errors = torch.cat([
        squared_error(pipeline.unet, pipeline.scheduler.config.prediction_type, z_rows[i : i + chunk],
                      n_rows[i : i + chunk], t_rows[i : i + chunk], c_rows[i : i + chunk], abar)
        for i in range(0, z_rows.shape[0], chunk)
    ])
    return errors.view(batch, len(grid), noise_draws).mean(dim=2).cpu()
