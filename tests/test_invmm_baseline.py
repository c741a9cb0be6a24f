"""The InvMM-schedule baseline of ``benchmarks/invmm_baseline.py``: its stopping rule, its evaluation counts
(what the benchmark compares with verifier's) and its repeatability, on the fixture model at a tiny budget."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from verifier.config import VerifierConfig
from verifier.images import prepare_image
from verifier.models import load_model
from verifier.reference_models import load_manifest, reference_model_path
from verifier.registry import SIMILARITY_METRICS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from invmm_baseline import InvMMBaseline, Schedule  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
TINY = Schedule(max_steps=3, check_every=2, draws=2, check_noises=2, sampling_steps=2, guidance_scales=(1.0, 3.0))


@pytest.fixture(scope="module")
def setup():
    folder = reference_model_path("fixture-16px")
    model = load_model(folder, device="cpu")
    model.configure_objective("x0", "logit_normal")
    row = load_manifest("fixture-16px")["images"][0]
    metric = SIMILARITY_METRICS.get("ssim")(VerifierConfig())
    return model, metric, prepare_image(folder / row["file"], model.resolution)


def test_a_check_costs_noises_times_steps_with_guidance_doubled():
    assert TINY.check_forward() == 2 * 2 * 1 + 2 * 2 * 2
    assert Schedule().check_forward() == 8 * 50 * (1 + 2 * 6)  # method.md section 5: 5,200 per check


def test_without_success_the_whole_budget_is_spent_and_the_score_is_infinite(setup):
    model, metric, pixels = setup
    result = InvMMBaseline(model, metric, threshold=1.5, schedule=TINY).run(pixels, model.resolution)  # SSIM <= 1
    assert not result.success and result.score == math.inf
    assert (result.steps, result.checks) == (3, 1)
    assert result.forward_backward == 3 * TINY.draws
    assert result.forward == TINY.check_forward()


def test_success_at_the_first_check_stops_with_the_noise_distributions_kl(setup):
    model, metric, pixels = setup
    baseline = InvMMBaseline(model, metric, threshold=-1.0, schedule=TINY)  # every generation passes
    result = baseline.run(pixels, model.resolution)
    assert result.success and (result.steps, result.checks) == (2, 1)
    assert result.forward_backward == 2 * TINY.draws and result.forward == TINY.check_forward()
    assert 0 < result.score < math.inf  # the noise distribution moved off N(0, I), so its KL is positive
    again = baseline.run(pixels, model.resolution)
    assert (again.score, again.least_similar) == (result.score, result.least_similar)
