"""Load the model under test, offline first, detect its family and fingerprint its weights.

MODEL may be:

- a local diffusers folder (``model_index.json`` and the component folders its pipeline needs),
  loaded with ``local_files_only=True``;
- a single ``.safetensors`` checkpoint (original Stable Diffusion / SDXL layout) with
  ``model_config``, a local diffusers folder of the same architecture that supplies configs and
  tokenizers;
- a hub id (``owner/name``), handed to diffusers: it works when the files are in the local
  Hugging Face cache or the hub is reachable; with ``HF_HUB_OFFLINE=1`` only the cache is used.

Pickle checkpoints (``.ckpt``, ``.bin``, ``.pt``, ``.pth``) can run arbitrary code when loaded and
are refused unless ``allow_pickle`` is set.

The family is the pipeline class ``model_index.json`` names (the config folder's, for a single
file); each family's adapter (``verifier.models.sd``, ``verifier.models.sdxl``) is registered in
``verifier.registry.MODEL_FAMILIES``. An unknown pipeline class is refused, naming what is supported.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Sequence

import torch

from verifier.models.base import ModelAdapter
from verifier.models.files import PICKLE_SUFFIXES, ModelLoadError, safetensors_problem
from verifier.models.lora import LoraSpec, load_loras
from verifier.models.textual_inversion import EmbeddingSpec, load_embeddings
from verifier.objectives import ObjectiveError
from verifier.paths import broken_link

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _dtype_argument(torch_dtype: torch.dtype) -> dict:
    """diffusers renamed ``torch_dtype`` to ``dtype``; pass whichever the installed version knows."""
    from diffusers.utils import deprecation_utils

    if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE"):
        return {"dtype": torch_dtype}
    return {"torch_dtype": torch_dtype}


def autocast_dtype(name: str) -> torch.dtype | None:
    """The torch dtype of a config's ``autocast`` (None for off)."""
    return None if name == "off" else TORCH_DTYPES[name]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; anything else must be a device torch accepts."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ModelLoadError(f"--device {name!r} is not allowed: expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"--device {name!r}: torch sees no MPS device here; use --device cpu or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"--device {name!r}: torch sees no CUDA device here; use --device cpu or auto")
    return device


def fingerprint_files(files: list[Path], root: Path) -> str:
    """sha256 over each file's relative path and sha256, in sorted order (independent of where it lies)."""
    outer = hashlib.sha256()
    for file in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        inner = hashlib.sha256()
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                inner.update(block)
        outer.update(f"{file.relative_to(root).as_posix()}\0{inner.hexdigest()}\n".encode())
    return "sha256:" + outer.hexdigest()


def _model_index(folder: Path) -> dict:
    """model_index.json, checked: a JSON object whose components are [library, class] pairs."""
    index_file = folder / "model_index.json"
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"MODEL {str(folder)!r}: model_index.json is not valid JSON: {error}") from None
    if not isinstance(index, dict):
        raise ModelLoadError(f"MODEL {str(folder)!r}: model_index.json must be a JSON object naming the pipeline's "
                             f"components, got a {type(index).__name__}")
    return index


def _components(index: dict) -> list[str]:
    """Names of the components model_index.json declares (entries like "unet": ["diffusers", "UNet..."])."""
    return [name for name, value in index.items()
            if not name.startswith("_") and isinstance(value, list) and len(value) == 2 and value[0] is not None]


def _component_files(folder: Path) -> list[Path]:
    """Every file of the components named in model_index.json (not images or notes beside them)."""
    files = [folder / "model_index.json"]
    for name in _components(_model_index(folder)):
        if (folder / name).is_dir():
            files += [p for p in (folder / name).rglob("*") if p.is_file()]
    return files


def detect_family(folder: Path, role: str = "MODEL") -> type:
    """The adapter class of the family whose pipeline ``model_index.json`` names; unknown ones are refused."""
    from verifier.registry import MODEL_FAMILIES

    class_name = _model_index(folder).get("_class_name")
    adapters = [MODEL_FAMILIES.get(name) for name in MODEL_FAMILIES.names()]
    for adapter in adapters:
        if adapter.pipeline_class == class_name:
            return adapter
    supported = ", ".join(f"{adapter.pipeline_class} ({adapter.family})" for adapter in adapters)
    raise ModelLoadError(f"{role} {str(folder)!r}: model_index.json names the pipeline {class_name!r}, which verifier "
                         f"does not support; supported: {supported}")


