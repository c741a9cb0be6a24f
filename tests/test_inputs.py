"""Config merging and every bad input: each gets a message naming the argument, value and what is allowed."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from helpers.images import textured
from helpers.tiny_models import build_tiny_pipeline
from verifier.config import ConfigError, VerifierConfig, build_config
from verifier.images import ImageInputError, collect_images, prepare_image
from verifier.models import ModelLoadError, load_model

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


# --- config -----------------------------------------------------------------------------------

def test_cli_beats_file_beats_defaults(tmp_path):
    file = tmp_path / "run.toml"
    file.write_text('description = "a preset"\ngenerations = 32\nseed = 5\nguidance_scales = [2, 4]\n')
    config = build_config(file, {"seed": 9, "generations": None})
    assert config.generations == 32  # file over default
    assert config.seed == 9  # command line over file
    assert config.guidance_scales == (2.0, 4.0)
    assert config.inversion_steps == VerifierConfig().inversion_steps  # default kept
    json_file = tmp_path / "run.json"
    json_file.write_text(json.dumps({"similarity": "lpips"}))
    assert build_config(json_file).similarity == "lpips"


def test_unknown_key_gets_a_suggestion(tmp_path):
    file = tmp_path / "run.toml"
    file.write_text("genrations = 4\n")
    with pytest.raises(ConfigError, match=r"unknown key 'genrations'; did you mean 'generations'\?"):
        build_config(file)
    with pytest.raises(ConfigError, match="unknown key 'sed'; did you mean 'seed'"):
        build_config(None, {"sed": 1})


@pytest.mark.parametrize(("key", "value", "message"), [
    ("generations", 0, "generations=0 is not allowed: expected an integer from 1 to 10000"),
    ("generations", 2.5, "generations=2.5 is not allowed: expected an integer"),
    ("sampling_doublings", -1, "sampling_doublings=-1 is not allowed: expected an integer from 0 to 10"),
    ("sampling_doublings", 10, "sampling_doublings=10 is not allowed: expected an integer from 0 to 10 with "
                               "generations x 2"),  # 16 x 2^10 seeds would pass the cap
    ("similarity", "psnr", "similarity='psnr' is not allowed: expected one of lpips, sscd, ssim"),
    ("inversion_space", "pixels", "inversion_space='pixels' is not allowed: expected one of hidden_states, shared_token_embeddings, token_embeddings"),
    ("dtype", "float64", "dtype='float64' is not allowed: expected one of float32, float16, bfloat16"),
    ("error_form", "eps", "error_form='eps' is not allowed: expected one of native, x0"),
    ("flow_timestep_density", "lognorm", "flow_timestep_density='lognorm' is not allowed: expected one of "
                                         "logit_normal, uniform"),
    ("inversion_max_steps", 30, "inversion_max_steps=30 is not allowed: expected an integer from inversion_steps "
                                "(60) to 100000, or unset for 4 x inversion_steps"),
    ("inversion_min_drop", 1.5, "inversion_min_drop=1.5 is not allowed: expected a number in [0, 1)"),
    ("inversion_check_every", 0, "inversion_check_every=0 is not allowed: expected an integer from 1 to 100000"),
    ("framing_steps", 0, "framing_steps=0 is not allowed: expected an integer from 1 to 100000"),
    ("guidance_scales", [0.5], "guidance_scales=(0.5,) is not allowed"),
    ("confidence", 1.0, "confidence=1.0 is not allowed"),
    ("resolution", 30, "resolution=30 is not allowed: expected a multiple of 8"),
    ("fail_on", "always", "fail_on='always' is not allowed"),
    ("denoiser_batch", 0, "denoiser_batch=0 is not allowed: expected an integer from 1 to 4096, or unset to choose "
                          "it from the free memory"),
    ("gradient_checkpointing", "yes", "gradient_checkpointing='yes' is not allowed: expected true or false"),
])
def test_bad_config_values_are_named(key, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_config(None, {key: value})


def test_config_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_config(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("generations = \n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        build_config(broken)


def test_shipped_presets_load():
    from pathlib import Path

    from verifier.config import read_config_file, tomllib  # tomli on Python 3.10

    presets = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))
    assert len(presets) >= 8, "configs/ holds the presets"
    for preset in presets:
        config = build_config(preset)
        assert len(tomllib.loads(preset.read_text())["description"]) >= 60, f"{preset.name} states its sources"
        for key, value in read_config_file(preset).items():  # each value the preset sets is the config's
            assert getattr(config, key) == (tuple(value) if isinstance(value, list) else value), (preset.name, key)


# --- images -----------------------------------------------------------------------------------

def test_collect_images_from_files_folders_and_manifests(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    Image.fromarray(textured(0)).save(tmp_path / "a" / "one.png")
    Image.fromarray(textured(1)).save(tmp_path / "a" / "deep" / "two.jpg")
    Image.fromarray(textured(2)).save(tmp_path / "three.png")
    (tmp_path / "list.csv").write_text("path,id\nthree.png,third\n")
    (tmp_path / "list.jsonl").write_text(json.dumps({"path": str(tmp_path / "a" / "one.png")}) + "\n")
    images = collect_images([tmp_path / "a", tmp_path / "list.csv", tmp_path / "list.jsonl"])
    # Folders are walked in sorted path order; the duplicate one.png (from the JSONL) is kept once.
    assert [i.id for i in images] == ["two", "one", "third"]
    assert all(len(i.sha256) == 64 for i in images)


@pytest.mark.parametrize(("setup", "message"), [
    (lambda p: [p / "nope.png"], "'.*nope.png' does not exist"),
    (lambda p: [p / "empty"], "holds no image"),
    (lambda p: [p / "notes.txt"], "is neither an image"),
    (lambda p: [p / "bad.csv"], "needs a 'path' column"),
    (lambda p: [p / "bad.jsonl"], "line 1 is not JSON"),
    (lambda p: [p / "dangling.csv"], "from IMAGES manifest .*dangling.csv' line 2\\) does not exist"),
    (lambda p: [], "no image given"),
])
def test_bad_image_arguments_are_named(tmp_path, setup, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "bad.csv").write_text("file\nx.png\n")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    (tmp_path / "dangling.csv").write_text("path\nmissing.png\n")
    with pytest.raises(ImageInputError, match=message):
        collect_images(setup(tmp_path))


def test_unreadable_image_is_named(tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"not a png")
    with pytest.raises(ImageInputError, match="fake.png' cannot be read as an image"):
        prepare_image(fake, 16)


def test_awkward_image_modes_become_rgb(tmp_path):
    rgb = textured(3, size=32)
    grey = rgb.mean(axis=2).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "palette.png")
    rgba = np.dstack([rgb, np.full(grey.shape, 255, np.uint8)])
    rgba[:16, :, 3] = 0  # transparent top half: composited over white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "deep.png")  # 16-bit greyscale
    for name in ("grey", "palette", "rgba", "deep"):
        array = prepare_image(tmp_path / f"{name}.png", 16)
        assert array.shape == (16, 16, 3) and array.dtype == np.float32 and 0 <= array.min() <= array.max() <= 1
    np.testing.assert_allclose(prepare_image(tmp_path / "deep.png", 16), prepare_image(tmp_path / "grey.png", 16),
                               atol=1 / 255)
    assert prepare_image(tmp_path / "rgba.png", 16)[:7].min() == 1.0


def test_exif_orientation_is_applied(tmp_path):
    array = np.zeros((32, 32, 3), np.uint8)
    array[:, :16] = 255  # left half white
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    shown = prepare_image(tmp_path / "rotated.jpg", 16)
    assert shown[:6].mean() > 0.9 and shown[10:].mean() < 0.1  # displayed: white on top


def test_non_square_images_are_centre_cropped(tmp_path):
    array = np.zeros((20, 40, 3), np.uint8)
    array[:, 10:30] = 255  # the centred square is all white
    Image.fromarray(array).save(tmp_path / "wide.png")
    assert prepare_image(tmp_path / "wide.png", 16).min() == 1.0


# --- model --------------------------------------------------------------------------------------

def test_loads_a_local_folder_and_fingerprints_its_weights(tiny_model):
    first = load_model(tiny_model, device="cpu")
    assert first.kind == "diffusers-folder" and first.resolution == 16 and first.prediction_type == "epsilon"
    assert load_model(tiny_model, device="cpu").fingerprint == first.fingerprint
    assert not any(p.requires_grad for p in first.pipeline.unet.parameters())


def test_fingerprint_changes_with_the_weights(tmp_path):
    one = load_model(build_tiny_pipeline(tmp_path / "one", seed=0), device="cpu").fingerprint
    two = load_model(build_tiny_pipeline(tmp_path / "two", seed=1), device="cpu").fingerprint
    assert one != two


@pytest.mark.parametrize("suffix", [".ckpt", ".bin", ".pt", ".pth"])
def test_pickle_checkpoints_are_refused(tmp_path, suffix):
    checkpoint = tmp_path / f"model{suffix}"
    checkpoint.write_bytes(b"\x80\x04not really")  # never opened: refused by name
    with pytest.raises(ModelLoadError, match=f"is a pickle checkpoint \\({suffix}\\).*--allow-pickle"):
        load_model(checkpoint, device="cpu")


def test_pickle_weights_inside_a_folder_are_refused(tmp_path):
    folder = build_tiny_pipeline(tmp_path / "model")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_name("diffusion_pytorch_model.bin"))
    with pytest.raises(ModelLoadError, match=r"pickle weights \(unet/diffusion_pytorch_model.bin\)"):
        load_model(folder, device="cpu")


@pytest.mark.parametrize(("argument", "message"), [
    ("does/not/exist/here", "does not exist"),
    ("empty-folder", "without model_index.json"),
    ("model.safetensors", "single-file checkpoint: pass --model-config"),
    ("weights.onnx", "file of unknown kind '.onnx'"),
])
def test_bad_model_arguments_are_named(tmp_path, argument, message):
    (tmp_path / "empty-folder").mkdir()
    (tmp_path / "model.safetensors").write_bytes(b"{}")
    (tmp_path / "weights.onnx").write_bytes(b"")
    path = argument if argument.startswith("does/") else str(tmp_path / argument)
    with pytest.raises(ModelLoadError, match=message):
        load_model(path, device="cpu")


def test_hub_id_offline_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(ModelLoadError, match=r"hub id it failed offline \(HF_HUB_OFFLINE=1\)"):
        load_model("someone/some-model", device="cpu")


def test_hub_id_in_the_local_cache_loads_offline(monkeypatch, tmp_path, tiny_model):
    """A hub id whose snapshot is in the Hugging Face cache loads offline, fingerprinted like its folder."""
    import shutil

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    # huggingface_hub reads its cache folder at import; point the already imported constant at ours.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    revision = "0" * 40
    repo = tmp_path / "hub" / "models--someone--tiny-model"
    shutil.copytree(tiny_model, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    from_hub = load_model("someone/tiny-model", device="cpu")
    assert (from_hub.kind, from_hub.family) == ("hub", "sd")
    assert from_hub.fingerprint == load_model(tiny_model, device="cpu").fingerprint


def test_single_file_checkpoint_loads_with_a_local_config_folder(tmp_path, tiny_model):
    import torch
    from helpers.ldm_checkpoint import write_single_file

    checkpoint = write_single_file(tiny_model, tmp_path / "tiny.safetensors")
    from_folder = load_model(tiny_model, device="cpu")
    from_file = load_model(checkpoint, device="cpu", model_config=tiny_model)
    assert from_file.kind == "single-file" and from_file.fingerprint != from_folder.fingerprint
    for name in ("unet", "vae", "text_encoder"):
        folder_state = getattr(from_folder.pipeline, name).state_dict()
        file_state = getattr(from_file.pipeline, name).state_dict()
        assert folder_state.keys() == file_state.keys()
        assert all(torch.equal(folder_state[key], file_state[key]) for key in folder_state), name


def test_foreign_single_file_checkpoint_is_named(tmp_path, tiny_model):
    from safetensors.torch import save_file
    import torch

    save_file({"some.other.weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(ModelLoadError, match="could not load it as a StableDiffusionPipeline checkpoint"):
        load_model(tmp_path / "other.safetensors", device="cpu", model_config=tiny_model)


def test_bad_device_and_dtype(tiny_model):
    with pytest.raises(ModelLoadError, match="--device 'gpu0' is not allowed: expected auto, cpu"):
        load_model(tiny_model, device="gpu0")
    with pytest.raises(ModelLoadError, match="--dtype 'float8' is not supported"):
        load_model(tiny_model, dtype="float8")
