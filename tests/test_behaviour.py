"""Behaviour on the reference model, whose memorized images are known: default settings must be right."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from verifier.api import certify
from verifier.config import VerifierConfig
from verifier.models import load_model
from verifier.reference_models import load_manifest, reference_model_path

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

MEMORIZED = "dup00-astronaut-x3000"
NEVER_TRAINED = "held-flower-whole"


@pytest.fixture(scope="module")
def reference():
    return load_model(reference_model_path("reference-32px"), device="cpu")


@pytest.fixture(scope="module")
def certified(reference, tmp_path_factory):
    folder = reference_model_path("reference-32px")
    out = tmp_path_factory.mktemp("certs")
    (certificate,) = certify(reference, [folder / "images" / f"{MEMORIZED}.png"], out, VerifierConfig(device="cpu"))
    return out, {MEMORIZED: certificate}


def test_memorized_image_is_certified_memorized(certified):
    _, certificates = certified
    certificate = certificates[MEMORIZED]
    assert load_manifest()["images"][0]["id"] == MEMORIZED and load_manifest()["images"][0]["memorized"]
    assert certificate["verdict"] == "memorized", certificate["verdict_reason"]
    assert certificate["conditions"]["existence"]["value"] < 0.3


@pytest.mark.field
def test_never_trained_image_is_certified_not_memorized(reference, tmp_path):
    image = reference_model_path("reference-32px") / "images" / f"{NEVER_TRAINED}.png"
    (certificate,) = certify(reference, [image], tmp_path / "out", VerifierConfig(device="cpu"))
    assert certificate["framing"]["searched"]
    assert certificate["verdict"] == "not_memorized", certificate["verdict_reason"]
    assert certificate["conditions"]["existence"]["value"] > 0.7
    probability = certificate["conditions"]["probability"]
    assert probability["upper_bound"] < 0.3  # 0 of 16 replications: p <= 1 - (alpha/2)^(1/16)


def test_witness_regenerates_the_replication_with_stock_diffusers(certified):
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file
    from skimage.metrics import structural_similarity

    out, certificates = certified
    witness = certificates[MEMORIZED]["witness"]
    tensors = load_file(out / witness["file"])
    pipeline = StableDiffusionPipeline.from_pretrained(reference_model_path("reference-32px"), local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    image = pipeline(prompt_embeds=tensors["prompt_embeds"], negative_prompt_embeds=tensors["negative_prompt_embeds"],
                     guidance_scale=witness["closest_guidance_scale"], num_inference_steps=witness["num_inference_steps"],
                     height=witness["height"], width=witness["width"], output_type="np",
                     generator=torch.Generator("cpu").manual_seed(witness["closest_seed"])).images[0]
    target = np.asarray(Image.open(reference_model_path("reference-32px") / "images" / f"{MEMORIZED}.png"),
                        np.float32) / 255
    assert structural_similarity(image, target, channel_axis=2, data_range=1.0) >= 0.7


@pytest.mark.field
def test_simple_images_are_not_called_memorized_on_similarity_alone(reference, tmp_path):
    """Flat colour, a smooth gradient and a silhouette: easy to draw, never trained."""
    ramp = np.linspace(0, 255, 32, dtype=np.float32)
    gradient = np.stack([np.tile(ramp, (32, 1)), np.tile(ramp[:, None], (1, 32)), np.full((32, 32), 128.0)], axis=2)
    Image.fromarray(gradient.astype(np.uint8)).save(tmp_path / "gradient.png")
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(tmp_path / "flat.png")
    silhouette = np.full((32, 32, 3), 255, np.uint8)
    silhouette[8:26, 6:26] = 0
    Image.fromarray(silhouette).save(tmp_path / "silhouette.png")
    certificates = certify(reference, [tmp_path / "gradient.png", tmp_path / "flat.png", tmp_path / "silhouette.png"],
                           tmp_path / "out", VerifierConfig(device="cpu"))
    for certificate in certificates:
        conditions = certificate["conditions"]
        assert certificate["verdict"] != "memorized", certificate["image"]["id"]
        assert not conditions["existence"]["pass"], certificate["image"]["id"]
        # No error drop: similar generations make it inconclusive (the guard), none make it not_memorized.
        expected = "inconclusive" if conditions["similarity"]["pass"] else "not_memorized"
        assert certificate["verdict"] == expected, (certificate["image"]["id"], certificate["verdict_reason"])
        assert ("similarity alone is no proof" in certificate["verdict_reason"]) == conditions["similarity"]["pass"]


@pytest.mark.gpu
@pytest.mark.parametrize("precision", [{"dtype": "float16"}, {"autocast": "bfloat16"}], ids=["float16", "autocast"])
def test_fixture_verdicts_on_cuda_in_half_precision(tmp_path, precision):
    """The same defaults on a GPU in float16 weights, or under bfloat16 autocast with float32 weights: memorized
    fixture images stay memorized, held-out ones not."""
    folder = reference_model_path("fixture-16px")
    manifest = load_manifest("fixture-16px")
    chosen = [i for i in manifest["images"] if i["memorized"] or i["split"] == "held_out"]
    certificates = certify(folder, [folder / i["file"] for i in chosen], tmp_path,
                           VerifierConfig(device="cuda", **precision))
    for image, certificate in zip(chosen, certificates):
        expected = "memorized" if image["memorized"] else "not_memorized"
        assert certificate["verdict"] == expected, (image["id"], certificate["verdict_reason"])


def test_a_memorized_image_that_descends_late_is_found_by_inverting_on(tmp_path):
    """On the SD3-architecture model the hubble crop's error ratio stays above 0.5 for 60 steps and then
    collapses: the defaults go on while it falls and certify it memorized."""
    folder = reference_model_path("reference-sd3-32px")
    image = next(i for i in load_manifest("reference-sd3-32px")["images"] if i["id"] == "dup07-hubble-x3000")
    assert image["memorized"]
    certificate = certify(folder, [folder / image["file"]], tmp_path / "out", VerifierConfig(device="cpu"))[0]
    record = certificate["prediction_error"]
    at_60 = next(check["ratio"] for check in record["inversion_checks"] if check["step"] == 60)
    assert at_60 > 0.5, "the image no longer needs the schedule: this test shows nothing"
    assert record["inversion_steps"] > 60 and record["ratio"] <= 0.5
    assert certificate["verdict"] == "memorized", certificate["verdict_reason"]
