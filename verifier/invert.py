"""Stage 3: invert images into the model's text-conditioning space.

The free variables of each image live in an *inversion space* (``verifier.spaces``, a registry
entry). Each image has its own variables and its own random stream (timesteps and noise drawn from
a generator seeded by the run's seed and the image's sha256), and the batch loss is the *sum* of
per-image losses: Adam then updates each image exactly as if it were alone in its batch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from verifier.error import denoising_error
from verifier.models.base import Conditioning, ModelAdapter


@dataclass
class Inversion:
    """What inversion found for a batch of images."""

    variables: dict[str, torch.Tensor]  # name -> (B, ...) the free variables
    conditioning: Conditioning  # the witness, float32
    loss_curve: torch.Tensor  # (B, steps) per-image training loss


def image_generator(seed: int, sha256: str, purpose: str) -> torch.Generator:
    """A CPU generator that depends only on the run's seed, the image's bytes and the purpose."""
    digest = hashlib.sha256(f"{seed}:{sha256}:{purpose}".encode()).digest()
    return torch.Generator("cpu").manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def invert(adapter: ModelAdapter, space, z0: torch.Tensor, image_hashes: list[str], *, steps: int,
           learning_rate: float, noise_draws: int, seed: int) -> Inversion:
    """Minimize each image's prediction error over its conditioning with Adam."""
    device = z0.device
    objective = adapter.objective
    generators = [image_generator(seed, sha, "inversion") for sha in image_hashes]
    variables = {name: value.to(device).requires_grad_(True) for name, value in space.initial(z0.shape[0]).items()}
    optimizer = torch.optim.Adam([{"params": [value], "lr": learning_rate * space.scales[name]}
                                  for name, value in variables.items()])
    batch = z0.shape[0]
    z_repeated = z0.repeat_interleave(noise_draws, dim=0)
    curve = torch.empty(batch, steps, device=device)  # copied to the host once, not every step
    for step in range(steps):
        timesteps = torch.cat([objective.sample_timesteps(g, noise_draws) for g in generators]).to(device)
        noise = torch.cat([torch.randn((noise_draws, *z0.shape[1:]), generator=g) for g in generators]).to(device)
        conditioning = space.conditioning(variables).repeat_interleave(noise_draws)
        errors = denoising_error(adapter, z_repeated, noise, timesteps, conditioning)
        per_image = errors.view(batch, noise_draws).mean(dim=1)
        optimizer.zero_grad(set_to_none=True)
        per_image.sum().backward()
        optimizer.step()
        curve[:, step] = per_image.detach()
    variables = {name: value.detach() for name, value in variables.items()}
    with torch.no_grad():
        conditioning = space.conditioning(variables).map(lambda tensor: tensor.float())
    return Inversion(variables, conditioning, curve.cpu())
