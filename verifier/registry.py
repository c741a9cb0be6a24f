"""Registries of the pluggable parts: similarity metrics, inversion spaces and model families.

A registry maps a name (used in configs and on the command line) to a factory. Built-in entries
are registered where they are defined; a plug-in registers its own with ``REGISTRY.register``.
Names only are needed to validate a config, so entries are imported lazily.
"""

from __future__ import annotations

import importlib
from typing import Callable


class Registry:
    """Name -> ``module:attribute`` (imported on first use) or a callable registered at run time."""

    def __init__(self, kind: str, builtins: dict[str, str]):
        self.kind = kind
        self._entries: dict[str, str | Callable] = dict(builtins)

    def register(self, name: str, factory: Callable) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = factory

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> Callable:
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}")
        entry = self._entries[name]
        if isinstance(entry, str):
            module, attribute = entry.split(":")
            entry = getattr(importlib.import_module(module), attribute)
            self._entries[name] = entry
        return entry


SIMILARITY_METRICS = Registry("similarity metric", {
    "ssim": "verifier.similarity:SSIM",
    "lpips": "verifier.similarity:LPIPSSimilarity",
    "sscd": "verifier.similarity:SSCD",
})

INVERSION_SPACES = Registry("inversion space", {
    "token_embeddings": "verifier.spaces:TokenEmbeddingSpace",
    "hidden_states": "verifier.spaces:HiddenStateSpace",
    "shared_token_embeddings": "verifier.spaces:SharedTokenEmbeddingSpace",
})

# A family's adapter class names the diffusers pipeline class it loads (``pipeline_class``);
# ``verifier.models.loading.detect_family`` matches model_index.json's ``_class_name`` against them.
MODEL_FAMILIES = Registry("model family", {
    "sd": "verifier.models.sd:StableDiffusionAdapter",
    "sdxl": "verifier.models.sdxl:StableDiffusionXLAdapter",
    "sd3": "verifier.models.sd3:StableDiffusion3Adapter",
    "flux": "verifier.models.flux:FluxAdapter",
})
