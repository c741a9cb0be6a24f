"""The certification pipeline on tiny random models: targets, invariances, resume, witnesses."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers.images import write_images
from helpers.tiny_models import build_tiny_pipeline
from verifier.api import certify
from verifier.certificate.schema import read_certificate
from verifier.conditions import redecide
from verifier.config import VerifierConfig
from verifier.images import file_sha256
from verifier.models import load_model
from verifier.objectives import PREDICTION_TYPES, DDPMObjective, ObjectiveError
from verifier.verify import differences

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

FAST = VerifierConfig(inversion_steps=3, framing_steps=3, inversion_noise_draws=2, error_timesteps=3,
                      error_noise_draws=2, generations=2, guidance_scales=(1.0, 2.0), sampling_steps=3, device="cpu")


@pytest.fixture(scope="module")
def tiny_images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("images"), count=3)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_target_is_what_the_scheduler_inverts_back_to_the_clean_latent(prediction_type):
    """A denoiser that outputs our target exactly makes the scheduler's own step recover z0."""
    from diffusers import DDIMScheduler, DDPMScheduler

    generator = torch.Generator().manual_seed(0)
    z0 = torch.randn(3, 4, 8, 8, generator=generator)
    noise = torch.randn(3, 4, 8, 8, generator=generator)
    for scheduler_class in (DDIMScheduler, DDPMScheduler):
        scheduler = scheduler_class(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                    prediction_type=prediction_type, clip_sample=False)
        scheduler.set_timesteps(50)
        objective = DDPMObjective(scheduler, torch.device("cpu"))
        for t in (int(scheduler.timesteps[5]), int(scheduler.timesteps[-5])):
            steps = torch.full((3,), t)
            noisy = objective.noisy(z0, noise, steps)
            torch.testing.assert_close(noisy, scheduler.add_noise(z0, noise, steps))
            out = scheduler.step(objective.target(z0, noise, steps), t, noisy)
            torch.testing.assert_close(out.pred_original_sample, z0, atol=2e-4, rtol=1e-4)
    if prediction_type == "v_prediction":
        steps = torch.full((3,), 500)
        reference = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                  prediction_type=prediction_type)
        torch.testing.assert_close(DDPMObjective(reference, torch.device("cpu")).target(z0, noise, steps),
                                   reference.get_velocity(z0, noise, steps))


def test_unknown_prediction_type_is_named():
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler()
    scheduler.register_to_config(prediction_type="flow")
    with pytest.raises(ObjectiveError, match="prediction_type 'flow' is not supported"):
        DDPMObjective(scheduler, torch.device("cpu"))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_certify_writes_complete_certificates(tmp_path, tiny_images, prediction_type):
    model = build_tiny_pipeline(tmp_path / f"model-{prediction_type}", prediction_type=prediction_type)
    certificates = certify(model, tiny_images, tmp_path / "out", FAST)
    assert [c["image"]["id"] for c in certificates] == ["img0", "img1", "img2"]
    for certificate in certificates:
        # What the schema cannot say: the file is the returned record, its findings follow from its numbers, the
        # files it names are there with their sha256, and the numbers are the run's (model, config, grid).
        on_disk = read_certificate(tmp_path / "out" / f"{certificate['image']['id']}.json")
        assert on_disk == json.loads(json.dumps(certificate))
        decision = redecide(on_disk)
        assert differences({"verdict": on_disk["verdict"], "verdict_reason": on_disk["verdict_reason"],
                            "conditions": on_disk["conditions"]},
                           {"verdict": decision.verdict, "verdict_reason": decision.reason,
                            "conditions": decision.conditions}) == []
        assert on_disk["model"]["prediction_type"] == prediction_type
        assert on_disk["model"]["fingerprint"] == load_model(model, device="cpu").fingerprint
        assert on_disk["config"] == FAST.to_dict()
        assert len(on_disk["prediction_error"]["inverted"]) == FAST.error_timesteps
        for name, record in (("witness", on_disk["witness"]),
                             ("generations sheet", on_disk["witness"]["generations_sheet"])):
            assert file_sha256(tmp_path / "out" / record["file"]) == record["sha256"], name
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert sum(summary["counts"].values()) == 3 and len(summary["images"]) == 3
    report = (tmp_path / "out" / "report.html").read_text()
    assert report.count("alt=\"the protected image\"") == 3 and "src=\"data:image/png;base64," in report
    assert (tmp_path / "out" / on_disk["witness"]["generations_sheet"]["file"]).is_file()


def _numbers(certificate: dict) -> list[float]:
    c = certificate["conditions"]
    return [certificate["prediction_error"]["ratio"], *certificate["prediction_error"]["inverted"],
            c["similarity"]["value"], c["probability"]["rate"]]


def test_certificate_does_not_depend_on_batch_companions(tmp_path, tiny_model, tiny_images):
    alone = certify(tiny_model, tiny_images[:1], tmp_path / "alone", replace(FAST, batch_size=1))
    together = certify(tiny_model, tiny_images[::-1], tmp_path / "together", FAST)
    shared = next(c for c in together if c["image"]["id"] == "img0")
    np.testing.assert_allclose(_numbers(alone[0]), _numbers(shared), rtol=1e-4, atol=1e-6)
    assert alone[0]["verdict"] == shared["verdict"]


