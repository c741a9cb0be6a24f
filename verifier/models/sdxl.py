"""Stable Diffusion XL: two CLIP text encoders, pooled text embedding, ``add_time_ids``, DDPM objective.

Conditioning as ``StableDiffusionXLPipeline.encode_prompt`` builds it (diffusers 0.42):

- per-token features (``prompt_embeds``): the penultimate hidden state (``hidden_states[-2]``) of
  ``text_encoder`` (``CLIPTextModel``) and of ``text_encoder_2`` (``CLIPTextModelWithProjection``),
  concatenated along the feature axis;
- ``pooled_prompt_embeds``: ``text_encoder_2``'s projected output (``text_embeds``);
- micro-conditioning ``add_time_ids`` = original size + crop top-left + target size; verifier uses
  the pipeline's defaults at the image size, ``(H, W, 0, 0, H, W)``, and records them.

Soft tokens go into both encoders, each with its own variables (``tokens`` for ``text_encoder``,
``tokens_2`` for ``text_encoder_2``): the two embedding tables have different widths in SDXL
(768 and 1280), so a shared continuous variable would need a learned map between them.

The empty prompt is the **encoded empty string** for both the error ratio's baseline and the
negative of every generation, passed to the pipeline explicitly, so the model's
``force_zeros_for_empty_prompt`` (which would swap in zeros when no negative is given) does not
apply; it is recorded. The alternative, zeros (``empty_prompt = "zeros"``), is kept for the
measurement that chose between them (``benchmarks/sdxl_choices.py``; docs/decisions.md). The fp16 VAE is run in float32 where its config says ``force_upcast``, as
the pipeline does when decoding.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from verifier.models.base import Conditioning, vae_latents
from verifier.models.sd import StableDiffusionAdapter


class StableDiffusionXLAdapter(StableDiffusionAdapter):
    """SDXL: SD's UNet, VAE and DDPM objective, with two text encoders and added conditioning."""

    family = "sdxl"
    pipeline_class = "StableDiffusionXLPipeline"
    required_components = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "scheduler")
    load_kwargs: dict = {}
    EMPTY_PROMPTS = {"encoded": "the encoded empty string, passed explicitly as the negative",
                     "zeros": "zeros (as force_zeros_for_empty_prompt), passed explicitly as the negative"}
    empty_prompt = "encoded"

    def add_time_ids(self, height: int | None = None, width: int | None = None) -> list[int]:
        """original size + crop top-left + target size, the pipeline's defaults at the image size."""
        height = height or self.resolution
        width = width or self.resolution
        return [height, width, 0, 0, height, width]

    def conditioning_record(self) -> dict:
        return {"text_encoders": [type(self.pipeline.text_encoder).__name__,
                                  type(self.pipeline.text_encoder_2).__name__],
                "prompt_embeds": "hidden_states[-2] of text_encoder and text_encoder_2, concatenated",
                "pooled_prompt_embeds": "text_encoder_2 text_embeds",
                "add_time_ids": self.add_time_ids(),
                "empty_prompt": self.EMPTY_PROMPTS[self.empty_prompt],
                "force_zeros_for_empty_prompt": bool(self.pipeline.config.get("force_zeros_for_empty_prompt", True)),
                "upcast_attention": bool(self.pipeline.unet.config.get("upcast_attention", False))}

    @torch.no_grad()
    def encode_images(self, images: list[np.ndarray]) -> torch.Tensor:
        vae = self.pipeline.vae
        upcast = vae.dtype == torch.float16 and vae.config.get("force_upcast", False)
        with _float32(vae) if upcast else contextlib.nullcontext():
            return vae_latents(vae, images, self.device)

    def text_inputs(self) -> dict:
        return {"tokens": (self.pipeline.tokenizer, self.pipeline.text_encoder.get_input_embeddings()),
                "tokens_2": (self.pipeline.tokenizer_2, self.pipeline.text_encoder_2.get_input_embeddings())}

    def _encode_ids(self, ids: dict[str, torch.Tensor]) -> Conditioning:
        first = self.pipeline.text_encoder(ids["tokens"], output_hidden_states=True)
        second = self.pipeline.text_encoder_2(ids["tokens_2"], output_hidden_states=True)
        prompt_embeds = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
        return Conditioning(prompt_embeds=prompt_embeds, pooled_prompt_embeds=second[0])

    def empty_conditioning(self) -> Conditioning:
        encoded = super().empty_conditioning()
        return encoded.map(torch.zeros_like) if self.empty_prompt == "zeros" else encoded

    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor, conditioning: Conditioning) -> torch.Tensor:
        unet = self.pipeline.unet
        # The image size follows from the latent's, so a run at another resolution conditions on it.
        scale = int(self.pipeline.vae_scale_factor)
        size = self.add_time_ids(noisy.shape[-2] * scale, noisy.shape[-1] * scale)
        time_ids = torch.tensor([size], device=noisy.device, dtype=unet.dtype).repeat(noisy.shape[0], 1)
        added = {"text_embeds": conditioning.pooled_prompt_embeds.to(unet.dtype), "time_ids": time_ids}
        return unet(noisy.to(unet.dtype), timesteps, encoder_hidden_states=conditioning.prompt_embeds.to(unet.dtype),
                    added_cond_kwargs=added).sample.float()

    def generation_kwargs(self, height: int, width: int) -> dict:
        ids = self.add_time_ids(height, width)
        return {"original_size": tuple(ids[:2]), "crops_coords_top_left": tuple(ids[2:4]), "target_size": tuple(ids[4:])}


@contextlib.contextmanager
def _float32(module: torch.nn.Module):
    """Run ``module`` in float32 and put it back in its dtype afterwards."""
    dtype = next(module.parameters()).dtype
    module.to(torch.float32)
    try:
        yield
    finally:
        module.to(dtype)
