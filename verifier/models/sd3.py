"""Stable Diffusion 3 / 3.5: CLIP-L, CLIP-G and T5, an MMDiT transformer, the flow-matching objective.

Conditioning as ``StableDiffusion3Pipeline.encode_prompt`` builds it (diffusers 0.42):

- ``prompt_embeds``: the penultimate hidden states (``hidden_states[-2]``) of ``text_encoder``
  (CLIP-L) and ``text_encoder_2`` (CLIP-G), concatenated along the feature axis and zero-padded to
  T5's width, followed along the sequence by T5's last hidden state for the prompt padded to the
  pipeline's default ``max_sequence_length`` (256; the T5 tokenizer's own ``model_max_length`` where
  that is shorter, as in the reference model trained here); a pipeline without ``text_encoder_3``
  uses zeros there, as diffusers does;
- ``pooled_prompt_embeds``: both CLIPs' projected outputs (``text_embeds``), concatenated.

Soft tokens go into **all three** encoders, each with its own variables (``tokens``, ``tokens_2``,
``tokens_3``; the three input tables differ in width and vocabulary). CLIP's go after BOS; T5 has no
BOS, so its soft tokens come first, followed by EOS and padding, as T5 tokenizes a prompt. No
caption is read: InvMM's SD 3.5 path inverts CLIP-L only and feeds the true caption to CLIP-G and
T5, which needs the training captions; verifier needs none.

The empty prompt is the encoded empty string (the pipeline's own negative). Latents are
``(z - shift_factor) * scaling_factor``. The error is measured in the flow-matching objective
(``verifier.objectives.FlowMatchObjective``) with the scheduler's shift.
"""

from __future__ import annotations

import numpy as np
import torch

from verifier.models.base import Conditioning, ModelAdapter, input_table, vae_latents
from verifier.objectives import FlowMatchObjective

T5_SEQUENCE_LENGTH = 256  # StableDiffusion3Pipeline's default max_sequence_length


class StableDiffusion3Adapter(ModelAdapter):
    family = "sd3"
    pipeline_class = "StableDiffusion3Pipeline"
    required_components = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "transformer",
                           "scheduler")
    load_kwargs: dict = {}
    optional_components = ("text_encoder_3", "tokenizer_3")  # SD3 runs without T5 (zeros in its place)

    def _objective(self, error_form: str = "native", timestep_density: str = "logit_normal",
                   resolution: int | None = None):
        patch = int(self.pipeline.transformer.config.patch_size)
        latent = (resolution or self.resolution) // int(self.pipeline.vae_scale_factor)
        return FlowMatchObjective(self.pipeline.scheduler, self.device, image_seq_len=(latent // patch) ** 2,
                                  error_form=error_form, timestep_density=timestep_density)

    @property
    def resolution(self) -> int:
        return int(self.pipeline.transformer.config.sample_size) * int(self.pipeline.vae_scale_factor)

    def denoiser(self) -> torch.nn.Module:
        return self.pipeline.transformer

    def _t5(self):
        return getattr(self.pipeline, "text_encoder_3", None)

    def conditioning_record(self) -> dict:
        encoders = [type(self.pipeline.text_encoder).__name__, type(self.pipeline.text_encoder_2).__name__]
        t5 = self._t5()
        return {"text_encoders": encoders + ([type(t5).__name__] if t5 is not None else []),
                "prompt_embeds": "hidden_states[-2] of text_encoder and text_encoder_2, concatenated and zero-padded "
                                 "to T5's width, then text_encoder_3's last hidden state" +
                                 ("" if t5 is not None else " (zeros: the pipeline has no text_encoder_3)"),
                "max_sequence_length": self.sequence_length("tokens_3") if t5 is not None else T5_SEQUENCE_LENGTH,
                "pooled_prompt_embeds": "text_embeds of text_encoder and text_encoder_2, concatenated",
                "inverted_encoders": list(self.text_inputs()),
                "empty_prompt": "the encoded empty string, passed explicitly as the negative",
                "guidance": "classifier-free (guidance_scale against the negative)"}

    @torch.no_grad()
    def encode_images(self, images: list[np.ndarray]) -> torch.Tensor:
        return vae_latents(self.pipeline.vae, images, self.device)

    def text_inputs(self) -> dict:
        inputs = {"tokens": (self.pipeline.tokenizer, input_table(self.pipeline.text_encoder)),
                  "tokens_2": (self.pipeline.tokenizer_2, input_table(self.pipeline.text_encoder_2))}
        if self._t5() is not None:
            inputs["tokens_3"] = (self.pipeline.tokenizer_3, input_table(self._t5()))
        return inputs

    def sequence_length(self, name: str) -> int:
        """T5: the pipeline's default ``max_sequence_length``, or the tokenizer's length where that is shorter."""
        own = super().sequence_length(name)
        return min(T5_SEQUENCE_LENGTH, own) if name == "tokens_3" else own

    def _encode_ids(self, ids: dict[str, torch.Tensor]) -> Conditioning:
        first = self.pipeline.text_encoder(ids["tokens"], output_hidden_states=True)
        second = self.pipeline.text_encoder_2(ids["tokens_2"], output_hidden_states=True)
        clip = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
        if self._t5() is not None:
            t5 = self._t5()(ids["tokens_3"])[0]
        else:
            t5 = torch.zeros(clip.shape[0], T5_SEQUENCE_LENGTH, self.pipeline.transformer.config.joint_attention_dim,
                             device=clip.device, dtype=clip.dtype)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return Conditioning(prompt_embeds=torch.cat([clip, t5.to(clip.dtype)], dim=-2),
                            pooled_prompt_embeds=torch.cat([first[0], second[0]], dim=-1))

    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor, conditioning: Conditioning) -> torch.Tensor:
        transformer = self.pipeline.transformer
        dtype = transformer.dtype
        # The pipeline passes sigma x num_train_timesteps as the timestep, as the objective's timesteps are.
        return transformer(hidden_states=noisy.to(dtype), timestep=timesteps.to(noisy.device, torch.float32),
                           encoder_hidden_states=conditioning.prompt_embeds.to(dtype),
                           pooled_projections=conditioning.pooled_prompt_embeds.to(dtype)).sample.float()
