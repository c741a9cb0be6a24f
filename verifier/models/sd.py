"""Stable Diffusion 1.x / 2.x: one CLIP text encoder, a UNet, the DDPM objective (epsilon or v).

Conditioning as ``StableDiffusionPipeline.encode_prompt`` builds it: the text encoder's last hidden
state for the tokenized prompt padded to the tokenizer's length. SD 2.x-v models run at their
native 768 px (``unet.config.sample_size`` x the VAE's scale factor) and their UNet config's
``upcast_attention`` is applied by diffusers' attention processors.
"""

from __future__ import annotations

import numpy as np
import torch

from verifier.models.base import Conditioning, ModelAdapter, vae_latents
from verifier.objectives import DDPMObjective


class StableDiffusionAdapter(ModelAdapter):
    family = "sd"
    pipeline_class = "StableDiffusionPipeline"
    required_components = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
    # verifier compares images itself; the pipeline's safety checker would black out replications.
    load_kwargs = {"safety_checker": None, "requires_safety_checker": False}

    def _objective(self, error_form: str = "native", timestep_density: str = "logit_normal",
                   resolution: int | None = None):
        return DDPMObjective(self.pipeline.scheduler, self.device, error_form=error_form)  # DDPM trains uniformly

    @property
    def resolution(self) -> int:
        return int(self.pipeline.unet.config.sample_size) * int(self.pipeline.vae_scale_factor)

    def denoiser(self) -> torch.nn.Module:
        return self.pipeline.unet

    def conditioning_record(self) -> dict:
        return {"text_encoders": [type(self.pipeline.text_encoder).__name__],
                "prompt_embeds": "text_encoder last hidden state",
                "empty_prompt": "the encoded empty string", "upcast_attention":
                    bool(self.pipeline.unet.config.get("upcast_attention", False))}

    @torch.no_grad()
    def encode_images(self, images: list[np.ndarray]) -> torch.Tensor:
        """VAE posterior mean x scaling factor (the deterministic latent)."""
        return vae_latents(self.pipeline.vae, images, self.device)

    def text_inputs(self) -> dict:
        return {"tokens": (self.pipeline.tokenizer, self.pipeline.text_encoder.get_input_embeddings())}

    def _encode_ids(self, ids: dict[str, torch.Tensor]) -> Conditioning:
        return Conditioning(prompt_embeds=self.pipeline.text_encoder(ids["tokens"])[0])

    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor, conditioning: Conditioning) -> torch.Tensor:
        unet = self.pipeline.unet
        return unet(noisy.to(unet.dtype), timesteps,
                    encoder_hidden_states=conditioning.prompt_embeds.to(unet.dtype)).sample.float()
