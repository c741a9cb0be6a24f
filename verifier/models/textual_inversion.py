"""Textual-inversion embeddings on the model under test (``--textual-inversion PATH[:TOKEN]``, SD 1.x/2.x and SDXL),
loaded with diffusers' own ``load_textual_inversion``.

An embedding adds a token to the tokenizer and its learned vectors to the text encoder's input table; the weights
are otherwise the base's. It matters to a certificate wherever text is encoded: the owner's prompts that name the
token and the decoded witness (the witness itself is a conditioning, which no token changes). SD 1.x/2.x files are
loaded as a user of diffusers loads them (``pipe.load_textual_inversion(path, token=TOKEN)``); an SDXL file holds
one set of vectors per text encoder (``clip_l``, ``clip_g``) and is loaded into each, as diffusers' documentation
does. Before anything is loaded the file is checked and the token with it: a token already in the vocabulary (diffusers
would refuse it too, after reading the file) and vectors of another width than the text encoder's are named.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from verifier.images import file_sha256
from verifier.models.files import PICKLE_SUFFIXES, ModelLoadError, check_adapter_file

FAMILIES = ("sd", "sdxl")
SDXL_KEYS = {"clip_l": ("text_encoder", "tokenizer"), "clip_g": ("text_encoder_2", "tokenizer_2")}
EXPECTED = "a textual-inversion embedding (.safetensors; .pt/.bin with --allow-pickle)"


@dataclass(frozen=True)
class EmbeddingSpec:
    """One ``--textual-inversion PATH[:TOKEN]``: the embedding file and the token it is loaded under (None: the
    file's own, or for a file that names none, its file name, as A1111 does)."""

    path: Path
    token: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))
        if self.token is not None and (not self.token.strip() or any(c.isspace() for c in self.token)):
            raise ValueError(f"--textual-inversion '{self.path}:{self.token}': the token {self.token!r} is not "
                             "allowed; expected one word without spaces (e.g. <my-style>)")

    @classmethod
    def parse(cls, text: str) -> "EmbeddingSpec":
        """``PATH`` or ``PATH:TOKEN`` (an existing PATH that itself holds a colon is taken whole)."""
        head, separator, tail = str(text).rpartition(":")
        if not separator or not head or Path(text).exists():
            return cls(Path(text))
        return cls(Path(head), tail)

    def argument(self) -> str:
        return str(self.path) if self.token is None else f"{self.path}:{self.token}"


def load_embeddings(pipeline, specs: list[EmbeddingSpec], allow_pickle: bool, family: str) -> list[dict]:
    """Load every embedding onto ``pipeline`` and return what a certificate records of each: file, sha256, layout,
    token, vectors and the text encoders it extends."""
    return [_load_one(pipeline, spec, allow_pickle, family) for spec in specs]


def _load_one(pipeline, spec: EmbeddingSpec, allow_pickle: bool, family: str) -> dict:
    path, what = spec.path, f"--textual-inversion {str(spec.path)!r}"
    if family not in FAMILIES:
        raise ModelLoadError(f"{what}: textual-inversion embeddings are loaded for {' and '.join(FAMILIES)} models "
                             f"(diffusers' load_textual_inversion); MODEL is a {family} model")
    check_adapter_file(path, what, allow_pickle, EXPECTED)
    state = _read(path)
    layout, token, per_encoder = _vectors(state, path, family, what)
    token = spec.token or token
    for encoder_name, (vectors, tokenizer_name) in per_encoder.items():
        tokenizer, encoder = getattr(pipeline, tokenizer_name), getattr(pipeline, encoder_name)
        taken = [name for name in [token] + [f"{token}_{index}" for index in range(1, len(vectors))]
                 if name in tokenizer.get_vocab()]
        if taken:
            raise ModelLoadError(f"{what}: the token {taken[0]!r} is already in {tokenizer_name}'s vocabulary, so "
                                 f"the embedding would change what it means; load it under another token "
                                 f"({what[:-1]}:<new-token>')")
        width = encoder.get_input_embeddings().weight.shape[1]
        if vectors.shape[1] != width:
            raise ModelLoadError(f"{what} was made for another model: its vectors for {encoder_name} have {vectors.shape[1]} "
                                 f"values, this model's text encoder takes {width}")
    try:
        if family == "sdxl":
            for key, (encoder_name, tokenizer_name) in SDXL_KEYS.items():
                pipeline.load_textual_inversion(state[key], token=token, text_encoder=getattr(pipeline, encoder_name),
                                                tokenizer=getattr(pipeline, tokenizer_name))
        else:
            pipeline.load_textual_inversion(str(path), token=token)
    except (ValueError, RuntimeError, KeyError) as error:  # a layout diffusers reads otherwise than the checks above
        raise ModelLoadError(f"{what} could not be loaded by diffusers' load_textual_inversion: {error}") from None
    vectors = len(next(iter(per_encoder.values()))[0])
    return {"kind": "textual_inversion", "path": str(path), "sha256": file_sha256(path), "layout": layout,
            "token": token, "vectors": vectors, "text_encoders": sorted(per_encoder)}


def _read(path: Path) -> dict:
    if path.suffix.lower() in PICKLE_SUFFIXES:  # allowed by the user (check_adapter_file)
        return torch.load(path, map_location="cpu", weights_only=False)
    from safetensors.torch import load_file

    return load_file(str(path))


def _matrix(tensor) -> torch.Tensor | None:
    """Vectors as a (count, width) matrix; None where the value is not a tensor of one or two dimensions."""
    if not isinstance(tensor, torch.Tensor) or tensor.ndim not in (1, 2):
        return None
    return tensor[None] if tensor.ndim == 1 else tensor


def _vectors(state: dict, path: Path, family: str, what: str) -> tuple[str, str, dict]:
    """(layout, the token the file names, {text encoder: (vectors, its tokenizer)})."""
    keys = sorted(state) if isinstance(state, dict) else []
    if set(SDXL_KEYS) <= set(keys):
        if family != "sdxl":
            raise ModelLoadError(f"{what} is an SDXL embedding (clip_l and clip_g vectors); MODEL is a {family} "
                                 "model")
        vectors = {SDXL_KEYS[key][0]: (_matrix(state[key]), SDXL_KEYS[key][1]) for key in SDXL_KEYS}
        if any(matrix is None for matrix, _ in vectors.values()):
            raise ModelLoadError(f"{what}: its clip_l / clip_g values are not vectors")
        return "sdxl", path.stem, vectors
    if family == "sdxl":
        raise ModelLoadError(f"{what} holds {', '.join(keys[:4]) or 'nothing'}; an SDXL embedding holds clip_l and "
                             "clip_g vectors, one set per text encoder")
    if "string_to_param" in keys:  # A1111's .pt
        layout, token, vectors = "a1111", state.get("name") or path.stem, _matrix(state["string_to_param"].get("*"))
    elif len(keys) == 1:
        key = keys[0]
        # A1111's safetensors files name no token (their key is emb_params): the file name is the trigger word.
        layout, token = ("a1111", path.stem) if key == "emb_params" else ("diffusers", key)
        vectors = _matrix(state[key])
    else:
        raise ModelLoadError(f"{what} holds {len(keys)} entries ({', '.join(keys[:4])}); a textual-inversion "
                             "embedding holds one (diffusers: the token; A1111: emb_params or string_to_param)")
    if vectors is None:
        raise ModelLoadError(f"{what}: its entry is not a vector or a matrix of vectors")
    return layout, token, {"text_encoder": (vectors, "tokenizer")}