def _check_components(folder: Path, adapter: type) -> None:
    """Name a missing component folder before diffusers reports it as a missing config.json."""
    required = adapter.required_components
    declared = _components(_model_index(folder))
    missing = [name for name in required if name not in declared]
    if missing:
        raise ModelLoadError(f"MODEL {str(folder)!r}: model_index.json declares no {', '.join(missing)}; a "
                             f"{adapter.pipeline_class} folder needs {', '.join(required)}")
    absent = [name for name in required if not (folder / name).is_dir()]
    if absent:
        raise ModelLoadError(f"MODEL {str(folder)!r} lacks the component folder{'s' if len(absent) > 1 else ''} "
                             f"{', '.join(n + '/' for n in absent)} that model_index.json declares")


def _absent_optional(folder: Path, adapter: type) -> dict:
    """``{name: None}`` for each optional component the folder leaves out (SD3 without T5), as diffusers
    expects them passed to load such a folder."""
    declared = _components(_model_index(folder))
    return {name: None for name in adapter.optional_components if name not in declared or not (folder / name).is_dir()}


def _check_pickle_free(folder: Path, allow_pickle: bool) -> None:
    pickled = [p for p in _component_files(folder) if p.suffix in PICKLE_SUFFIXES]
    safe_dirs = {p.parent for p in _component_files(folder) if p.suffix == ".safetensors"}
    unsafe = [p for p in pickled if p.parent not in safe_dirs]
    if unsafe and not allow_pickle:
        names = ", ".join(p.relative_to(folder).as_posix() for p in unsafe)
        raise ModelLoadError(
            f"MODEL {str(folder)!r} has pickle weights ({names}) and no safetensors beside them; pickle files can "
            "run code when loaded. Convert them to safetensors, or pass --allow-pickle if you trust them."
        )


def _check_safetensors(files: list[Path], root: Path, what: str) -> None:
    for file in files:
        if file.suffix == ".safetensors" and (problem := safetensors_problem(file)):
            name = file.relative_to(root).as_posix() if file.is_relative_to(root) else str(file)
            raise ModelLoadError(f"{what}: {name} is not a safetensors file: {problem}")


def _looks_local(text: str) -> bool:
    """A MODEL that is meant as a local path: explicit prefixes, or a first folder that exists here."""
    return text.startswith((".", "/", "~")) or Path(text).parent.is_dir()


def _load_failure(error: Exception, mismatch: str = "the folder mixes files of two models") -> str:
    """diffusers' and transformers' message, without hints that do not apply to verifier's users."""
    message = str(error)
    if "size mismatch" in message or "ignore_mismatched_sizes" in message:
        first = next((line.strip() for line in message.splitlines() if "size mismatch" in line or "shape" in line),
                     message.splitlines()[0])
        return f"a component's weights do not fit its config.json ({first}); {mismatch}"
    return f"{type(error).__name__}: {message}"


