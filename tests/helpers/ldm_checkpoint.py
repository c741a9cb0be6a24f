"""Write a diffusers SD or SDXL folder as one original-layout (LDM / SGM) ``.safetensors`` checkpoint.

Single-file checkpoints (``model.diffusion_model.*``, ``first_stage_model.*``,
``cond_stage_model.transformer.*``) are how most Stable Diffusion fine-tunes are shared. The tests
need one to exercise ``diffusers``' single-file loading, and no such file can be downloaded here,
so this helper lays the project's own models out in that format. It covers the architectures the
tests build (UNet down/up blocks with or without cross-attention, a VAE without mid-block
attention) and refuses anything else rather than writing a wrong file.

SDXL (``write_sdxl_single_file``) is written in the original SGM layout, the inverse of what
``diffusers.loaders.single_file_utils`` reads: the UNet with SDXL's ``text_time`` added
conditioning (``add_embedding`` -> ``label_emb.0.{0,2}``), ``text_encoder`` as an HF CLIP under
``conditioner.embedders.0.transformer.text_model.*`` and ``text_encoder_2`` in OpenCLIP layout
under ``conditioner.embedders.1.model.*`` (q/k/v merged into ``in_proj_weight``/``in_proj_bias``,
``resblocks``, ``ln_final``, ``text_projection`` transposed, ``positional_embedding``,
``token_embedding``). OpenCLIP's ``logit_scale`` (unused by diffusers) is not written.
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
    # SDXL's add_embedding (text_time added conditioning) is the original label_emb, as diffusers maps it.
    text_time = config.get("addition_embed_type") == "text_time"
    added = DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"] if text_time else {}
    per = config["layers_per_block"] + 1
    with_attention = {int(m.group(1)) for k in state if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))}
    out = {}
    for key, value in state.items():
        if key in top:
            new = top[key]
        elif key in added:
            new = added[key]
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
    """Save ``folder`` (a diffusers SD or SDXL folder) as one original-layout safetensors checkpoint at ``out``.

    The layout follows the pipeline class ``model_index.json`` names; other pipelines are refused.
    """
    import json

    from safetensors.torch import load_file, save_file

    class_name = json.loads((folder / "model_index.json").read_text()).get("_class_name")
    if class_name == "StableDiffusionXLPipeline":
        return write_sdxl_single_file(folder, out)
    if class_name != "StableDiffusionPipeline":
        raise ValueError(f"{folder}: model_index.json names {class_name!r}; this helper writes only "
                         "StableDiffusionPipeline and StableDiffusionXLPipeline folders")
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


# --- SDXL (original SGM layout) -------------------------------------------------------------------

SDXL_CLIP = "conditioner.embedders.0.transformer."  # text_encoder: HF CLIPTextModel names
SDXL_OPEN_CLIP = "conditioner.embedders.1.model."  # text_encoder_2: OpenCLIP names
OPEN_CLIP_LAYER = (("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."), ("mlp.fc1.", "mlp.c_fc."),
                   ("mlp.fc2.", "mlp.c_proj."), ("self_attn.out_proj.", "attn.out_proj."))


def _with_text_model(key: str) -> str:
    """HF CLIP names as original checkpoints carry them: transformers 4's ``text_model.*`` (5.x flattens some)."""
    return key if key.startswith("text_model.") else "text_model." + key


