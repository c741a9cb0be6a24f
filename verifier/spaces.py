"""Inversion spaces: the free variables of each image, and how they become a conditioning.

- ``token_embeddings``: a prompt of n soft tokens (BOS where the tokenizer has one, n free input
  embeddings, EOS, padding) in every text encoder the family has, passed through the frozen
  encoders, so the conditioning is one the encoders can really produce (method.md, "existence");
- ``hidden_states``: the conditioning's tensors themselves (per-token features and, where the
  family has one, the pooled embedding); the strongest adversary and so an upper bound on what any
  prompt could do.

Both start at the empty prompt: the soft tokens at the empty prompt's own token embeddings at
those positions (EOS, then padding), which for tokenizers that pad with EOS (SD 1.x's) is exactly
the empty prompt's conditioning. Variables are a dict of tensors by
name, each with its own step scale (the spread of the table or tensor it lives in).
"""

from __future__ import annotations

import torch

from verifier.models.base import Conditioning, ModelAdapter


class TokenEmbeddingSpace:
    """Soft token embeddings after BOS (first, in encoders without one) in each text encoder, through the
    frozen encoders."""

    name = "token_embeddings"

    def __init__(self, adapter: ModelAdapter, tokens: int):
        self.adapter = adapter
        adapter.prompt_ids(tokens)  # refuses a count that does not fit the tokenizers
        empty = adapter.prompt_ids()
        self.base: dict[str, torch.Tensor] = {}
        self.scales: dict[str, float] = {}
        for name, (_, table) in adapter.text_inputs().items():
            # Start from the empty prompt's own token embeddings at those positions (EOS, then padding).
            with torch.no_grad():
                offset = adapter.soft_token_offset(name)
                self.base[name] = table(empty[name]).float()[:, offset : offset + tokens]
            # Adam moves each entry by about lr per step: scale it to the embedding table's spread.
            self.scales[name] = float(table.weight.float().std())

    def initial(self, batch: int) -> dict[str, torch.Tensor]:
        return {name: base.repeat(batch, 1, 1).clone() for name, base in self.base.items()}

    def conditioning(self, variables: dict[str, torch.Tensor]) -> Conditioning:
        return self.adapter.encode_text(variables)


class HiddenStateSpace:
    """The conditioning's tensors, optimized directly (an upper bound on any prompt)."""

    name = "hidden_states"

    def __init__(self, adapter: ModelAdapter, tokens: int):
        self.base = adapter.empty_conditioning().tensors()
        self.scales = {name: float(tensor.std()) for name, tensor in self.base.items()}

    def initial(self, batch: int) -> dict[str, torch.Tensor]:
        return {name: base.repeat(batch, *([1] * (base.dim() - 1))).clone() for name, base in self.base.items()}

    def conditioning(self, variables: dict[str, torch.Tensor]) -> Conditioning:
        return Conditioning.from_tensors(variables)


class SharedTokenEmbeddingSpace(TokenEmbeddingSpace):
    """One set of soft tokens for every text encoder: free in the first encoder's input table and carried
    into each other encoder's table by the least-squares linear map between the two tables, fitted once
    over their shared vocabulary (SDXL's two CLIP tokenizers share theirs). With one encoder it is
    ``token_embeddings``."""

    name = "shared_token_embeddings"

    def __init__(self, adapter: ModelAdapter, tokens: int):
        super().__init__(adapter, tokens)
        tables = {name: table.weight.detach().float() for name, (_, table) in adapter.text_inputs().items()}
        self.first, *others = tables
        self.maps: dict[str, torch.Tensor] = {}
        for name in others:
            if tables[name].shape[0] != tables[self.first].shape[0]:
                raise ValueError(f"inversion_space 'shared_token_embeddings' needs text encoders with one vocabulary; "
                                 f"{self.first} has {tables[self.first].shape[0]} tokens, {name} "
                                 f"{tables[name].shape[0]}: use 'token_embeddings'")
            self.maps[name] = torch.linalg.lstsq(tables[self.first], tables[name]).solution
        self.base = {self.first: self.base[self.first]}
        self.scales = {self.first: self.scales[self.first]}

    def conditioning(self, variables: dict[str, torch.Tensor]) -> Conditioning:
        shared = variables[self.first]
        mapped = {name: shared @ matrix.to(shared.device) for name, matrix in self.maps.items()}
        return self.adapter.encode_text({self.first: shared} | mapped)
