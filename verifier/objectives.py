"""Training objectives: how a model was taught to denoise, written once.

The loss inversion minimizes and the error certificates report are the same quantity: the model's
own training loss, ``|| prediction - target ||^2`` at noise level ``t``. An objective says how to
noise a clean latent, what a perfect denoiser outputs, which timesteps training drew and the fixed
grid the error is measured on.

- :class:`DDPMObjective`: the discrete-time DDPM objective of Stable Diffusion 1.x/2.x and SDXL,
  ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``, with the target named by the scheduler's
  ``prediction_type`` (``epsilon``, ``v_prediction`` or ``sample``), ``t`` uniform over the
  training timesteps.

Flow-matching families add their objective here behind the same four methods.
"""

from __future__ import annotations

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class ObjectiveError(ValueError):
    """The model's scheduler names an objective verifier does not implement."""


class DDPMObjective:
    """The DDPM objective of a model whose scheduler has ``alphas_cumprod`` and a ``prediction_type``."""

    name = "ddpm"

    def __init__(self, scheduler, device: torch.device):
        prediction_type = scheduler.config.prediction_type
        if prediction_type not in PREDICTION_TYPES:
            raise ObjectiveError(f"scheduler prediction_type {prediction_type!r} is not supported; expected one of "
                                 f"{', '.join(PREDICTION_TYPES)}")
        self.prediction_type = prediction_type
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.alphas_cumprod = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)

    def _abar(self, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.alphas_cumprod[timesteps].view(-1, *([1] * (like.dim() - 1)))

    def noisy(self, z0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``sqrt(abar_t) z0 + sqrt(1 - abar_t) noise`` (the forward process the model was trained on)."""
        a = self._abar(timesteps, z0)
        return a.sqrt() * z0 + (1 - a).sqrt() * noise

    def target(self, z0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What a perfect denoiser outputs: the noise, the velocity or ``z0``."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            a = self._abar(timesteps, z0)
            return a.sqrt() * noise - (1 - a).sqrt() * z0
        return z0

    def sample_timesteps(self, generator: torch.Generator, count: int) -> torch.Tensor:
        """``count`` training timesteps drawn as training drew them (uniformly), from ``generator``."""
        return torch.randint(0, self.num_train_timesteps, (count,), generator=generator)

    def grid(self, count: int) -> list[int]:
        """``count`` timesteps at the centres of equal slices of the training schedule."""
        return [int((k + 0.5) * self.num_train_timesteps / count) for k in range(count)]

    def describe(self) -> dict:
        return {"name": self.name, "prediction_type": self.prediction_type,
                "num_train_timesteps": self.num_train_timesteps, "training_timesteps": "uniform"}
