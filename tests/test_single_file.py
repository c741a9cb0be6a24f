"""SDXL single-file checkpoints (original SGM layout) load with a local config folder, bit for bit.

The checkpoint is written by ``ldm_checkpoint.write_sdxl_single_file`` from the tiny SDXL folder of
``tiny_models``, whose two text encoders have different widths (as SDXL's 768 and 1280): diffusers'
single-file loader (``create_diffusers_clip_model_from_ldm``) tells ``text_encoder`` and
``text_encoder_2`` apart only by width.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from helpers.ldm_checkpoint import write_single_file
from helpers.tiny_models import build_tiny_pipeline
from verifier.models import ModelLoadError, load_model

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory):
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny-sdxl") / "model", family="sdxl")


@pytest.fixture(scope="module")
def sdxl_checkpoint(tmp_path_factory, sdxl_folder):
    return write_single_file(sdxl_folder, tmp_path_factory.mktemp("sdxl-file") / "tiny-sdxl.safetensors")


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd") / "model")


def test_sdxl_single_file_is_in_the_original_sgm_layout(sdxl_folder, sdxl_checkpoint):
    from diffusers.loaders.single_file_utils import (is_clip_model, is_clip_sdxl_model, is_open_clip_model,
                                                     is_open_clip_sdxl_model)
    from safetensors.torch import load_file

    checkpoint = load_file(sdxl_checkpoint)
    assert is_clip_sdxl_model(checkpoint) and is_open_clip_sdxl_model(checkpoint)
    assert not is_clip_model(checkpoint) and not is_open_clip_model(checkpoint)  # no SD 1.x / 2.x encoder names
    prefixes = ("model.diffusion_model.", "first_stage_model.", "conditioner.embedders.0.transformer.text_model.",
                "conditioner.embedders.1.model.")
    assert all(key.startswith(prefixes) for key in checkpoint)
    assert all(any(key.startswith(prefix) for key in checkpoint) for prefix in prefixes)
    label_emb = "model.diffusion_model.label_emb.0."
    assert {label_emb + f"{layer}.{kind}" for layer in (0, 2) for kind in ("weight", "bias")} <= checkpoint.keys()
    open_clip = "conditioner.embedders.1.model."
    assert checkpoint[open_clip + "transformer.resblocks.1.attn.in_proj_weight"].shape == (3 * 32, 32)
    assert checkpoint[open_clip + "transformer.resblocks.1.attn.in_proj_bias"].shape == (3 * 32,)
    assert {open_clip + name for name in ("positional_embedding", "token_embedding.weight", "ln_final.weight",
                                          "transformer.resblocks.0.mlp.c_fc.weight")} <= checkpoint.keys()
    assert not any("q_proj" in key or "self_attn" in key for key in checkpoint if key.startswith(open_clip))
    projection = load_file(sdxl_folder / "text_encoder_2" / "model.safetensors")["text_projection.weight"]
    assert torch.equal(checkpoint[open_clip + "text_projection"], projection.T)


def test_sdxl_single_file_loads_with_a_local_config_folder(sdxl_folder, sdxl_checkpoint):
    from_folder = load_model(sdxl_folder, device="cpu")
    from_file = load_model(sdxl_checkpoint, device="cpu", model_config=sdxl_folder)
    assert from_file.family == "sdxl" and from_file.kind == "single-file"
    assert from_file.fingerprint != from_folder.fingerprint and from_file.resolution == from_folder.resolution
    for name in COMPONENTS:
        folder_state = getattr(from_folder.pipeline, name).state_dict()
        file_state = getattr(from_file.pipeline, name).state_dict()
        assert folder_state.keys() == file_state.keys(), name
        assert all(torch.equal(folder_state[key], file_state[key]) for key in folder_state), name


def test_sdxl_pickle_checkpoint_is_refused_without_allow_pickle(tmp_path, sdxl_folder, sdxl_checkpoint):
    from safetensors.torch import load_file

    pickled = tmp_path / "tiny-sdxl.ckpt"
    torch.save({"state_dict": load_file(sdxl_checkpoint)}, pickled)
    with pytest.raises(ModelLoadError, match=r"is a pickle checkpoint \(\.ckpt\).*--allow-pickle"):
        load_model(pickled, device="cpu", model_config=sdxl_folder)
    loaded = load_model(pickled, device="cpu", model_config=sdxl_folder, allow_pickle=True)
    assert loaded.family == "sdxl" and loaded.kind == "single-file"


@pytest.mark.parametrize(("checkpoint_family", "config_family", "pipeline", "mismatch"), [
    # SD's UNet cross-attends to 16-wide text features; the SDXL file's attn2.to_k takes 16 + 32.
    ("sdxl", "sd", "StableDiffusionPipeline", r"attn2\.to_k\.weight expected shape torch\.Size\(\[32, 16\]\), "
                                              r"but got torch\.Size\(\[32, 48\]\)"),
    # The SD file's only CLIP (cond_stage_model) is offered to text_encoder_2, which is 32 wide.
    ("sd", "sdxl", "StableDiffusionXLPipeline", r"position_embedding\.weight expected shape torch\.Size\(\[77, 32\]\), "
                                                r"but got torch\.Size\(\[77, 16\]\)"),
])
def test_single_file_of_the_other_family_is_named(tmp_path, sd_folder, sdxl_folder, sdxl_checkpoint,
                                                  checkpoint_family, config_family, pipeline, mismatch):
    folders = {"sd": sd_folder, "sdxl": sdxl_folder}
    checkpoint = sdxl_checkpoint if checkpoint_family == "sdxl" else write_single_file(sd_folder,
                                                                                       tmp_path / "sd.safetensors")
    with pytest.raises(ModelLoadError, match=f"{pipeline} checkpoint.*{mismatch}"):
        load_model(checkpoint, device="cpu", model_config=folders[config_family])


def test_writer_refuses_what_diffusers_would_load_wrongly(tmp_path, sdxl_folder):
    folder = tmp_path / "equal-widths"
    shutil.copytree(sdxl_folder, folder)
    config_file = folder / "text_encoder_2" / "config.json"
    config_file.write_text(json.dumps(json.loads(config_file.read_text()) | {"hidden_size": 16}))
    with pytest.raises(ValueError, match="both 16 wide.*text_encoder_2 would load text_encoder's weights"):
        write_single_file(folder, tmp_path / "x.safetensors")
    index_file = folder / "model_index.json"
    index_file.write_text(json.dumps(json.loads(index_file.read_text()) | {"_class_name": "FluxPipeline"}))
    with pytest.raises(ValueError, match="names 'FluxPipeline'; this helper writes only"):
        write_single_file(folder, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_sdxl_single_file_missing_a_tensor_is_named(tmp_path, sdxl_folder, sdxl_checkpoint):
    """diffusers leaves a tensor the file lacks on the meta device without a word; verifier names it."""
    from safetensors.torch import load_file, save_file

    state = load_file(sdxl_checkpoint)
    del state["conditioner.embedders.1.model.ln_final.weight"]
    save_file(state, tmp_path / "partial.safetensors")
    with pytest.raises(ModelLoadError, match=r"the checkpoint lacks 1 of text_encoder_2's tensors \(e.g. "
                                             r"text_model.final_layer_norm.weight\); it is incomplete"):
        load_model(tmp_path / "partial.safetensors", device="cpu", model_config=sdxl_folder)
