"""Stage 3: invert images into the model's text-conditioning space.

The free variables of each image live in an *inversion space* (a registry entry):

- ``token_embeddings``: soft token embeddings written into positions 1..n of the empty prompt's
  input embeddings (right after BOS) and passed through the frozen text encoder, so the resulting
  conditioning is one the encoder can really produce (method.md, "existence");
- ``hidden_states``: the encoder's output hidden states themselves; the strongest adversary and so
  an upper bound on what any prompt could do.

Both start exactly at the empty prompt, so an image's error under the inverted conditioning can
only go down from its unconditional error, and the ratio of the two is the quantity decisions
rest on. Each image has its own variables and its own random stream (timesteps and noise drawn
from a generator seeded by the run's seed and the image's sha256), and the batch loss is the *sum*
of per-image losses: Adam then updates each image exactly as if it were alone in its batch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from verifier.diffusion import alphas_cumprod, squared_error


def empty_prompt_ids(pipeline, device) -> torch.Tensor:
    """Token ids of the empty prompt padded to the tokenizer's length, as the pipeline builds them."""
    tokenizer = pipeline.tokenizer
    ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return ids.to(device)


@torch.no_grad()
def empty_conditioning(pipeline, device) -> torch.Tensor:
    """The text encoder's hidden states for the empty prompt; shape (1, L, d)."""
    return pipeline.text_encoder(empty_prompt_ids(pipeline, device))[0]


class TokenEmbeddingSpace:
    """Soft token embeddings after BOS, through the frozen text encoder."""

    name = "token_embeddings"

    def __init__(self, pipeline, device, tokens: int):
        self.pipeline = pipeline
        self.ids = empty_prompt_ids(pipeline, device)
        if tokens + 1 > self.ids.shape[1]:
            raise ValueError(f"inversion_tokens={tokens} does not fit the tokenizer's {self.ids.shape[1]} positions")
        self.tokens = tokens
        self.embedding = pipeline.text_encoder.get_input_embeddings()
        with torch.no_grad():
            self.base = self.embedding(self.ids).float()
        # Adam moves each entry by about lr per step: scale it to the embedding table's spread.
        self.scale = float(self.embedding.weight.float().std())

    def initial(self, batch: int) -> torch.Tensor:
        return self.base[:, 1 : 1 + self.tokens].repeat(batch, 1, 1).clone()

    @contextlib.contextmanager
    def _written(self, variables: torch.Tensor):
        def replace(module, inputs, output):
            output = output.clone()
            output[:, 1 : 1 + self.tokens] = variables.to(output.dtype)
            return output

        handle = self.embedding.register_forward_hook(replace)
        try:
            yield
        finally:
            handle.remove()

    def conditioning(self, variables: torch.Tensor) -> torch.Tensor:
        """Encoder hidden states (B, L, d) with ``variables`` (B, n, d) written after BOS."""
        with self._written(variables):
            return self.pipeline.text_encoder(self.ids.repeat(variables.shape[0], 1))[0]


class HiddenStateSpace:
    """The text encoder's output hidden states, optimized directly (an upper bound on any prompt)."""

    name = "hidden_states"

    def __init__(self, pipeline, device, tokens: int):
        self.base = empty_conditioning(pipeline, device).float()
        self.scale = float(self.base.std())

    def initial(self, batch: int) -> torch.Tensor:
        return self.base.repeat(batch, 1, 1).clone()

    def conditioning(self, variables: torch.Tensor) -> torch.Tensor:
        return variables


@dataclass
class Inversion:
    """What inversion found for a batch of images."""

    variables: torch.Tensor  # (B, ...) the free variables
    conditioning: torch.Tensor  # (B, L, d) encoder hidden states: the witness
    loss_curve: torch.Tensor  # (B, steps) per-image training loss


def image_generator(seed: int, sha256: str, purpose: str) -> torch.Generator:
    """A CPU generator that depends only on the run's seed, the image's bytes and the purpose."""
    import hashlib

    digest = hashlib.sha256(f"{seed}:{sha256}:{purpose}".encode()).digest()
    return torch.Generator("cpu").manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def invert(pipeline, space, z0: torch.Tensor, image_hashes: list[str], *, steps: int, learning_rate: float,
           noise_draws: int, seed: int) -> Inversion:
    """Minimize each image's prediction error over its conditioning with Adam."""
    device = z0.device
    unet = pipeline.unet
    prediction_type = pipeline.scheduler.config.prediction_type
    abar = alphas_cumprod(pipeline.scheduler, device)
    generators = [image_generator(seed, sha, "inversion") for sha in image_hashes]
    variables = space.initial(z0.shape[0]).to(device).requires_grad_(True)
    optimizer = torch.optim.Adam([variables], lr=learning_rate * space.scale)
    batch = z0.shape[0]
    z_repeated = z0.repeat_interleave(noise_draws, dim=0)
    curve = torch.empty(batch, steps)
    for step in range(steps):
        timesteps = torch.cat([torch.randint(0, len(abar), (noise_draws,), generator=g) for g in generators]).to(device)
        noise = torch.cat([torch.randn((noise_draws, *z0.shape[1:]), generator=g) for g in generators]).to(device)
        conditioning = space.conditioning(variables).repeat_interleave(noise_draws, dim=0)
        errors = squared_error(unet, prediction_type, z_repeated, noise, timesteps, conditioning, abar)
        per_image = errors.view(batch, noise_draws).mean(dim=1)
        optimizer.zero_grad(set_to_none=True)
        per_image.sum().backward()
        optimizer.step()
        curve[:, step] = per_image.detach().cpu()
    variables = variables.detach()
    with torch.no_grad():
        conditioning = space.conditioning(variables).float()
    return Inversion(variables, conditioning, curve)
