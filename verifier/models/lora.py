"""LoRA adapters on the model under test (``--lora PATH[:SCALE]``), loaded with diffusers' own LoRA loaders.

A fine-tune is usually published as a LoRA over a base model. verifier loads each file exactly as a user of
diffusers does (``pipeline.load_lora_weights(path, adapter_name=...)`` then ``pipeline.set_adapters(names,
adapter_weights=scales)``; peft underneath), so a witness regenerates with stock diffusers and those two lines.
diffusers converts the kohya / A1111 layout (``lora_unet_...lora_down.weight``) itself; nothing here edits a
weight.

What diffusers does not do is say when a file does not fit: a LoRA whose modules name nothing in the model is
loaded as nothing, one that fits only in part loses the rest, both without an error. So the file's LoRA modules
are counted before loading and the modules peft adapted after, and a file that adapts fewer modules than it holds
is refused, naming the file. The model's fingerprint covers every adapter (file sha256 and scale), so a run key,
a calibration and ``verify`` all tell the fine-tune from its base.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from verifier.images import file_sha256
from verifier.models.files import ModelLoadError, check_adapter_file

SCALE_LIMIT = 10.0  # |SCALE| above this is a typing error, not a fine-tune setting (published LoRAs use 0.3-1.5)
# The suffixes of a LoRA module's two factors in the layouts diffusers reads: kohya / A1111, diffusers' older
# attention-processor layout, and peft's (diffusers' own files since 0.23).
DOWN_SUFFIXES = (".lora_down.weight", ".lora.down.weight", ".lora_A.weight", ".lora_linear_layer.down.weight")
UP_SUFFIXES = (".lora_up.weight", ".lora.up.weight", ".lora_B.weight", ".lora_linear_layer.up.weight")
KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_te3_", "lora_transformer_")
DIFFUSERS_PREFIXES = ("unet.", "text_encoder.", "text_encoder_2.", "text_encoder_3.", "transformer.")


@dataclass(frozen=True)
class LoraSpec:
    """One ``--lora PATH[:SCALE]``: the adapter file and the weight ``set_adapters`` gives it."""

    path: Path
    scale: float = 1.0

    def __post_init__(self):
        """A scale that is not a finite number within +-SCALE_LIMIT is refused, from the API as from ``--lora``."""
        object.__setattr__(self, "path", Path(self.path))  # the API takes a str as well
        scale = _number(self.scale)
        if scale is None or not math.isfinite(scale) or abs(scale) > SCALE_LIMIT:
            shown = repr(self.scale) if scale is None else f"{scale:g}"
            raise ValueError(f"--lora '{self.path}:{shown}': the scale {shown} is not allowed; expected a "
                             f"finite number with -{SCALE_LIMIT:g} <= SCALE <= {SCALE_LIMIT:g} (1 applies the LoRA "
                             "as trained)")
        object.__setattr__(self, "scale", scale)

    @classmethod
    def parse(cls, text: str) -> "LoraSpec":
        """``PATH`` or ``PATH:SCALE``."""
        head, separator, tail = str(text).rpartition(":")
        scale = _number(tail) if separator and head else None
        if scale is None:
            if separator and head and Path(head).exists() and not Path(text).exists():
                raise ValueError(f"--lora {text!r}: the scale {tail!r} is not a number; expected PATH or PATH:SCALE "
                                 f"with -{SCALE_LIMIT:g} <= SCALE <= {SCALE_LIMIT:g}")
            return cls(Path(text))
        return cls(Path(head), scale)

    def argument(self) -> str:
        """The ``--lora`` argument that gives this spec back."""
        return f"{self.path}:{self.scale!r}"


def _number(value) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def adapted_fingerprint(base_fingerprint: str, adapters: list[dict]) -> str:
    """The fingerprint of a base model with adapters: the base's when there are none, else a sha256 over the
    base's and each adapter's kind, file sha256 and scale (a LoRA) or token (a textual-inversion embedding), in the
    order they were applied."""
    if not adapters:
        return base_fingerprint
    payload = json.dumps({"base": base_fingerprint, "adapters": [
        {key: a[key] for key in ("kind", "sha256", "scale", "token") if key in a} for a in adapters]}, sort_keys=True)
    return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()


def load_loras(pipeline, specs: list[LoraSpec], allow_pickle: bool, family: str) -> list[dict]:
    """Load every adapter onto ``pipeline`` (diffusers' loader), weight them, and return what a certificate records
    of each: file, sha256, layout, scale, the modules it holds and the modules it adapted per component."""
    if not specs:
        return []
    if not hasattr(pipeline, "load_lora_weights"):
        raise ModelLoadError(f"--lora: the {type(pipeline).__name__} pipeline ({family}) has no LoRA loader in this "
                             "diffusers version")
    records = [_load_one(pipeline, spec, f"lora{index}", allow_pickle, family) for index, spec in enumerate(specs)]
    pipeline.set_adapters([record["adapter_name"] for record in records],
                          adapter_weights=[record["scale"] for record in records])
    return records


def _load_one(pipeline, spec: LoraSpec, adapter_name: str, allow_pickle: bool, family: str) -> dict:
    path, what = spec.path, f"--lora {str(spec.path)!r}"
    check_adapter_file(path, what, allow_pickle, "a LoRA .safetensors file (diffusers/PEFT or kohya layout)")
    keys = _tensor_names(path)
    modules = _lora_modules(keys, what)
    try:
        with _quiet_diffusers():
            pipeline.load_lora_weights(str(path), adapter_name=adapter_name)
    except Exception as error:  # diffusers and peft raise many kinds for a file that does not fit the model
        if type(error).__name__ == "NoMatchingPeftModuleError":  # peft's word for "no target module exists"
            raise ModelLoadError(_unmatched(what, modules, 0, pipeline, family)) from None
        raise ModelLoadError(f"{what} does not fit MODEL ({family}, {type(pipeline).__name__}): "
                             f"{_fit_failure(error)}") from None
    adapted, targets = _adapted_modules(pipeline, adapter_name)
    if adapted < modules:
        raise ModelLoadError(_unmatched(what, modules, adapted, pipeline, family))
    return {"kind": "lora", "path": str(path), "sha256": file_sha256(path), "layout": _layout(keys), "scale": spec.scale,
            "adapter_name": adapter_name, "modules": modules, "adapted_modules": adapted, "targets": targets}


@contextlib.contextmanager
def _quiet_diffusers():
    """diffusers warns, for each text encoder a LoRA leaves alone, that it found no keys for it, and logs a failed
    load before raising it; verifier counts what was adapted itself (``_adapted_modules``) and names a failure in
    its own error, so those lines would only bury its own."""
    import diffusers.utils.logging

    level = diffusers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity(diffusers.utils.logging.CRITICAL)  # a failure is re-raised, named, below
    try:
        yield
    finally:
        diffusers.utils.logging.set_verbosity(level)


def _tensor_names(path: Path) -> list[str]:
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several kinds for a file that is not a state dict
        raise ModelLoadError(f"--lora {str(path)!r} is not a torch state dict: {type(error).__name__}: {error}"
                             ) from None
    if not isinstance(state, dict):
        raise ModelLoadError(f"--lora {str(path)!r} holds a {type(state).__name__}, not a state dict of tensors")
    return [str(key) for key in state]


def _lora_modules(keys: list[str], what: str) -> int:
    """How many LoRA modules (a down and an up factor) the file holds; a factor without its pair is refused."""
    def modules(suffixes):
        return {key[:-len(suffix)] for key in keys for suffix in suffixes if key.endswith(suffix)}

    down, up = modules(DOWN_SUFFIXES), modules(UP_SUFFIXES)
    if not down and not up:
        raise ModelLoadError(f"{what} holds no LoRA weights (no tensor ends in lora_down/lora_up, lora.down/lora.up "
                             "or lora_A/lora_B); it is not a LoRA file")
    unpaired = sorted(down ^ up)
    if unpaired:
        raise ModelLoadError(f"{what} is damaged: {len(unpaired)} LoRA module(s) have one factor without the other "
                             f"(e.g. {unpaired[0]!r})")
    return len(down)


def _layout(keys: list[str]) -> str:
    if any(key.startswith(KOHYA_PREFIXES) for key in keys):
        return "kohya"
    if any(key.startswith(DIFFUSERS_PREFIXES) for key in keys):
        return "diffusers"
    return "other"


def _adapted_modules(pipeline, adapter_name: str) -> tuple[int, dict[str, list[str]]]:
    """The modules peft adapted for ``adapter_name`` (all components), and its target module names per component."""
    import torch
    from peft.tuners.lora import LoraLayer

    count, targets = 0, {}
    for name, component in pipeline.components.items():
        if not isinstance(component, torch.nn.Module):
            continue
        layers = [m for m in component.modules() if isinstance(m, LoraLayer) and adapter_name in m.lora_A]
        if layers:
            count += len(layers)
            modules = component.peft_config[adapter_name].target_modules
            targets[name] = [modules] if isinstance(modules, str) else sorted(modules)
    return count, targets


def _unmatched(what: str, modules: int, adapted: int, pipeline, family: str) -> str:
    model = f"MODEL ({family}, {type(pipeline).__name__})"
    if not adapted:
        return f"{what} holds {modules} LoRA modules, of which none name a module of {model}. Is it a LoRA for another " \
               "family or architecture?"
    return (f"{what} holds {modules} LoRA modules, of which diffusers adapted only {adapted} in {model} and would drop "
            "the rest without a word: they name no module of it, or use a key layout diffusers did not convert (a "
            "file mixing lora.down/lora.up keys with lora_A/lora_B keys loads only the latter)")


def _fit_failure(error: Exception) -> str:
    """diffusers' message in one line: the first size mismatch for a LoRA of another architecture."""
    message = str(error)
    mismatch = next((line.strip() for line in message.splitlines() if "size mismatch" in line), None)
    if mismatch:
        return f"its weights are shaped for another architecture ({mismatch})"
    return f"{type(error).__name__}: {message.splitlines()[0] if message else ''}"

