"""Textual-inversion embedding files for the tiny models, in the layouts diffusers' ``load_textual_inversion`` reads."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def encoder_width(model: Path, encoder: str = "text_encoder") -> int:
    """The width of a text encoder's input vectors, from its config."""
    return json.loads((Path(model) / encoder / "config.json").read_text())["hidden_size"]


def write_tiny_embedding(model: Path, out: Path, token: str = "<tiny-style>", vectors: int = 1,
                         layout: str = "diffusers", seed: int = 0, width: int | None = None) -> Path:
    """Random vectors for ``model``'s text encoder(s), saved as ``out`` in ``layout``: diffusers ({token: vectors}),
    a1111 (emb_params, no token: the file name is the trigger word), a1111-pt (string_to_param, a pickle) or sdxl
    (clip_l and clip_g)."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)

    def vectors_for(encoder: str) -> torch.Tensor:
        return torch.randn(vectors, width or encoder_width(model, encoder), generator=generator)

    if layout == "diffusers":
        save_file({token: vectors_for("text_encoder")}, str(out))
    elif layout == "a1111":
        save_file({"emb_params": vectors_for("text_encoder")}, str(out))
    elif layout == "a1111-pt":
        torch.save({"string_to_param": {"*": vectors_for("text_encoder")}, "name": token}, out)
    elif layout == "sdxl":
        save_file({"clip_l": vectors_for("text_encoder"), "clip_g": vectors_for("text_encoder_2")}, str(out))
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return out
