"""Autocast (``autocast = "bfloat16"``): the denoiser and sampling computed in bfloat16, the weights, the free
variables and the loss kept in float32; recorded in the certificate, replayed by ``verify``, and without it the
run keys of earlier runs unchanged."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers.images import write_images
from helpers.tiny_models import build_tiny_pipeline
from verifier.api import certify
from verifier.config import ConfigError, VerifierConfig
from verifier.memory import saved_bytes
from verifier.models import load_model
from verifier.reference_models import reference_model_path

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

FAST = VerifierConfig(inversion_steps=2, inversion_max_steps=2, framing_steps=2, inversion_noise_draws=2,
                      error_timesteps=3, error_noise_draws=2, generations=2, sampling_doublings=0, guidance_scales=(1.0, 2.0),
                      sampling_steps=3, device="cpu", decode_witness=False)


@pytest.fixture(scope="module")
def fixture_model():
    return load_model(reference_model_path("fixture-16px"), device="cpu")


def _matmul_dtypes(adapter, z0, timesteps, conditioning) -> set[torch.dtype]:
    """The dtypes the denoiser's linear layers computed in during one prediction."""
    seen: set[torch.dtype] = set()
    hooks = [module.register_forward_hook(lambda module, inputs, output: seen.add(output.dtype))
             for module in adapter.denoiser().modules() if isinstance(module, torch.nn.Linear)]
    try:
        prediction = adapter.predict(adapter.objective.noisy(z0, torch.zeros_like(z0), timesteps), timesteps,
                                     conditioning)
    finally:
        for hook in hooks:
            hook.remove()
    assert prediction.dtype == torch.float32
    return seen


def test_autocast_computes_the_denoiser_in_bfloat16_and_returns_float32(fixture_model):
    z0 = fixture_model.encode_images([np.full((16, 16, 3), 0.5, dtype=np.float32)])
    timesteps = torch.tensor(fixture_model.objective.grid(1))
    empty = fixture_model.empty_conditioning()
    assert _matmul_dtypes(fixture_model, z0, timesteps, empty) == {torch.float32}
    fixture_model.autocast = torch.bfloat16
    try:
        assert _matmul_dtypes(fixture_model, z0, timesteps, empty) == {torch.bfloat16}
        assert next(fixture_model.denoiser().parameters()).dtype == torch.float32  # the weights stay as loaded
    finally:
        fixture_model.autocast = None


def test_autocast_keeps_half_the_activation_bytes_per_row(fixture_model):
    plain = saved_bytes(fixture_model, 2) - saved_bytes(fixture_model, 1)
    fixture_model.autocast = torch.bfloat16
    try:
        halved = saved_bytes(fixture_model, 2) - saved_bytes(fixture_model, 1)
    finally:
        fixture_model.autocast = None
    assert halved < 0.7 * plain


def test_an_autocast_certificate_records_its_precision_and_verify_replays_it(tmp_path):
    from verifier.verify import verify

    folder = build_tiny_pipeline(tmp_path / "model")
    images = write_images(tmp_path / "images", count=1)
    plain = certify(folder, images, tmp_path / "plain", FAST)[0]
    autocast = certify(folder, images, tmp_path / "autocast", replace(FAST, autocast="bfloat16"))[0]
    assert plain["config"]["autocast"] == "off" and autocast["config"]["autocast"] == "bfloat16"
    assert plain["run_key"] != autocast["run_key"], "the precision changes the numbers, so it is in the run key"
    ratios = plain["prediction_error"]["ratio"], autocast["prediction_error"]["ratio"]
    assert ratios[0] != ratios[1] and ratios[1] == pytest.approx(ratios[0], abs=0.05)
    result = verify(tmp_path / "autocast", model=folder, images=images, device="cpu", all_generations=True)
    failures = [check for check in result.checks if not check.passed]
    assert not failures, failures


def test_runs_without_autocast_keep_the_run_keys_they_had():
    """The setting came after schema v9: left off, it is not among the run key's inputs, so folders certified
    before it resume and verify as they did."""
    assert "autocast" not in VerifierConfig().fingerprint_dict()
    assert VerifierConfig(autocast="bfloat16").fingerprint_dict()["autocast"] == "bfloat16"


def test_an_unknown_autocast_dtype_is_refused_with_what_is_allowed():
    with pytest.raises(ConfigError, match="autocast='int8' is not allowed: expected one of off, bfloat16, float16"):
        VerifierConfig(autocast="int8")