def load_model(model: str | Path, device: str = "auto", dtype: str = "float32", allow_pickle: bool = False,
               model_config: str | Path | None = None, loras: Sequence[LoraSpec] = (),
               embeddings: Sequence[EmbeddingSpec] = ()) -> ModelAdapter:
    """Load a supported pipeline for certification (frozen, eval mode, no progress bars) behind its adapter, with
    ``loras`` applied in order (verifier.models.lora), then ``embeddings`` (verifier.models.textual_inversion)."""
    import diffusers
    import diffusers.utils.logging
    import transformers.utils.logging

    # Loading bars would drown verifier's own progress lines on stderr.
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()

    if dtype not in TORCH_DTYPES:
        raise ModelLoadError(f"--dtype {dtype!r} is not supported: expected one of {', '.join(TORCH_DTYPES)}")
    torch_dtype = TORCH_DTYPES[dtype]
    target_device = resolve_device(device)
    path = Path(model)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(
                f"MODEL {str(model)!r} is a folder without model_index.json: expected a diffusers pipeline folder "
                "(model_index.json, vae/, text_encoder/, tokenizer/, unet/, scheduler/, ...)"
            )
        adapter = detect_family(path)
        _check_components(path, adapter)
        _check_pickle_free(path, allow_pickle)
        _check_safetensors(_component_files(path), path, f"MODEL {str(model)!r}")
        try:
            pipeline = getattr(diffusers, adapter.pipeline_class).from_pretrained(
                path, local_files_only=True, **_dtype_argument(torch_dtype),
                use_safetensors=None if allow_pickle else True, **adapter.load_kwargs, **_absent_optional(path, adapter),
            )
        except (OSError, ValueError, EnvironmentError, RuntimeError, TypeError) as error:
            raise ModelLoadError(f"MODEL {str(model)!r}: diffusers could not load the folder: {_load_failure(error)}"
                                 ) from None
        kind, fingerprint = "diffusers-folder", fingerprint_files(_component_files(path), path)
    elif path.is_file():
        suffix = path.suffix.lower()
        if suffix in PICKLE_SUFFIXES and not allow_pickle:
            raise ModelLoadError(
                f"MODEL {str(model)!r} is a pickle checkpoint ({suffix}), which can run code when loaded; convert it "
                "to .safetensors, or pass --allow-pickle if you trust it"
            )
        if suffix not in PICKLE_SUFFIXES + (".safetensors",):
            raise ModelLoadError(
                f"MODEL {str(model)!r} is a file of unknown kind {suffix!r}: expected a diffusers folder, a .safetensors "
                "checkpoint (with --model-config), or a hub id"
            )
        if model_config is None or not (Path(model_config) / "model_index.json").is_file():
            raise ModelLoadError(
                f"MODEL {str(model)!r} is a single-file checkpoint: pass --model-config DIR, a local diffusers folder "
                f"of the same architecture (model_index.json, configs + tokenizers); got {model_config!r}"
            )
        adapter = detect_family(Path(model_config), role="--model-config")
        if suffix == ".safetensors":
            _check_safetensors([path], path.parent, "MODEL")
        try:
            pipeline = getattr(diffusers, adapter.pipeline_class).from_single_file(
                str(path), config=str(model_config), local_files_only=True, **_dtype_argument(torch_dtype),
                **adapter.load_kwargs,
            )
        except Exception as error:  # diffusers raises its own error kinds for foreign or partial checkpoints
            raise ModelLoadError(
                f"MODEL {str(model)!r}: diffusers could not load it as a {adapter.pipeline_class} checkpoint with "
                f"configs from --model-config {str(model_config)!r}: "
                f"{_load_failure(error, 'the checkpoint is of another architecture than the config folder')}") from None
        _check_fully_loaded(pipeline, f"MODEL {str(model)!r} with --model-config {str(model_config)!r}")
        kind, fingerprint = "single-file", fingerprint_files([path], path.parent)
    elif HUB_ID.match(str(model)) and not _looks_local(str(model)):
        adapter, pipeline, snapshot = _load_from_hub(str(model), torch_dtype, allow_pickle)
        kind, fingerprint = "hub", fingerprint_files(_component_files(snapshot), snapshot)
    else:
        link = broken_link(Path(str(model)))
        raise ModelLoadError(
            f"MODEL {str(model)!r} {link or 'does not exist'}: expected a local diffusers folder, a .safetensors "
            "checkpoint, or a hub id of the form owner/name"
        )
    adapters = load_loras(pipeline, list(loras), allow_pickle, adapter.family)
    adapters += load_embeddings(pipeline, list(embeddings), allow_pickle, adapter.family)
    pipeline.to(target_device)
    pipeline.set_progress_bar_config(disable=True)
    for component in pipeline.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval().requires_grad_(False)
    try:
        return adapter(pipeline, source=str(model), kind=kind, fingerprint=fingerprint, device=target_device,
                       dtype=torch_dtype, adapters=adapters)
    except ObjectiveError as error:
        raise ModelLoadError(f"MODEL {str(model)!r}: {error}") from None


def _check_fully_loaded(pipeline, what: str) -> None:
    """diffusers' single-file loader leaves parameters the file lacks on the meta device without a word."""
    for name, component in pipeline.components.items():
        if isinstance(component, torch.nn.Module):
            empty = [key for key, value in component.state_dict().items() if value.device.type == "meta"]
            if empty:
                raise ModelLoadError(
                    f"{what}: the checkpoint lacks {len(empty)} of {name}'s tensors (e.g. {empty[0]}); it is "
                    "incomplete, or of another architecture than the config folder")


def _load_from_hub(model: str, torch_dtype: torch.dtype, allow_pickle: bool):
    """(adapter class, pipeline, snapshot folder) of a hub id, from the local cache or the hub."""
    import diffusers
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    try:
        snapshot = Path(snapshot_download(model, allow_patterns=["model_index.json"], local_files_only=offline))
        adapter = detect_family(snapshot)
        pipeline = getattr(diffusers, adapter.pipeline_class).from_pretrained(
            model, **_dtype_argument(torch_dtype), local_files_only=offline,
            use_safetensors=None if allow_pickle else True, **adapter.load_kwargs,
        )
    except ModelLoadError:
        raise
    except Exception as error:  # diffusers and the hub client raise many kinds here (OSError, HTTP, connection)
        where = "offline (HF_HUB_OFFLINE=1): it is not in the local Hugging Face cache" if offline else \
            "the hub could not be reached or has no such model, and it is not in the local cache"
        raise ModelLoadError(f"MODEL {model!r} is not a local path; as a hub id it failed {where}. "
                             f"Pass a local diffusers folder instead. ({type(error).__name__}: {error})") from None
    return adapter, pipeline, snapshot  # the same snapshot folder, now holding every file from_pretrained fetched
