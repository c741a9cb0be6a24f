"""Diffusion arithmetic shared by inversion and error measurement: noising, targets, the denoiser call.

Everything here is the training objective of the model under test, written once, so the loss that
inversion minimizes and the error that certificates report are the same quantity.
"""

from __future__ import annotations

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def alphas_cumprod(scheduler, device: torch.device) -> torch.Tensor:
    return scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)


def add_noise(z0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """``sqrt(abar_t) z0 + sqrt(1 - abar_t) noise`` (the forward process the model was trained on)."""
    a = abar[timesteps].view(-1, *([1] * (z0.dim() - 1)))
    return a.sqrt() * z0 + (1 - a).sqrt() * noise


def target(prediction_type: str, z0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
           abar: torch.Tensor) -> torch.Tensor:
    """What a perfect denoiser outputs under ``prediction_type``: the noise, the velocity or ``z0``."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        a = abar[timesteps].view(-1, *([1] * (z0.dim() - 1)))
        return a.sqrt() * noise - (1 - a).sqrt() * z0
    if prediction_type == "sample":
        return z0
    raise ValueError(f"scheduler prediction_type {prediction_type!r} is not supported; expected one of "
                     f"{', '.join(PREDICTION_TYPES)}")


def squared_error(unet, prediction_type: str, z0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                  conditioning: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error of the denoiser's prediction against its target; shape (N,)."""
    noisy = add_noise(z0, noise, timesteps, abar)
    prediction = unet(noisy.to(unet.dtype), timesteps, encoder_hidden_states=conditioning.to(unet.dtype)).sample
    wanted = target(prediction_type, z0, noise, timesteps, abar)
    return (prediction.float() - wanted).pow(2).flatten(1).mean(dim=1)