def test_certificate_does_not_depend_on_rows_per_call_or_checkpointing(tmp_path, tiny_model, tiny_images):
    messages: list[str] = []
    whole = certify(tiny_model, tiny_images[:2], tmp_path / "whole", FAST)
    split = certify(tiny_model, tiny_images[:2], tmp_path / "split",
                    replace(FAST, denoiser_batch=3, gradient_checkpointing=True), progress=messages.append)
    assert any("3 rows per denoiser call (config denoiser_batch)" in message for message in messages)
    for one, other in zip(whole, split):
        np.testing.assert_allclose(_numbers(one), _numbers(other), rtol=1e-4, atol=1e-6)
        assert (one["verdict"], one["witness"]["closest_seed"]) == (other["verdict"], other["witness"]["closest_seed"])


def test_same_inputs_same_numbers(tmp_path, tiny_model, tiny_images):
    first = certify(tiny_model, tiny_images[:2], tmp_path / "a", FAST)
    second = certify(tiny_model, tiny_images[:2], tmp_path / "b", FAST)
    assert [_numbers(c) for c in first] == [_numbers(c) for c in second]


def test_interrupted_run_resumes_without_redoing_finished_images(tmp_path, tiny_model, tiny_images):
    config = replace(FAST, batch_size=1)
    out = tmp_path / "out"
    messages: list[str] = []

    def stop_after_first(message: str) -> None:
        messages.append(message)
        if message.startswith("img0:"):
            raise KeyboardInterrupt  # the user presses Ctrl-C after the first certificate

    with pytest.raises(KeyboardInterrupt):
        certify(tiny_model, tiny_images, out, config, progress=stop_after_first)
    assert (out / "img0.json").is_file() and not (out / "img1.json").exists()
    assert not list(out.glob(".*.tmp")), "no half-written file may remain"
    first_certificate = (out / "img0.json").read_text()

    resumed: list[str] = []
    certificates = certify(tiny_model, tiny_images, out, config, progress=resumed.append)
    assert any("1 images already certified" in m for m in resumed)
    assert not any(m.startswith("img0:") for m in resumed)
    assert (out / "img0.json").read_text() == first_certificate
    assert [c["image"]["id"] for c in certificates] == ["img0", "img1", "img2"]

    # A changed config is a different run: the folder refuses it instead of mixing two runs.
    from verifier.certificate.store import OutputFolderError

    with pytest.raises(OutputFolderError, match=r"holds a run with another config \(seed 0 -> 1\)"):
        certify(tiny_model, tiny_images[:1], out, replace(config, seed=1))
    assert (out / "img0.json").read_text() == first_certificate


def test_witness_regenerates_the_closest_generation_with_stock_diffusers(tmp_path, tiny_model, tiny_images):
    from diffusers import StableDiffusionPipeline
    from PIL import Image
    from safetensors.torch import load_file

    certificate = certify(tiny_model, tiny_images[:1], tmp_path / "out", FAST)[0]
    witness = certificate["witness"]
    tensors = load_file(tmp_path / "out" / witness["file"])
    pipeline = StableDiffusionPipeline.from_pretrained(tiny_model, local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    image = pipeline(prompt_embeds=tensors["prompt_embeds"], negative_prompt_embeds=tensors["negative_prompt_embeds"],
                     guidance_scale=witness["closest_guidance_scale"], num_inference_steps=witness["num_inference_steps"],
                     height=witness["height"], width=witness["width"],
                     generator=torch.Generator("cpu").manual_seed(witness["closest_seed"]), output_type="np").images[0]
    closest = np.asarray(Image.open(tmp_path / "out" / witness["closest_generation"]), dtype=np.float32) / 255
    assert np.abs(image - closest).max() <= 1 / 255 + 1e-6


def test_report_is_self_contained_and_escapes_file_names(tmp_path, tiny_model, tiny_images):
    import shutil

    odd = tmp_path / "odd"
    odd.mkdir()
    shutil.copy(tiny_images[0], odd / "a<b>&\"c.png")
    certificate = certify(tiny_model, [odd], tmp_path / "out", FAST)[0]
    assert certificate["image"]["id"] == "a_b___c"  # ids are safe file names
    report = (tmp_path / "out" / "report.html").read_text()
    assert "a&lt;b&gt;&amp;&#34;c.png" in report and "a<b>" not in report
    assert "src=\"http" not in report and report.count("data:image/png;base64,") == 4
    assert f"after {certificate['prediction_error']['inversion_steps']} inversion steps" in report


def test_hidden_state_space_optimizes_the_encoder_output_directly(tmp_path, tiny_model, tiny_images):
    from safetensors.torch import load_file

    certificate = certify(tiny_model, tiny_images[:1], tmp_path / "out", replace(FAST, inversion_space="hidden_states"))[0]
    tensors = load_file(tmp_path / "out" / certificate["witness"]["file"])
    assert certificate["config"]["inversion_space"] == "hidden_states"
    # In this space the free variables are the conditioning itself: all 77 positions of the encoder output.
    assert tensors["variables.prompt_embeds"].shape == tensors["prompt_embeds"].shape == (1, 77, 16)
    torch.testing.assert_close(tensors["variables.prompt_embeds"], tensors["prompt_embeds"])
    assert not torch.equal(tensors["prompt_embeds"], tensors["negative_prompt_embeds"])
