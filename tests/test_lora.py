"""LoRA adapters on the model under test (``--lora PATH[:SCALE]``, ``verifier.models.lora``): loaded with diffusers'
own loader on every family, recorded in the fingerprint and the certificate, re-checked by ``verify``, and every
file that does not fit refused by name before an image is certified."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from helpers.images import write_images
from helpers.loras import denoiser_prediction, write_tiny_lora
from helpers.tiny_models import FAMILIES, TEST_DEVICE, build_tiny_pipeline
from verifier.cli import main
from verifier.config import VerifierConfig
from verifier.models import ModelLoadError, load_model
from verifier.models.lora import LoraSpec
from verifier.verify import verify

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

FAST = VerifierConfig(inversion_steps=3, framing_steps=3, inversion_noise_draws=2, error_timesteps=3,
                      error_noise_draws=2, generations=2, guidance_scales=(1.0, 2.0), sampling_steps=3,
                      framing_search=False, device=TEST_DEVICE)


@pytest.fixture(scope="module")
def loras(tiny_model, tmp_path_factory):
    """The same random LoRA on the tiny SD model in the diffusers and the kohya layout, and another one."""
    folder = tmp_path_factory.mktemp("loras")
    return {"diffusers": write_tiny_lora(tiny_model, folder / "style.safetensors"),
            "kohya": write_tiny_lora(tiny_model, folder / "style_kohya.safetensors", layout="kohya"),
            "other": write_tiny_lora(tiny_model, folder / "other.safetensors", seed=1)}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_lora_is_loaded_as_stock_diffusers_loads_it_and_recorded(family, tmp_path):
    """On every family: the adapted denoiser is the stock pipeline's after ``load_lora_weights`` + ``set_adapters``
    (the witness recipe's two lines), differs from the base, and equals it at scale 0; the record names the file,
    its layout, scale and modules, and the fingerprint covers it."""
    import diffusers

    model = build_tiny_pipeline(tmp_path / "model", family=family)
    lora = write_tiny_lora(model, tmp_path / "lora.safetensors")
    base = load_model(model, device=TEST_DEVICE)
    adapted = load_model(model, device=TEST_DEVICE, loras=[LoraSpec(lora, 0.7)])
    muted = load_model(model, device=TEST_DEVICE, loras=[LoraSpec(lora, 0.0)])

    stock = getattr(diffusers, base.pipeline_class).from_pretrained(model, local_files_only=True).to(TEST_DEVICE)
    stock.load_lora_weights(str(lora), adapter_name="lora0")
    stock.set_adapters(["lora0"], adapter_weights=[0.7])
    base.pipeline = stock  # the same adapter code over the stock pipeline with the LoRA loaded by hand
    expected = denoiser_prediction(base)
    torch.testing.assert_close(denoiser_prediction(adapted), expected)
    plain = denoiser_prediction(load_model(model, device=TEST_DEVICE))
    assert (denoiser_prediction(adapted) - plain).abs().max() > 1e-3
    torch.testing.assert_close(denoiser_prediction(muted), plain)

    record = adapted.describe()
    assert record["base_fingerprint"] == load_model(model, device=TEST_DEVICE).fingerprint != record["fingerprint"]
    [adapter] = record["adapters"]
    assert adapter["sha256"] == __import__("hashlib").sha256(lora.read_bytes()).hexdigest()
    assert (adapter["kind"], adapter["layout"], adapter["scale"], adapter["adapter_name"]) == \
        ("lora", "diffusers", 0.7, "lora0")
    assert adapter["modules"] == adapter["adapted_modules"] > 0
    denoiser = "unet" if family in ("sd", "sdxl") else "transformer"
    assert list(adapter["targets"]) == [denoiser]
    # Another scale is another model under test.
    assert muted.fingerprint not in (adapted.fingerprint, record["base_fingerprint"])


def test_the_kohya_layout_gives_the_same_model(tiny_model, loras):
    diffusers_layout = load_model(tiny_model, device=TEST_DEVICE, loras=[LoraSpec(loras["diffusers"])])
    kohya_layout = load_model(tiny_model, device=TEST_DEVICE, loras=[LoraSpec(loras["kohya"])])
    assert kohya_layout.adapters[0]["layout"] == "kohya"
    assert kohya_layout.adapters[0]["modules"] == diffusers_layout.adapters[0]["modules"]
    torch.testing.assert_close(denoiser_prediction(kohya_layout), denoiser_prediction(diffusers_layout))


def test_two_loras_are_applied_in_order_with_their_scales(tiny_model, loras):
    both = load_model(tiny_model, device=TEST_DEVICE,
                      loras=[LoraSpec(loras["diffusers"], 0.5), LoraSpec(loras["other"], 1.0)])
    assert [(a["adapter_name"], a["scale"]) for a in both.adapters] == [("lora0", 0.5), ("lora1", 1.0)]
    swapped = load_model(tiny_model, device=TEST_DEVICE,
                         loras=[LoraSpec(loras["other"], 1.0), LoraSpec(loras["diffusers"], 0.5)])
    assert swapped.fingerprint != both.fingerprint  # the order is part of what was tested
    one = load_model(tiny_model, device=TEST_DEVICE, loras=[LoraSpec(loras["diffusers"], 0.5)])
    assert (denoiser_prediction(both) - denoiser_prediction(one)).abs().max() > 1e-3


def _rewrite(source: Path, target: Path, edit) -> Path:
    tensors = load_file(str(source))
    save_file(edit(dict(tensors)), str(target))
    return target


def _bad_files(tiny_model, loras, folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what the error must say)."""
    first = sorted(load_file(str(loras["diffusers"])))[0]
    module = first.rsplit(".lora", 1)[0]
    sdxl = build_tiny_pipeline(folder / "sdxl", family="sdxl")
    torch.save({"unet.a.lora.down.weight": torch.zeros(2, 2)}, folder / "pickled.bin")
    shutil.copy(folder / "pickled.bin", folder / "pickle_named.safetensors")
    return {
        "another architecture": (write_tiny_lora(sdxl, folder / "sdxl_lora.safetensors"),
                                 r"does not fit MODEL \(sd, StableDiffusionPipeline\): its weights are shaped for "
                                 r"another architecture \(size mismatch"),
        "no module matches": (_rewrite(loras["diffusers"], folder / "elsewhere.safetensors", lambda t: {
            k.replace("unet.", "unet.nowhere_"): v for k, v in t.items()}), r"holds 32 LoRA modules, of which none "
                                                                          r"name a module of MODEL"),
        "some modules match": (_rewrite(loras["diffusers"], folder / "partly.safetensors", lambda t: {
            k.replace(module, module.replace("unet.", "unet.nowhere_")): v for k, v in t.items()}),
            r"holds 32 LoRA modules, of which diffusers adapted only 31 in MODEL \(sd, StableDiffusionPipeline\) and "
            r"would drop the rest without a word"),
        # diffusers' own convert_state_dict_to_diffusers writes attention factors as lora.down/up and the rest as
        # lora_A/B; its loader then reads the latter only.
        "mixed key layouts": (write_tiny_lora(tiny_model, folder / "mixed.safetensors", targets=("to_q", "proj_in")),
                              r"holds 12 LoRA modules, of which diffusers adapted only 4 .*a file mixing lora.down"),
        "one factor lost": (_rewrite(loras["diffusers"], folder / "damaged.safetensors", lambda t: {
            k: v for k, v in t.items() if k != first}), r"is damaged: 1 LoRA module\(s\) have one factor without "
                                                        r"the other"),
        "not a LoRA": (_rewrite(loras["diffusers"], folder / "plain.safetensors", lambda t: {
            "weight": torch.zeros(2)}), r"holds no LoRA weights"),
        "pickle": (folder / "pickled.bin", r"is a pickle file \(\.bin\), which can run code when loaded; .*"
                                           r"--allow-pickle"),
        "pickle named safetensors": (folder / "pickle_named.safetensors",
                                     r"is not a safetensors file: it is a zip archive"),
        "unknown kind": (_rewrite(loras["diffusers"], folder / "style.lora", lambda t: t),
                         r"is a file of unknown kind '\.lora'"),
        "missing": (folder / "absent.safetensors", r"does not exist"),
        "folder": (folder, r"is a folder, not a file"),
    }


def test_every_lora_that_does_not_fit_is_refused_by_name(tiny_model, loras, tmp_path):
    for name, (path, message) in _bad_files(tiny_model, loras, tmp_path).items():
        with pytest.raises(ModelLoadError, match=message) as caught:
            load_model(tiny_model, device=TEST_DEVICE, loras=[LoraSpec(path)])
        assert f"--lora {str(path)!r}" in str(caught.value), name


def test_a_safetensors_file_whose_first_byte_is_pickles_is_still_read(tiny_model, loras, tmp_path):
    """A safetensors file starts with its header's length; one in 256 starts with 0x80, pickle's first byte."""
    from verifier.models.files import safetensors_problem

    tensors = load_file(str(loras["diffusers"]))
    for padding in range(256):
        path = tmp_path / "style.safetensors"
        save_file(tensors, str(path), metadata={"padding": "x" * padding})
        if path.read_bytes()[:1] == b"\x80":
            break
    assert path.read_bytes()[:1] == b"\x80"
    assert safetensors_problem(path) is None
    assert load_model(tiny_model, device=TEST_DEVICE, loras=[LoraSpec(path)]).adapters[0]["modules"] == 32


def test_a_pickled_lora_loads_only_when_allowed(tiny_model, loras, tmp_path):
    pickled = tmp_path / "style.bin"
    torch.save(load_file(str(loras["diffusers"])), pickled)
    adapted = load_model(tiny_model, device=TEST_DEVICE, loras=[LoraSpec(pickled)], allow_pickle=True)
    reference = load_model(tiny_model, device=TEST_DEVICE, loras=[LoraSpec(loras["diffusers"])])
    torch.testing.assert_close(denoiser_prediction(adapted), denoiser_prediction(reference))


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), 10.5, "strong", None, True])
def test_the_api_refuses_a_bad_scale_as_the_command_line_does(loras, scale):
    with pytest.raises(ValueError, match=r"is not allowed; expected a finite number with -10 <= SCALE <= 10"):
        LoraSpec(loras["diffusers"], scale)


