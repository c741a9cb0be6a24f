"""Stage 2: images to the latents the denoiser works on."""

from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def encode_images(pipeline, images: list[np.ndarray], device: torch.device) -> torch.Tensor:
    """VAE posterior mean x scaling factor (the deterministic latent); float32 (B, C, h, w).

    ``images`` are float RGB HWC in [0, 1] at the model's resolution.
    """
    vae = pipeline.vae
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(device=device, dtype=vae.dtype)
    posterior = vae.encode(pixels * 2.0 - 1.0).latent_dist
    return (posterior.mean * vae.config.scaling_factor).float()
