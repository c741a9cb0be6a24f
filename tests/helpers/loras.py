"""Seeded random LoRA files for the tiny pipelines (``helpers.tiny_models``), written with peft and diffusers'
own ``save_lora_weights`` (diffusers layout) or converted with diffusers' ``convert_state_dict_to_kohya``."""

from __future__ import annotations

from pathlib import Path

import torch

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")


def write_tiny_lora(model: Path, out: Path, seed: int = 0, rank: int = 4, std: float = 0.3,
                    targets: tuple[str, ...] = ATTENTION, layout: str = "diffusers") -> Path:
    """A LoRA of rank ``rank`` on ``targets`` of ``model``'s denoiser (both factors random, so it changes the
    output), saved as ``out`` (a .safetensors file) in the diffusers or the kohya layout."""
    import diffusers
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
    from peft import LoraConfig, get_peft_model_state_dict
    from safetensors.torch import save_file

    pipeline_class = getattr(diffusers, _pipeline_class(model))
    pipeline = pipeline_class.from_pretrained(model, local_files_only=True)
    name = "unet" if hasattr(pipeline, "unet") and pipeline.unet is not None else "transformer"
    denoiser = getattr(pipeline, name)
    torch.manual_seed(seed)
    denoiser.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=list(targets)))
    for parameter_name, parameter in denoiser.named_parameters():
        if "lora_" in parameter_name:
            torch.nn.init.normal_(parameter, std=std)
    layers = get_peft_model_state_dict(denoiser)
    out.parent.mkdir(parents=True, exist_ok=True)
    if layout == "kohya":
        save_file({k: v.contiguous() for k, v in convert_state_dict_to_kohya(
            {f"{name}.{key}": value for key, value in layers.items()}).items()}, str(out))
        return out
    pipeline_class.save_lora_weights(out.parent, weight_name=out.name, safe_serialization=True,
                                     **{f"{name}_lora_layers": convert_state_dict_to_diffusers(layers)})
    return out


def _pipeline_class(model: Path) -> str:
    import json

    return json.loads((Path(model) / "model_index.json").read_text())["_class_name"]


def denoiser_prediction(adapter):
    """A loaded model's denoiser output on one fixed image, noise draw, timestep and the empty conditioning: equal
    outputs mean the same denoiser."""
    import torch

    generator = torch.Generator().manual_seed(0)
    image = torch.rand(adapter.resolution, adapter.resolution, 3, generator=generator).numpy()
    with torch.no_grad():
        z0 = adapter.encode_images([image])
        noise = torch.randn(z0.shape, generator=generator).to(z0.device)
        timesteps = torch.tensor([adapter.objective.grid(4)[1]], device=z0.device)
        return adapter.predict(adapter.objective.noisy(z0, noise, timesteps), timesteps, adapter.empty_conditioning())
