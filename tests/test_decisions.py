"""Decisions that know the model: the never-seen twin control and calibrated thresholds."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from verifier.calibration import derive_thresholds, non_members_needed, order_statistic_rank
from verifier.cli import main
from verifier.config import VerifierConfig
from verifier.reference_models import load_manifest, reference_model_path
from verifier.verify import verify

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

FIXTURE = reference_model_path("fixture-16px")
CPU = VerifierConfig(device="cpu")


# --- order statistics ---------------------------------------------------------------------------

def test_non_members_needed_matches_the_closed_form():
    assert [non_members_needed(rate, 0.95) for rate in (0.01, 0.05, 0.1)] == [299, 59, 29]
    assert order_statistic_rank(59, 0.05, 0.95) == 1 and order_statistic_rank(58, 0.05, 0.95) is None
    assert order_statistic_rank(1000, 0.05, 0.95) > 30


def test_calibrated_thresholds_hold_their_false_alarm_rate():
    """On simulated non-members, a fresh non-member passes a derived threshold at most `rate` of the time,
    in at least `confidence` of the calibrations."""
    rng = np.random.default_rng(0)
    rate, confidence, trials, n = 0.1, 0.9, 400, 60
    exceeded = 0
    for _ in range(trials):
        ratios, similarities = rng.beta(8, 2, n), rng.beta(2, 8, n)
        thresholds = derive_thresholds(ratios, similarities, higher_is_similar=True, rate=rate, confidence=confidence)
        # The true probability that a new non-member passes each threshold, from the known distributions.
        from scipy.stats import beta

        ratio_rate = beta.cdf(thresholds["error_ratio_threshold"], 8, 2)
        similarity_rate = beta.sf(thresholds["similarity_threshold"], 2, 8)
        exceeded += ratio_rate > rate or similarity_rate > rate
    assert exceeded / trials <= 2 * (1 - confidence)  # each threshold fails with probability <= 1 - confidence


# --- the never-seen twin control ------------------------------------------------------------------

def test_a_replicating_witness_beats_a_cut_off_through_the_control(tmp_path):
    """With an existence cut-off below the memorized image's error ratio, the control still finds that the
    witness replicates the image and the twin's witness does not replicate the twin: not `inconclusive`."""
    from verifier.api import certify

    image = FIXTURE / "images" / "dup00-astronaut-x400.png"
    certificate = certify(FIXTURE, [image], tmp_path / "out", replace(CPU, existence_max_error_ratio=0.3))[0]
    existence = certificate["conditions"]["existence"]
    assert existence["value"] > 0.3, "the cut-off must not pass on its own for this test to mean anything"
    assert existence["control"] is not None and existence["control"]["witness_specific"]
    assert existence["passed_by"] == "control"
    assert certificate["verdict"] == "memorized", certificate["verdict_reason"]
    assert "never-seen twin" in certificate["verdict_reason"]
    assert (tmp_path / "out" / certificate["control_witness"]["file"]).is_file()
    # The control's cost is recorded: one inversion, the error grid and 16 guided generations at one scale.
    cost = certificate["budget"]["control_denoiser_evaluations"]
    assert cost["sampling_forward"] == 16 * 25 * (2 if existence["control"]["guidance_scale"] > 1 else 1)
    assert cost["total"] == cost["inversion_forward_backward"] + cost["error_forward"] + cost["sampling_forward"]
    checked = verify(tmp_path / "out", device="cpu")
    assert checked.passed and any(c.name == "control generations" for c in checked.checks)
    # The control's numbers are evidence too: a control score edited past the threshold is caught by regeneration.
    path = tmp_path / "out" / f"{image.stem}.json"
    original = path.read_text()
    edited = json.loads(original)
    scores = edited["conditions"]["existence"]["control"]["scores"]
    index = max(range(len(scores)), key=lambda i: scores[i])
    assert scores[index] < 0.7, "the twin is not replicated"
    scores[index] = 0.95
    path.write_text(json.dumps(edited))
    failed = verify(path, device="cpu")
    assert any(c.name == "control generations" and not c.passed and "regenerated vs" in c.detail
               for c in failed.checks), [(c.name, c.detail) for c in failed.checks if not c.passed]
    # The control's Fisher p-value follows from its scores: an edited one is named by the verdict check.
    edited = json.loads(original)
    edited["conditions"]["existence"]["control"]["p_value"] /= 10
    path.write_text(json.dumps(edited))
    failed = {c.name: c.detail for c in verify(path, device="cpu").checks if not c.passed}
    assert set(failed) == {"verdict"} and "conditions.existence.control.p_value" in failed["verdict"], failed