def open_clip_to_ldm(state: dict[str, torch.Tensor], prefix: str = SDXL_OPEN_CLIP) -> dict[str, torch.Tensor]:
    """A ``CLIPTextModelWithProjection`` state dict in OpenCLIP layout, the inverse of diffusers' conversion.

    ``convert_open_clip_checkpoint`` splits ``in_proj_*`` into q, k, v at ``text_projection.shape[0]``
    (the original ``text_projection`` is ``(hidden, projection)``, the transpose of the HF weight), so
    the merged rows are q, k, v in that order, each ``hidden`` wide.
    """
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    top = DIFFUSERS_TO_LDM_MAPPING["openclip"]["layers"]
    if "text_projection.weight" not in state:
        raise ValueError("text_encoder_2 has no text_projection.weight: SDXL's second encoder is a "
                         "CLIPTextModelWithProjection")
    hidden = state["text_projection.weight"].shape[1]
    out, merged = {}, {}
    for raw_key, value in state.items():
        key = raw_key if raw_key == "text_projection.weight" else _with_text_model(raw_key)
        if key in top:
            out[prefix + top[key]] = value.T if key == "text_projection.weight" else value
        elif m := re.match(r"text_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", key):
            merged.setdefault((int(m[1]), m[3]), {})[m[2]] = value
        elif m := re.match(r"text_model\.encoder\.layers\.(\d+)\.(.+)", key):
            rest = next((old + m[2][len(new):] for new, old in OPEN_CLIP_LAYER if m[2].startswith(new)), None)
            if rest is None:
                raise ValueError(f"text_encoder_2 parameter {raw_key!r} has no OpenCLIP name in this helper")
            out[f"{prefix}transformer.resblocks.{m[1]}.{rest}"] = value
        else:
            raise ValueError(f"text_encoder_2 parameter {raw_key!r} has no OpenCLIP name in this helper")
    for (layer, kind), parts in sorted(merged.items()):
        if sorted(parts) != ["k", "q", "v"] or any(part.shape[0] != hidden for part in parts.values()):
            raise ValueError(f"text_encoder_2 layer {layer}: q/k/v {kind}s must all be present and {hidden} rows "
                             "wide to merge into OpenCLIP's in_proj")
        out[f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def write_sdxl_single_file(folder: Path, out: Path) -> Path:
    """Save ``folder`` (a diffusers SDXL base folder) as one SGM-layout safetensors checkpoint at ``out``.

    diffusers' ``create_diffusers_clip_model_from_ldm`` chooses what each text encoder reads by
    width: a component whose hidden size equals that of ``conditioner.embedders.0``'s position
    embedding is given embedder 0's (HF CLIP) weights, whichever component it is. Real SDXL has
    768 and 1280; a folder whose two encoders are equally wide would load ``text_encoder_2`` with
    ``text_encoder``'s weights, so it is refused.
    """
    import json

    from safetensors.torch import load_file, save_file

    def config(name: str) -> dict:
        return json.loads((folder / name / "config.json").read_text())

    def weights(name: str, file: str) -> dict[str, torch.Tensor]:
        path = folder / name / file
        if not path.is_file():
            raise ValueError(f"{folder}: {name}/{file} is missing; this helper reads one unsharded safetensors "
                             "file per component")
        return load_file(path)

    index = json.loads((folder / "model_index.json").read_text())
    expected = {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL", "text_encoder": "CLIPTextModel",
                "text_encoder_2": "CLIPTextModelWithProjection"}
    for name, class_name in expected.items():
        if (index.get(name) or [None, None])[1] != class_name:
            raise ValueError(f"{folder}: {name} is {index.get(name)!r}; this helper writes SDXL base folders "
                             f"({', '.join(f'{n}={c}' for n, c in expected.items())})")
    carried = set(expected) | {"tokenizer", "tokenizer_2", "scheduler"}
    extra = [name for name, value in index.items() if not name.startswith("_") and isinstance(value, list)
             and value[0] is not None and name not in carried]
    if extra:
        raise ValueError(f"{folder}: the component(s) {', '.join(extra)} have no place in an SDXL single file")
    unet_config = config("unet")
    if unet_config.get("addition_embed_type") != "text_time" or unet_config.get("class_embed_type") is not None:
        raise ValueError(f"{folder}: the UNet's addition_embed_type is {unet_config.get('addition_embed_type')!r} "
                         f"and class_embed_type {unet_config.get('class_embed_type')!r}; SDXL base has 'text_time' "
                         "and none")
    widths = {name: config(name)["hidden_size"] for name in ("text_encoder", "text_encoder_2")}
    if widths["text_encoder"] == widths["text_encoder_2"]:
        raise ValueError(f"{folder}: text_encoder and text_encoder_2 are both {widths['text_encoder']} wide; "
                         "diffusers' single-file loader tells them apart by width "
                         "(create_diffusers_clip_model_from_ldm), so text_encoder_2 would load text_encoder's weights")
    text = weights("text_encoder", "model.safetensors")
    checkpoint = {
        **unet_to_ldm(weights("unet", "diffusion_pytorch_model.safetensors"), unet_config),
        **vae_to_ldm(weights("vae", "diffusion_pytorch_model.safetensors"), config("vae")),
        **{SDXL_CLIP + _with_text_model(key): value for key, value in text.items()},
        **open_clip_to_ldm(weights("text_encoder_2", "model.safetensors")),
    }
    save_file({key: value.contiguous() for key, value in checkpoint.items()}, out)
    return out