@pytest.mark.parametrize("argument, message", [
    (":nan", r"the scale nan is not allowed; expected a finite number with -10 <= SCALE <= 10"),
    (":11", r"the scale 11 is not allowed"),
    (":-inf", r"the scale -inf is not allowed"),
    (":strong", r"the scale 'strong' is not a number; expected PATH or PATH:SCALE"),
])
def test_a_bad_scale_is_a_usage_error_naming_the_argument(tiny_model, loras, tmp_path, argument, message):
    images = write_images(tmp_path / "images", count=1)
    result = CliRunner().invoke(main, ["certify", str(tiny_model), *map(str, images), "--out", str(tmp_path / "out"),
                                       "--lora", f"{loras['diffusers']}{argument}"])
    assert result.exit_code == 2, result.output
    assert "--lora" in result.output and __import__("re").search(message, " ".join(result.output.split()))
    assert not (tmp_path / "out").exists()


def test_a_missing_lora_stops_certify_before_any_image(tiny_model, tmp_path):
    images = write_images(tmp_path / "images", count=1)
    result = CliRunner().invoke(main, ["certify", str(tiny_model), *map(str, images), "--out", str(tmp_path / "out"),
                                       "--lora", str(tmp_path / "gone.safetensors:0.8")])
    assert result.exit_code == 3, result.output
    assert f"--lora {str(tmp_path / 'gone.safetensors')!r} does not exist" in result.output
    assert not list((tmp_path / "out").glob("*.json"))  # no certificate, not even the run's record


