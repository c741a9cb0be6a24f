"""Write a diffusers Stable Diffusion folder as one original-layout (LDM) ``.safetensors`` checkpoint.

Single-file checkpoints (``model.diffusion_model.*``, ``first_stage_model.*``,
``cond_stage_model.transformer.*``) are how most Stable Diffusion fine-tunes are shared. The tests
need one to exercise ``diffusers``' single-file loading, and no such file can be downloaded here,
so this helper lays the project's own models out in that format. It covers the architectures the
tests build (UNet down/up blocks with or without cross-attention, a VAE without mid-block
attention) and refuses anything else rather than writing a wrong file.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

RESNET_TO_LDM = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                 ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))


def _resnet(suffix: str) -> str:
    for new, old in RESNET_TO_LDM:
        if suffix.startswith(new + "."):
            return old + suffix[len(new):]
    raise ValueError(f"unexpected resnet parameter {suffix!r}")


def unet_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    top = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
    per = config["layers_per_block"] + 1
    with_attention = {int(m.group(1)) for k in state if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))}
    out = {}
    for key, value in state.items():
        if key in top:
            new = top[key]
        elif m := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"input_blocks.{per * int(m[1]) + int(m[2]) + 1}.0.{_resnet(m[3])}"
        elif m := re.match(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
            new = f"input_blocks.{per * int(m[1]) + int(m[2]) + 1}.1.{m[3]}"
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            new = f"input_blocks.{per * (int(m[1]) + 1)}.0.op.{m[2]}"
        elif m := re.match(r"mid_block\.resnets\.(\d+)\.(.+)", key):
            new = f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
        elif m := re.match(r"mid_block\.attentions\.0\.(.+)", key):
            new = f"middle_block.1.{m[1]}"
        elif m := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"output_blocks.{per * int(m[1]) + int(m[2])}.0.{_resnet(m[3])}"
        elif m := re.match(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
            new = f"output_blocks.{per * int(m[1]) + int(m[2])}.1.{m[3]}"
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            slot = 2 if int(m[1]) in with_attention else 1
            new = f"output_blocks.{per * int(m[1]) + per - 1}.{slot}.conv.{m[2]}"
        else:
            raise ValueError(f"UNet parameter {key!r} has no original-layout name in this helper")
        out["model.diffusion_model." + new] = value
    return out


def vae_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    top = DIFFUSERS_TO_LDM_MAPPING["vae"]
    blocks = len(config["up_block_types"])
    out = {}
    for key, value in state.items():
        if key in top:
            new = top[key]
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            new = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"decoder.up.{blocks - 1 - int(m[1])}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            new = f"decoder.up.{blocks - 1 - int(m[1])}.upsample.conv.{m[2]}"
        else:
            raise ValueError(f"VAE parameter {key!r} has no original-layout name in this helper")
        out["first_stage_model." + new] = value
    return out


def write_single_file(folder: Path, out: Path) -> Path:
    """Save ``folder`` (a diffusers SD folder) as one LDM-layout safetensors checkpoint at ``out``."""
    import json

    from safetensors.torch import load_file, save_file

    unet = load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
    vae = load_file(folder / "vae" / "diffusion_pytorch_model.safetensors")
    text = load_file(folder / "text_encoder" / "model.safetensors")
    checkpoint = {
        **unet_to_ldm(unet, json.loads((folder / "unet" / "config.json").read_text())),
        **vae_to_ldm(vae, json.loads((folder / "vae" / "config.json").read_text())),
        # Original checkpoints carry transformers 4's names (text_model.*); transformers 5 saves without the prefix.
        **{f"cond_stage_model.transformer.{key if key.startswith('text_model.') else 'text_model.' + key}": value
           for key, value in text.items()},
    }
    save_file({key: value.contiguous() for key, value in checkpoint.items()}, out)
    return out
