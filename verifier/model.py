"""Load the model under test, offline first, and fingerprint its weights.

MODEL may be:

- a local diffusers folder (``model_index.json`` + ``vae/``, ``text_encoder/``, ``tokenizer/``,
  ``unet/``, ``scheduler/``), loaded with ``local_files_only=True``;
- a single ``.safetensors`` checkpoint (original Stable Diffusion layout) with ``model_config``, a
  local diffusers folder of the same architecture that supplies configs and tokenizer;
- a hub id (``owner/name``), handed to diffusers: it works when the files are in the local
  Hugging Face cache or the hub is reachable; with ``HF_HUB_OFFLINE=1`` only the cache is used.

Pickle checkpoints (``.ckpt``, ``.bin``, ``.pt``, ``.pth``) can run arbitrary code when loaded and
are refused unless ``allow_pickle`` is set.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _dtype_argument(torch_dtype: torch.dtype) -> dict:
    """diffusers renamed ``torch_dtype`` to ``dtype``; pass whichever the installed version knows."""
    from diffusers.utils import deprecation_utils

    if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE"):
        return {"dtype": torch_dtype}
    return {"torch_dtype": torch_dtype}


class ModelLoadError(RuntimeError):
    """MODEL could not be loaded; the message says what was tried and what is missing."""


@dataclass
class LoadedModel:
    """The pipeline under test and what a certificate records about it."""

    pipeline: object
    source: str
    kind: str
    fingerprint: str
    device: torch.device
    dtype: torch.dtype

    @property
    def resolution(self) -> int:
        return int(self.pipeline.unet.config.sample_size) * int(self.pipeline.vae_scale_factor)

    @property
    def prediction_type(self) -> str:
        return self.pipeline.scheduler.config.prediction_type

    def describe(self) -> dict:
        return {
            "source": self.source,
            "kind": self.kind,
            "fingerprint": self.fingerprint,
            "resolution": self.resolution,
            "prediction_type": self.prediction_type,
            "unet_parameters": sum(p.numel() for p in self.pipeline.unet.parameters()),
        }


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


REQUIRED_COMPONENTS = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")


def _check_components(folder: Path) -> None:
    """Name a missing component folder before diffusers reports it as a missing config.json."""
    declared = _components(_model_index(folder))
    missing = [name for name in REQUIRED_COMPONENTS if name not in declared]
    if missing:
        raise ModelLoadError(f"MODEL {str(folder)!r}: model_index.json declares no {', '.join(missing)}; a Stable "
                             f"Diffusion folder needs {', '.join(REQUIRED_COMPONENTS)}")
    absent = [name for name in REQUIRED_COMPONENTS if not (folder / name).is_dir()]
    if absent:
        raise ModelLoadError(f"MODEL {str(folder)!r} lacks the component folder{'s' if len(absent) > 1 else ''} "
                             f"{', '.join(n + '/' for n in absent)} that model_index.json declares")


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


def _looks_local(text: str) -> bool:
    """A MODEL that is meant as a local path: explicit prefixes, or a first folder that exists here."""
    return text.startswith((".", "/", "~")) or Path(text).parent.is_dir()


def _load_failure(error: Exception) -> str:
    """diffusers' and transformers' message, without hints that do not apply to verifier's users."""
    message = str(error)
    if "size mismatch" in message or "ignore_mismatched_sizes" in message:
        first = next((line.strip() for line in message.splitlines() if "size mismatch" in line), message.splitlines()[0])
        return (f"a component's weights do not fit its config.json ({first}); the folder mixes files of two "
                "models")
    return f"{type(error).__name__}: {message}"


def load_model(model: str | Path, device: str = "auto", dtype: str = "float32", allow_pickle: bool = False,
               model_config: str | Path | None = None) -> LoadedModel:
    """Load a Stable Diffusion 1.x/2.x pipeline for certification (frozen, eval mode, no progress bars)."""
    import diffusers.utils.logging
    import transformers.utils.logging
    from diffusers import StableDiffusionPipeline

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
                f"MODEL {str(model)!r} is a folder without model_index.json: expected a diffusers Stable Diffusion folder "
                "(model_index.json, vae/, text_encoder/, tokenizer/, unet/, scheduler/)"
            )
        _check_components(path)
        _check_pickle_free(path, allow_pickle)
        try:
            pipeline = StableDiffusionPipeline.from_pretrained(
                path, local_files_only=True, **_dtype_argument(torch_dtype), use_safetensors=None if allow_pickle else True,
                safety_checker=None, requires_safety_checker=False,
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
        if model_config is None or not Path(model_config).is_dir():
            raise ModelLoadError(
                f"MODEL {str(model)!r} is a single-file checkpoint: pass --model-config DIR, a local diffusers folder "
                f"of the same architecture (configs + tokenizer); got {model_config!r}"
            )
        try:
            pipeline = StableDiffusionPipeline.from_single_file(
                str(path), config=str(model_config), local_files_only=True, **_dtype_argument(torch_dtype),
                safety_checker=None, requires_safety_checker=False,
            )
        except Exception as error:  # diffusers raises its own error kinds for foreign or partial checkpoints
            raise ModelLoadError(
                f"MODEL {str(model)!r}: diffusers could not load it as a Stable Diffusion checkpoint with configs from "
                f"--model-config {str(model_config)!r}: {type(error).__name__}: {error}") from None
        kind, fingerprint = "single-file", fingerprint_files([path], path.parent)
    elif HUB_ID.match(str(model)) and not _looks_local(str(model)):
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
        try:
            pipeline = StableDiffusionPipeline.from_pretrained(
                str(model), **_dtype_argument(torch_dtype), local_files_only=offline, use_safetensors=None if allow_pickle else True,
                safety_checker=None, requires_safety_checker=False,
            )
        except Exception as error:  # diffusers raises many kinds here (OSError, HTTP, connection)
            where = "offline (HF_HUB_OFFLINE=1): it is not in the local Hugging Face cache" if offline else \
                "the hub could not be reached or has no such model, and it is not in the local cache"
            raise ModelLoadError(f"MODEL {str(model)!r} is not a local path; as a hub id it failed {where}. "
                                 f"Pass a local diffusers folder instead. ({type(error).__name__}: {error})") from None
        from huggingface_hub import snapshot_download

        snapshot = Path(snapshot_download(str(model), local_files_only=True))
        kind, fingerprint = "hub", fingerprint_files(_component_files(snapshot), snapshot)
    else:
        raise ModelLoadError(
            f"MODEL {str(model)!r} does not exist: expected a local diffusers folder, a .safetensors checkpoint, or a "
            "hub id of the form owner/name"
        )
    pipeline.to(target_device)
    pipeline.set_progress_bar_config(disable=True)
    for component in (pipeline.unet, pipeline.vae, pipeline.text_encoder):
        component.eval().requires_grad_(False)
    prediction_type = pipeline.scheduler.config.prediction_type
    from verifier.diffusion import PREDICTION_TYPES

    if prediction_type not in PREDICTION_TYPES:
        raise ModelLoadError(f"MODEL {str(model)!r}: scheduler prediction_type {prediction_type!r} is not supported "
                             f"(expected one of {', '.join(PREDICTION_TYPES)})")
    return LoadedModel(pipeline, str(model), kind, fingerprint, target_device, torch_dtype)