@pytest.fixture(scope="module")
def lora_run(tiny_model, loras, tmp_path_factory):
    """One image certified through the CLI on the tiny model with the LoRA at 0.8."""
    folder = tmp_path_factory.mktemp("lora-run")
    images = write_images(folder / "images", count=1)
    config = folder / "fast.json"
    config.write_text(json.dumps({k: v for k, v in FAST.fingerprint_dict().items() if k in (
        "inversion_steps", "framing_steps", "inversion_noise_draws", "error_timesteps", "error_noise_draws",
        "generations", "sampling_steps", "framing_search")} | {"guidance_scales": [1.0, 2.0]}))
    out = folder / "out"
    result = CliRunner().invoke(main, ["certify", str(tiny_model), *map(str, images), "--out", str(out), "--config",
                                       str(config), "--device", TEST_DEVICE, "--lora", f"{loras['diffusers']}:0.8"])
    assert result.exit_code in (0, 1), result.output
    return out, images


def test_certify_records_the_lora_and_verify_holds_it(tiny_model, loras, lora_run):
    out, images = lora_run
    [certificate] = [json.loads(p.read_text()) for p in out.glob("*.json") if p.name not in ("run.json",
                                                                                                "summary.json")]
    [adapter] = certificate["model"]["adapters"]
    assert (adapter["path"], adapter["scale"], adapter["layout"]) == (str(loras["diffusers"]), 0.8, "diffusers")
    base = load_model(tiny_model, device=TEST_DEVICE)
    assert certificate["model"]["base_fingerprint"] == base.fingerprint != certificate["model"]["fingerprint"]
    assert json.loads((out / "run.json").read_text())["model_fingerprint"] == certificate["model"]["fingerprint"]
    assert "LoRA style.safetensors at scale 0.8" in (out / "report.html").read_text()
    result = verify(out, images=images, device=TEST_DEVICE)
    assert result.passed, [c for c in result.checks if not c.passed]
    assert any(c.name == "model record" and c.passed for c in result.checks)


def _model_check(result) -> str:
    [check] = [c for c in result.checks if c.name == "model"]
    assert not check.passed
    return check.detail