def test_a_flat_image_stays_inconclusive_because_its_twin_replicates_too(tmp_path):
    """A flat image is its own upside-down twin: the model draws it for any conditioning near it."""
    from verifier.api import certify

    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(tmp_path / "flat.png")
    certificate = certify(reference_model_path("reference-32px"), [tmp_path / "flat.png"], tmp_path / "out",
                          replace(CPU, similarity_threshold=0.4))[0]
    existence = certificate["conditions"]["existence"]
    assert certificate["conditions"]["similarity"]["replications"] > 0, "the witness must replicate for the test"
    assert existence["control"] is not None and not existence["control"]["witness_specific"]
    assert certificate["verdict"] == "inconclusive", certificate["verdict_reason"]
    assert "similarity alone is no proof" in certificate["verdict_reason"]


# --- calibrate, then certify with the calibration --------------------------------------------------------

# These tests are about the calibration file and its citation, not about framings: the calibration and the
# runs that cite it leave the framing search out (it would triple the calibration's cost; every clean verdict
# with it is in the field tests, tests/test_behaviour.py).
WITHOUT_FRAMING = ["--no-framing-search"]


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    """The fixture's 8 non-memorized images (4 never trained, 4 seen once) as non-members, at a 35% rate."""
    folder = tmp_path_factory.mktemp("calibration")
    manifest = load_manifest("fixture-16px")
    non_members = [str(FIXTURE / image["file"]) for image in manifest["images"] if not image["memorized"]]
    result = CliRunner().invoke(main, ["calibrate", str(FIXTURE), *non_members, "--out", str(folder / "cal.json"),
                                       "--false-alarm-rate", "0.35", "--device", "cpu", *WITHOUT_FRAMING])
    assert result.exit_code == 0, result.output
    return folder / "cal.json"


def test_calibration_file_records_its_evidence(calibration):
    record = json.loads(calibration.read_text())
    assert record["images"] == 8 and record["rank"] == 1 and record["false_alarm_rate"] == 0.35
    ratios = [row["error_ratio"] for row in record["non_members"]]
    similarities = [row["best_similarity"] for row in record["non_members"]]
    assert record["error_ratio_threshold"] == min(ratios)
    assert record["similarity_threshold"] == max(similarities)
    assert len({row["sha256"] for row in record["non_members"]}) == 8


def test_certify_with_a_calibration_cites_it_and_verify_checks_it(calibration, tmp_path):
    memorized = [FIXTURE / image["file"] for image in load_manifest("fixture-16px")["images"] if image["memorized"]]
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["certify", str(FIXTURE), *map(str, memorized), "--out", str(out),
                                       "--calibration", str(calibration), "--device", "cpu", *WITHOUT_FRAMING])
    assert result.exit_code == 1, result.output  # memorization found
    record = json.loads(calibration.read_text())
    for path in sorted(out.glob("dup*.json")):
        certificate = json.loads(path.read_text())
        assert certificate["verdict"] == "memorized"
        assert certificate["calibration"]["images"] == 8
        assert certificate["conditions"]["existence"]["threshold"] == record["error_ratio_threshold"]
        assert certificate["conditions"]["similarity"]["threshold"] == record["similarity_threshold"]
        assert "calibration" in certificate["conditions"]["similarity"]["threshold_source"]
    assert verify(out, device="cpu").passed
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(record | {"similarity_threshold": 0.99}))
    failed = verify(out, device="cpu", calibration=edited)
    assert not failed.passed
    assert any(c.name == "calibration" and "not the calibration the verdict used" in c.detail for c in failed.checks)


def test_a_calibration_refuses_another_model_or_config(calibration, tmp_path):
    from helpers.tiny_models import build_tiny_pipeline

    image = str(FIXTURE / "images" / "dup00-astronaut-x400.png")
    other = build_tiny_pipeline(tmp_path / "other")
    result = CliRunner().invoke(main, ["certify", str(other), image, "--out", str(tmp_path / "a"),
                                       "--calibration", str(calibration), "--device", "cpu", *WITHOUT_FRAMING])
    assert result.exit_code == 2 and "was measured on another model" in result.output
    result = CliRunner().invoke(main, ["certify", str(FIXTURE), image, "--out", str(tmp_path / "b"),
                                       "--calibration", str(calibration), "--device", "cpu", "--generations", "8",
                                       *WITHOUT_FRAMING])
    assert result.exit_code == 2 and "was measured with other settings (generations)" in result.output


def test_too_few_non_members_are_named(tmp_path):
    image = str(FIXTURE / "images" / "held-flower-whole.png")
    result = CliRunner().invoke(main, ["calibrate", str(FIXTURE), image, "--out", str(tmp_path / "cal.json"),
                                       "--device", "cpu", "--inversion-steps", "2", "--generations", "2"])
    assert result.exit_code == 2
    assert "1 non-members cannot bound a false-alarm rate of 0.05 at 95% confidence; at least 59 are needed" in \
        result.output
