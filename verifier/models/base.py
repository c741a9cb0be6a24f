"""The small interface every model family implements, and the conditioning that crosses the stages.

The stages (encode, invert, measure, generate) see a model only through :class:`ModelAdapter` and
its :class:`~verifier.objectives.Objective`; they never name a UNet, a text encoder, a tokenizer or
a VAE. One file per family (``sd.py``, ``sdxl.py``) implements the interface, as diffusers keeps one
pipeline file per family.

:class:`Conditioning` is what a text encoder produces, with fields named after the stock pipeline's
keyword arguments (``prompt_embeds``, ``pooled_prompt_embeds``): a witness is exactly what a third
party passes to the stock pipeline to regenerate a replication, for every family.
"""

from __future__ import annotations

import contextlib
import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Callable

import numpy as np
import torch

from verifier.models.distillation import distillation_record
from verifier.models.lora import adapted_fingerprint


@dataclass(frozen=True)
class Conditioning:
    """Text conditioning of a batch, one tensor per stock pipeline keyword (None where a family has none)."""

    prompt_embeds: torch.Tensor  # (B, L, d): per-token features
    pooled_prompt_embeds: torch.Tensor | None = None  # (B, p): SDXL's pooled text embedding

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "Conditioning":
        return cls(**{f.name: tensors.get(f.name) for f in fields(cls)})

    def tensors(self) -> dict[str, torch.Tensor]:
        """The present fields by keyword name (what a witness file stores)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def map(self, function: Callable[[torch.Tensor], torch.Tensor]) -> "Conditioning":
        return Conditioning.from_tensors({name: function(tensor) for name, tensor in self.tensors().items()})

    def __len__(self) -> int:
        return int(self.prompt_embeds.shape[0])

    def __getitem__(self, index: int | slice) -> "Conditioning":
        """Rows of the batch; an integer keeps the batch dimension (one image's conditioning)."""
        rows = slice(index, index + 1) if isinstance(index, int) else index
        return self.map(lambda tensor: tensor[rows])

    def select(self, rows: list[int]) -> "Conditioning":
        """The given rows of the batch, in that order."""
        return self.map(lambda tensor: tensor[rows])

    def expand(self, batch: int) -> "Conditioning":
        """A one-row conditioning repeated for ``batch`` images."""
        return self.map(lambda tensor: tensor.expand(batch, *tensor.shape[1:]))

    def repeat_interleave(self, count: int) -> "Conditioning":
        return self.map(lambda tensor: tensor.repeat_interleave(count, dim=0))

    def to(self, *args, **kwargs) -> "Conditioning":
        return self.map(lambda tensor: tensor.to(*args, **kwargs))

    def pipeline_kwargs(self, negative: "Conditioning") -> dict[str, torch.Tensor]:
        """Keyword arguments of the stock pipeline: these fields and the negative's, prefixed ``negative_``."""
        return self.tensors() | {f"negative_{name}": tensor for name, tensor in negative.tensors().items()}


def classifier_free_rows(guidance_scale: float) -> int:
    """Denoiser rows per sampling step of one image under classifier-free guidance: the conditional and the
    unconditional prediction above scale 1 (diffusers skips the second at 1). A family that guides otherwise
    (Flux-dev's guidance embedding: one row) says so in its ``cfg_rows``."""
    return 2 if guidance_scale > 1 else 1


class ModelAdapter(ABC):
    """One model family's view of a loaded pipeline: exactly what the stages need.

    ``pipeline`` is the stock diffusers pipeline (used only inside the adapter); ``objective`` the
    training objective the prediction error is measured in.
    """

    family: str  # "sd", "sdxl", "sd3", "flux"
    pipeline_class: str  # the diffusers pipeline class that loads and regenerates this family
    required_components: tuple[str, ...]  # component folders a diffusers folder of this family has
    load_kwargs: dict  # extra keyword arguments of the pipeline's from_pretrained
    optional_components: tuple[str, ...] = ()  # components a folder may leave out (loaded as None)

    def __init__(self, pipeline, *, source: str, kind: str, fingerprint: str, device: torch.device,
                 dtype: torch.dtype, adapters: list[dict] | None = None):
        self.pipeline = pipeline
        self.source, self.kind, self.base_fingerprint = source, kind, fingerprint
        self.adapters = adapters or []  # LoRA adapters loaded on the pipeline (verifier.models.lora), in order
        self.fingerprint = adapted_fingerprint(fingerprint, self.adapters)  # the model under test: base + adapters
        self.device, self.dtype = device, dtype
        self.objective = self._objective()
        self.rows_per_call: int | None = None  # the most rows one denoiser call takes (verifier.memory); None: no limit
        self.autocast: torch.dtype | None = None  # the denoiser's compute dtype under torch.autocast; None: its own
        self._prompt_ids: dict[int, dict[str, torch.Tensor]] = {}  # inversion encodes every step: tokenize once
        # The row budget (verifier.memory) sizes a call for the denoiser; the VAE then encodes and decodes the
        # call's images one at a time (diffusers' slicing), so a GPU call of a hundred rows does not also hold a
        # hundred full-size decoder activations at once. Per image, the numbers are the same.
        vae = getattr(pipeline, "vae", None)
        if vae is not None and hasattr(vae, "use_slicing"):
            vae.enable_slicing()

    # -- what the model is -------------------------------------------------------------------
    @property
    @abstractmethod
    def resolution(self) -> int:
        """The native image size (pixels) the denoiser was built for."""

    @property
    def prediction_type(self) -> str:
        return self.objective.prediction_type

    @abstractmethod
    def _objective(self, error_form: str = "native", timestep_density: str = "logit_normal",
                   resolution: int | None = None):
        """The training objective (noising, target, timestep grid) of this model, measuring its error in
        ``error_form``; ``timestep_density`` is the training density of flow-matching families and
        ``resolution`` (default: native) the image size a dynamic shift is computed for."""

    def configure_objective(self, error_form: str, timestep_density: str, resolution: int | None = None) -> None:
        """Measure the error as a run's config says (``error_form``, ``flow_timestep_density``, ``resolution``)."""
        self.objective = self._objective(error_form, timestep_density, resolution)

    @contextlib.contextmanager
    def adapters_disabled(self):
        """This model's base, with its LoRA adapters switched off (diffusers' ``disable_lora``) until the block ends:
        the same pipeline and weights, so the baseline of a differential run costs no second load or copy."""
        base = copy.copy(self)
        base.adapters, base.fingerprint = [], self.base_fingerprint
        self.pipeline.disable_lora()
        try:
            yield base
        finally:
            self.pipeline.enable_lora()

    @abstractmethod
    def denoiser(self) -> torch.nn.Module:
        """The network whose predictions are measured (for parameter counts and cost)."""

    def describe(self) -> dict:
        """What a certificate records about the model."""
        return {
            "source": self.source, "kind": self.kind, "fingerprint": self.fingerprint,
            "base_fingerprint": self.base_fingerprint, "adapters": self.adapters, "family": self.family,
            "pipeline": self.pipeline_class, "resolution": self.resolution, "prediction_type": self.prediction_type,
            "denoiser_parameters": sum(parameter.numel() for name, parameter in self.denoiser().named_parameters()
                                       if self.adapters or "lora_" not in name),  # a baseline view: the base's own
            "objective": self.objective.describe(), "conditioning": self.conditioning_record(),
            "distillation": distillation_record(self.pipeline, self.source),
        }

    @abstractmethod
    def conditioning_record(self) -> dict:
        """How this family builds its conditioning (encoders, features, micro-conditioning, empty prompt)."""

    # -- stage 2: images to latents ----------------------------------------------------------
    @abstractmethod
    def encode_images(self, images: list[np.ndarray]) -> torch.Tensor:
        """Float RGB HWC images in [0, 1] at the model's resolution -> float32 latents (B, C, h, w)."""

    # -- text conditioning -------------------------------------------------------------------
    @abstractmethod
    def text_inputs(self) -> dict[str, tuple[object, torch.nn.Embedding]]:
        """(tokenizer, input embedding table) of each text encoder, by the name its soft tokens take."""

    @abstractmethod
    def _encode_ids(self, ids: dict[str, torch.Tensor]) -> Conditioning:
        """Run the text encoders on token ids, building the conditioning as the stock pipeline does."""

    def sequence_length(self, name: str) -> int:
        """Positions the pipeline pads text encoder ``name``'s prompt to (the tokenizer's length by default)."""
        return int(self.text_inputs()[name][0].model_max_length)

    def soft_token_offset(self, name: str) -> int:
        """Where encoder ``name``'s soft tokens start: after BOS (CLIP), or first where there is none (T5)."""
        return 0 if self.text_inputs()[name][0].bos_token_id is None else 1

    def prompt_ids(self, soft_tokens: int = 0) -> dict[str, torch.Tensor]:
        """Token ids (1, L) per text encoder: the empty prompt as the pipeline pads it, or, with
        ``soft_tokens`` = n, a prompt of n placeholder tokens: BOS (where the tokenizer has one),
        n placeholders, EOS, padding.

        The placeholders' embeddings are replaced by soft tokens; their ids only matter where an
        encoder reads its pooled output at the EOS token (CLIP picks the first EOS, or in old
        configs the largest id), so they are BOS (or, without one, padding), which is neither.
        """
        if soft_tokens in self._prompt_ids:
            return self._prompt_ids[soft_tokens]
        ids = {}
        for name, (tokenizer, _) in self.text_inputs().items():
            length = self.sequence_length(name)
            empty = tokenizer([""], padding="max_length", max_length=length, truncation=True,
                              return_tensors="pt").input_ids
            if soft_tokens:
                offset = self.soft_token_offset(name)
                if soft_tokens + offset + 1 > length:
                    raise ValueError(f"inversion_tokens={soft_tokens} does not fit {name}'s {length} positions "
                                     f"with {'BOS and ' if offset else ''}EOS")
                eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
                placeholder = tokenizer.bos_token_id if offset else pad
                empty = torch.tensor([[placeholder] * (offset + soft_tokens) + [eos]
                                      + [pad] * (length - offset - soft_tokens - 1)])
            ids[name] = empty.to(self.device)
        self._prompt_ids[soft_tokens] = ids
        return ids

    def encode_text(self, soft_tokens: dict[str, torch.Tensor] | None = None) -> Conditioning:
        """The empty prompt's conditioning or, with ``soft_tokens[name]`` (B, n, d) for each encoder, that of a
        prompt of n soft tokens (written into the encoder's input embeddings at ``soft_token_offset``);
        gradients flow to the soft tokens."""
        if not soft_tokens:
            return self._encode_ids(self.prompt_ids())
        batch, count = next(iter(soft_tokens.values())).shape[:2]
        ids = self.prompt_ids(count)
        with self._soft_tokens_written(soft_tokens):
            return self._encode_ids({name: value.repeat(batch, 1) for name, value in ids.items()})

    @contextlib.contextmanager
    def _soft_tokens_written(self, soft_tokens: dict[str, torch.Tensor]):
        tables = {name: table for name, (_, table) in self.text_inputs().items()}
        handles = []

        def writer(variables: torch.Tensor, offset: int):
            def replace(module, inputs, output):
                output = output.clone()
                output[:, offset : offset + variables.shape[1]] = variables.to(output.dtype)
                return output
            return replace

        try:
            for name, variables in soft_tokens.items():
                handles.append(tables[name].register_forward_hook(writer(variables, self.soft_token_offset(name))))
            yield
        finally:
            for handle in handles:
                handle.remove()

    @torch.no_grad()
    def prompt_conditioning(self, prompts: list[str]) -> Conditioning:
        """The conditioning of each text prompt as the stock pipeline encodes it (padded to the tokenizer's
        length, truncated beyond it), float32: what ``pipe(prompt=...)`` generates from."""
        # A textual-inversion token of several vectors is spelled out (token token_1 ...) as the stock pipeline does.
        convert = getattr(self.pipeline, "maybe_convert_prompt", lambda prompt, tokenizer: prompt)
        ids = {name: tokenizer(convert(list(prompts), tokenizer), padding="max_length",
                               max_length=self.sequence_length(name), truncation=True,
                               return_tensors="pt").input_ids.to(self.device)
               for name, (tokenizer, _) in self.text_inputs().items()}
        return self._encode_ids(ids).map(lambda tensor: tensor.float())

    @torch.no_grad()
    def empty_conditioning(self) -> Conditioning:
        """The conditioning of the empty prompt (batch 1): the baseline of the error ratio and the
        negative of every generation."""
        return self.encode_text(None).map(lambda tensor: tensor.float())

    # -- the denoiser ------------------------------------------------------------------------
    def precision(self) -> contextlib.AbstractContextManager:
        """Where the denoiser and the sampling pipeline run: under ``torch.autocast`` in ``self.autocast``
        (matrix multiplies and convolutions in that dtype, normalizations and softmax in float32), or as the
        weights are. Text encoders, the free variables, the loss and the optimizer stay outside it, in float32."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast)

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, conditioning: Conditioning) -> torch.Tensor:
        """The denoiser's output (float32, same shape as ``noisy``) in the objective's target form, computed in
        the run's precision."""
        with self.precision():
            prediction = self.denoise(noisy, timesteps, conditioning)
        return prediction.float()

    @abstractmethod
    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor, conditioning: Conditioning) -> torch.Tensor:
        """One denoiser call in the family's own way (``predict`` sets the precision and returns float32)."""

    # -- generation through the stock pipeline -----------------------------------------------
    def guidance_kwargs(self, guidance_scale: float) -> dict:
        """The pipeline keyword a guidance scale goes to: classifier-free guidance against the negative."""
        return {"guidance_scale": guidance_scale}

    def generation_kwargs(self, height: int, width: int) -> dict:
        """Extra keyword arguments the family's pipeline gets (none for SD)."""
        return {}

    @torch.no_grad()
    def generate(self, witness: Conditioning, negative: Conditioning, seeds: list[int], guidance_scale: float,
                 steps: int, resolution: int) -> np.ndarray:
        """Stock-pipeline generations, one per seed per image; float (B, N, H, W, 3) in [0, 1].

        Exactly what a third party runs to regenerate a replication:
        ``pipe(**witness, **negative_, generator=torch.Generator('cpu').manual_seed(seed), ...)``.
        """
        batch = len(witness)
        generators = [torch.Generator("cpu").manual_seed(seed) for _ in range(batch) for seed in seeds]
        dtype = self.denoiser().dtype
        # One row per (image, seed), repeated here: SD3's and Flux's pipelines do not repeat embeddings
        # passed in for num_images_per_prompt, and SD's repeat gives the same rows.
        rows = witness.repeat_interleave(len(seeds))
        # Each row draws its noise from its own generator, so splitting rows over calls changes nothing;
        # classifier-free guidance doubles a call's rows.
        per_call = len(rows) if self.rows_per_call is None else max(1, self.rows_per_call // self.cfg_rows(guidance_scale))
        images = []
        for first in range(0, len(rows), per_call):
            part = rows[first : first + per_call]
            with self.precision():
                output = self.pipeline(
                    **part.to(dtype).pipeline_kwargs(negative.expand(len(part)).to(dtype)),
                    num_images_per_prompt=1, generator=generators[first : first + per_call],
                    **self.guidance_kwargs(guidance_scale), num_inference_steps=steps, height=resolution,
                    width=resolution, output_type="np", **self.generation_kwargs(resolution, resolution),
                )
            images.append(np.asarray(output.images, dtype=np.float32))
        images = np.concatenate(images)
        return images.reshape(batch, len(seeds), *images.shape[1:])

    def cfg_rows(self, guidance_scale: float) -> int:
        """Denoiser rows per generated image at ``guidance_scale``: 2 where classifier-free guidance runs."""
        return classifier_free_rows(guidance_scale)

    def scheduler_record(self) -> dict:
        """The sampling scheduler a witness is regenerated with."""
        scheduler = self.pipeline.scheduler
        return {"class": type(scheduler).__name__, "config": dict(scheduler.config)}


def input_table(text_encoder) -> torch.nn.Embedding:
    """The embedding module a text encoder really calls on its token ids (where a hook sees every call).

    T5's encoder calls its own ``encoder.embed_tokens``, a module distinct from the ``shared`` table that
    ``get_input_embeddings()`` returns (the weights are tied, the modules are not).
    """
    inner = getattr(text_encoder, "encoder", None)
    if inner is not None and isinstance(getattr(inner, "embed_tokens", None), torch.nn.Embedding):
        return inner.embed_tokens
    return text_encoder.get_input_embeddings()


def vae_latents(vae, images: list[np.ndarray], device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The latents a pipeline's denoiser works on, for float RGB HWC images in [0, 1]: the VAE posterior
    mean, minus the VAE's ``shift_factor`` where it has one (SD3, Flux), times its ``scaling_factor``;
    float32 (B, C, h, w)."""
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(device=device, dtype=dtype or vae.dtype)
    latents = vae.encode(pixels * 2.0 - 1.0).latent_dist.mean
    shift = vae.config.get("shift_factor")
    if shift is not None:
        latents = latents - shift
    return (latents * vae.config.scaling_factor).float()