def test_verify_fails_on_a_swapped_rescaled_or_missing_lora(tiny_model, loras, lora_run, tmp_path):
    out, images = lora_run
    swapped = _model_check(verify(out, images=images, device=TEST_DEVICE, loras=[LoraSpec(loras["other"], 0.8)]))
    assert "adapter 0 (style.safetensors): sha256" in swapped
    rescaled = _model_check(verify(out, images=images, device=TEST_DEVICE, loras=[LoraSpec(loras["diffusers"], 1.0)]))
    assert "scale 1.0 vs recorded 0.8" in rescaled
    without = _model_check(verify(out, images=images, device=TEST_DEVICE, loras=[]))
    assert "0 adapter(s) loaded, 1 recorded" in without
    moved = tmp_path / "certs"
    shutil.copytree(out, moved)
    certificate_file = next(p for p in moved.glob("*.json") if p.name not in ("run.json", "summary.json"))
    certificate = json.loads(certificate_file.read_text())
    certificate["model"]["adapters"][0]["path"] = str(tmp_path / "elsewhere.safetensors")
    certificate_file.write_text(json.dumps(certificate))
    missing = verify(moved, images=images, device=TEST_DEVICE)
    assert f"the LoRA adapter {str(tmp_path / 'elsewhere.safetensors')!r} the certificate records is missing" in \
        _model_check(missing)
    assert any(c.name == "re-measurement" and not c.passed for c in missing.checks)


def test_an_edited_adapter_record_fails_verify(lora_run):
    from helpers.tampering import failed_checks_after

    out, _ = lora_run
    image_id = next(p.stem for p in out.glob("*.json") if p.name not in ("run.json", "summary.json"))

    def rescale(certificate):
        certificate["model"]["adapters"][0]["scale"] = 0.5

    failed = failed_checks_after(out, image_id, rescale)
    assert "model record" in failed


def test_the_witness_regenerates_with_stock_diffusers_and_the_recorded_lora(tiny_model, lora_run):
    """docs/families.md's recipe: from_pretrained, load_lora_weights and set_adapters from the certificate's record,
    then the witness: the closest generation, to the pixel."""
    import diffusers
    from PIL import Image

    out, _ = lora_run
    certificate = json.loads(next(p for p in out.glob("*.json") if p.name not in ("run.json", "summary.json"))
                             .read_text())
    witness = certificate["witness"]
    adapters = [a for a in certificate["model"]["adapters"] if a["kind"] == "lora"]
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(tiny_model, local_files_only=True).to(TEST_DEVICE)
    pipe.set_progress_bar_config(disable=True)
    for adapter in adapters:
        pipe.load_lora_weights(adapter["path"], adapter_name=adapter["adapter_name"])
    pipe.set_adapters([a["adapter_name"] for a in adapters], adapter_weights=[a["scale"] for a in adapters])
    tensors = load_file(str(out / witness["file"]))
    image = pipe(**{k: tensors[k] for k in witness["tensors"] + witness["negative_tensors"]},
                 **{witness["guidance_keyword"]: witness["closest_guidance_scale"]},
                 num_inference_steps=witness["num_inference_steps"], height=witness["height"], width=witness["width"],
                 generator=torch.Generator("cpu").manual_seed(witness["closest_seed"]), output_type="np").images[0]
    closest = np.asarray(Image.open(out / witness["closest_generation"]), dtype=np.float32) / 255
    assert np.abs(image - closest).max() <= 1 / 255 + 1e-6


def test_the_shipped_reference_lora_is_one_model_in_both_layouts_and_matches_its_manifest():
    """benchmarks/reference_model/train_lora.py's output: the files are the manifest's, small, and the kohya copy
    loads to the very model the diffusers copy does; its ground truth holds every category it is there to test."""
    import hashlib

    from verifier.reference_models import (LORA_LAYOUTS, REFERENCE_LORAS, load_lora_manifest, reference_lora_path,
                                           reference_model_path)

    for name, base in REFERENCE_LORAS.items():
        manifest = load_lora_manifest(name)
        paths = {layout: reference_lora_path(name, layout) for layout in LORA_LAYOUTS}
        for layout, path in paths.items():
            assert manifest["lora"]["files"][path.name] == hashlib.sha256(path.read_bytes()).hexdigest()
            assert path.stat().st_size < 5 * 2**20
        loaded = {layout: load_model(reference_model_path(base), device=TEST_DEVICE, loras=[LoraSpec(path)])
                  for layout, path in paths.items()}
        assert [m.adapters[0]["layout"] for m in loaded.values()] == list(LORA_LAYOUTS)
        assert len({m.adapters[0]["adapted_modules"] for m in loaded.values()}) == 1
        torch.testing.assert_close(denoiser_prediction(loaded["kohya"]), denoiser_prediction(loaded["diffusers"]))
        categories = {row["category"] for row in manifest["images"]}
        assert {"introduced", "inherited", "neither"} <= categories
        assert all(row["category"] == "neither" for row in manifest["images"] if row["split"] in
                   ("seen_once", "held_out"))
        assert all(not row["base"]["memorized"] for row in manifest["images"] if row["trained_by"] != "base")
