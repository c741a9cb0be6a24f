"""Stage 4: the model's prediction error on an image, under a given conditioning.

Measured in the model's own training loss (its objective's target; or, with ``error_form = x0``, on the
clean latent the prediction implies) on a fixed grid of timesteps
with noise draws that every image shares (common random numbers): two images' errors, or one
image's errors in two runs, differ only through the images and conditionings, not through luck.
The per-timestep curve is kept for the certificate.
"""

from __future__ import annotations

import torch

from verifier.models.base import Conditioning, ModelAdapter

# Fixed so that errors are comparable across runs with different seeds, too.
COMMON_NOISE_SEED = 20240509
ERROR_ROWS_PER_CALL = 64  # the grid's rows per call where memory allows more (the numbers golden tests pin)


def denoising_error(adapter: ModelAdapter, z0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                    conditioning: Conditioning, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample mean squared error of the denoiser's prediction in its objective's error form; shape (N,).
    ``weights`` (N, 1, h, w): the latent cells the mean counts (all where None)."""
    objective = adapter.objective
    prediction = adapter.predict(objective.noisy(z0, noise, timesteps), timesteps, conditioning)
    return objective.loss(prediction, z0, noise, timesteps, weights)


def common_noise(shape: tuple[int, ...], draws: int, count: int) -> torch.Tensor:
    """(count, draws, *shape) standard normal noise, the same for every image and every run."""
    generator = torch.Generator("cpu").manual_seed(COMMON_NOISE_SEED)
    return torch.randn((count, draws, *shape), generator=generator)


@torch.no_grad()
def prediction_error(adapter: ModelAdapter, z0: torch.Tensor, conditioning: Conditioning, *, timesteps: int,
                     noise_draws: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared prediction error per image and grid timestep; shape (B, timesteps). Rows go to the
    denoiser in calls of at most the adapter's ``rows_per_call`` (``verifier.memory``), and never more than 64.
    ``weights`` (B, 1, h, w): the latent cells each image's error counts (``alignment.latent_weights``)."""
    chunk = min(ERROR_ROWS_PER_CALL, adapter.rows_per_call or ERROR_ROWS_PER_CALL)
    device = z0.device
    grid = adapter.objective.grid(timesteps)
    noise = common_noise(tuple(z0.shape[1:]), noise_draws, len(grid))
    batch = z0.shape[0]
    # Rows ordered (image, timestep, draw); evaluated in chunks so memory stays bounded.
    z_rows = z0.repeat_interleave(len(grid) * noise_draws, dim=0)
    c_rows = conditioning.repeat_interleave(len(grid) * noise_draws)
    t_rows = torch.tensor(grid, device=device).repeat_interleave(noise_draws).repeat(batch)
    n_rows = noise.flatten(0, 1).repeat(batch, *([1] * (noise.dim() - 2))).to(device)
    w_rows = None if weights is None else weights.repeat_interleave(len(grid) * noise_draws, dim=0)
    errors = torch.cat([
        denoising_error(adapter, z_rows[i : i + chunk], n_rows[i : i + chunk], t_rows[i : i + chunk],
                        c_rows[i : i + chunk], None if w_rows is None else w_rows[i : i + chunk])
        for i in range(0, z_rows.shape[0], chunk)
    ])
    return errors.view(batch, len(grid), noise_draws).mean(dim=2).cpu()
