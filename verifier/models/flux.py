"""Flux: CLIP-L pooled vector and T5 tokens, a packed-latent transformer, flow matching with dynamic shift.

Conditioning as ``FluxPipeline.encode_prompt`` builds it (diffusers 0.42):

- ``prompt_embeds``: T5's (``text_encoder_2``) last hidden state for the prompt padded to the
  pipeline's default ``max_sequence_length`` (512; 256 for schnell, as Black Forest Labs runs it; the
  tokenizer's ``model_max_length`` where shorter);
- ``pooled_prompt_embeds``: CLIP-L's (``text_encoder``) pooled output.

Soft tokens go into both encoders (``tokens`` after CLIP's BOS, ``tokens_2`` first in T5, which has
no BOS). The transformer works on 2x2 patches of the latent packed into tokens, with positional ids
per patch and zeros for the text tokens, exactly as the pipeline builds them; the scheduler's shift
is dynamic, from the image's token count (``FlowMatchObjective``).

Guidance: a **guidance-distilled** model (``transformer.config.guidance_embeds``, Flux-dev) takes
the guidance value as an input embedding and runs no classifier-free guidance, so its guidance
scales are values of that input (``guidance_scale``) and the negative is unused; its prediction
error is measured at the pipeline's default guidance, 3.5. A model without the embedding (Flux
schnell) gets real classifier-free guidance against the empty prompt (``true_cfg_scale``); scale 1
is its native, unguided sampling.
"""

from __future__ import annotations

import numpy as np
import torch

from verifier.models.base import Conditioning, ModelAdapter, input_table, vae_latents
from verifier.objectives import FlowMatchObjective

T5_SEQUENCE_LENGTH = 512  # FluxPipeline's default max_sequence_length (Flux-dev's)
T5_SEQUENCE_LENGTH_SCHNELL = 256  # black-forest-labs/flux's own CLI: max_length=256 for flux-schnell
ERROR_GUIDANCE = 3.5  # FluxPipeline's default guidance_scale: the distilled guidance the error is measured at


class FluxAdapter(ModelAdapter):
    family = "flux"
    pipeline_class = "FluxPipeline"
    required_components = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "transformer",
                           "scheduler")
    load_kwargs: dict = {}

    def _objective(self, error_form: str = "native", timestep_density: str = "logit_normal",
                   resolution: int | None = None):
        packed = (resolution or self.resolution) // int(self.pipeline.vae_scale_factor) // 2
        return FlowMatchObjective(self.pipeline.scheduler, self.device, image_seq_len=packed ** 2,
                                  error_form=error_form, timestep_density=timestep_density)

    @property
    def resolution(self) -> int:
        """The VAE's ``sample_size`` (1024 for Flux.1): the transformer's config names no image size."""
        return int(self.pipeline.vae.config.sample_size)

    @property
    def guidance_distilled(self) -> bool:
        return bool(self.pipeline.transformer.config.guidance_embeds)

    def denoiser(self) -> torch.nn.Module:
        return self.pipeline.transformer

    def conditioning_record(self) -> dict:
        return {"text_encoders": [type(self.pipeline.text_encoder).__name__,
                                  type(self.pipeline.text_encoder_2).__name__],
                "prompt_embeds": "text_encoder_2's last hidden state",
                "max_sequence_length": self.sequence_length("tokens_2"),
                "pooled_prompt_embeds": "text_encoder pooler_output",
                "inverted_encoders": list(self.text_inputs()),
                "empty_prompt": "the encoded empty string, passed explicitly as the negative",
                "guidance": (f"distilled guidance embedding (guidance_scale; the negative is unused); errors measured "
                             f"at guidance {ERROR_GUIDANCE}") if self.guidance_distilled else
                "classifier-free (true_cfg_scale against the negative)"}

    @torch.no_grad()
    def encode_images(self, images: list[np.ndarray]) -> torch.Tensor:
        return vae_latents(self.pipeline.vae, images, self.device)

    def text_inputs(self) -> dict:
        return {"tokens": (self.pipeline.tokenizer, input_table(self.pipeline.text_encoder)),
                "tokens_2": (self.pipeline.tokenizer_2, input_table(self.pipeline.text_encoder_2))}

    def sequence_length(self, name: str) -> int:
        """T5: 512 tokens (the pipeline's default, Flux-dev's), 256 for a model without the guidance embedding
        (Flux schnell, as Black Forest Labs' own code and its model card run it), or the tokenizer's length
        where that is shorter."""
        own = super().sequence_length(name)
        if name != "tokens_2":
            return own
        return min(T5_SEQUENCE_LENGTH if self.guidance_distilled else T5_SEQUENCE_LENGTH_SCHNELL, own)

    def _encode_ids(self, ids: dict[str, torch.Tensor]) -> Conditioning:
        pooled = self.pipeline.text_encoder(ids["tokens"], output_hidden_states=False).pooler_output
        tokens = self.pipeline.text_encoder_2(ids["tokens_2"], output_hidden_states=False)[0]
        return Conditioning(prompt_embeds=tokens, pooled_prompt_embeds=pooled.to(tokens.dtype))

    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor, conditioning: Conditioning) -> torch.Tensor:
        from diffusers import FluxPipeline

        transformer = self.pipeline.transformer
        dtype = transformer.dtype
        batch, channels, height, width = noisy.shape
        packed = FluxPipeline._pack_latents(noisy.to(dtype), batch, channels, height, width)
        image_ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, noisy.device, dtype)
        text_ids = torch.zeros(conditioning.prompt_embeds.shape[1], 3, device=noisy.device, dtype=dtype)
        guidance = torch.full((batch,), ERROR_GUIDANCE, device=noisy.device, dtype=torch.float32) \
            if self.guidance_distilled else None
        output = transformer(hidden_states=packed, timestep=timesteps.to(noisy.device, dtype) / 1000,
                             guidance=guidance, pooled_projections=conditioning.pooled_prompt_embeds.to(dtype),
                             encoder_hidden_states=conditioning.prompt_embeds.to(dtype), txt_ids=text_ids,
                             img_ids=image_ids).sample
        scale = int(self.pipeline.vae_scale_factor)
        return FluxPipeline._unpack_latents(output, height * scale, width * scale, scale).float()

    def cfg_rows(self, guidance_scale: float) -> int:
        return 1 if self.guidance_distilled else super().cfg_rows(guidance_scale)

    def guidance_kwargs(self, guidance_scale: float) -> dict:
        if self.guidance_distilled:
            return {"guidance_scale": guidance_scale}
        return {"true_cfg_scale": guidance_scale}
