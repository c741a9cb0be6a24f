"""The differential certificate (``certify --baseline``, ``verifier.fine_tune``, ``verifier.differential``): each
image under the fine-tune and under its baseline, the fine-tune's witness sampled under the baseline, one rule for
the category, and ``verify`` re-checking both halves and every record."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from helpers.images import write_images
from helpers.loras import denoiser_prediction, write_tiny_lora
from helpers.signing import write_keypair
from helpers.tiny_models import FAMILIES, TEST_DEVICE, build_tiny_pipeline
from verifier.cli import main
from verifier.differential import DIFFERENTIAL_CATEGORIES, _category
from verifier.config import VerifierConfig
from verifier.fine_tune import certify_differential, verify_differential
from verifier.models import load_model
from verifier.models.lora import LoraSpec
from verifier.policy import Policy, PolicyError

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

FAST = {"inversion_steps": 3, "framing_steps": 3, "inversion_noise_draws": 2, "error_timesteps": 3,
        "error_noise_draws": 2, "generations": 2, "sampling_steps": 3, "framing_search": False,
        "guidance_scales": [1.0, 2.0]}


@pytest.mark.parametrize("family", FAMILIES)
def test_switching_the_adapters_off_gives_the_base_and_back(family, tmp_path):
    """The baseline view of a fine-tune is the base as loaded alone (same numbers, same fingerprint, no adapters),
    and the fine-tune is whole again after it."""
    model = build_tiny_pipeline(tmp_path / "model", family=family)
    lora = write_tiny_lora(model, tmp_path / "lora.safetensors")
    base = load_model(model, device=TEST_DEVICE)
    tuned = load_model(model, device=TEST_DEVICE, loras=[LoraSpec(lora, 0.8)])
    before = denoiser_prediction(tuned)
    with tuned.adapters_disabled() as view:
        assert (view.fingerprint, view.adapters) == (base.fingerprint, [])
        assert view.describe()["denoiser_parameters"] == base.describe()["denoiser_parameters"]
        assert torch.equal(denoiser_prediction(view), denoiser_prediction(base))
        assert not torch.allclose(denoiser_prediction(view), before)
    assert torch.equal(denoiser_prediction(tuned), before)
    assert tuned.fingerprint != base.fingerprint


def _half(verdict: str, replications: int, generations: int = 16) -> dict:
    return {"verdict": verdict, "replications": replications, "generations": generations}


@pytest.mark.parametrize("fine, base, cross, category", [
    (_half("memorized", 16), _half("not_memorized", 0), 0, "introduced"),
    (_half("memorized", 16), _half("memorized", 14), 0, "inherited"),
    (_half("rarely_reproduced", 3), _half("memorized", 12), 0, "inherited"),
    (_half("not_memorized", 0), _half("memorized", 10), 0, "removed"),
    (_half("not_memorized", 0), _half("not_memorized", 0), 0, "neither"),
    (_half("not_memorized", 0), _half("rarely_reproduced", 1), 0, "removed"),
    (_half("inconclusive", 5), _half("not_memorized", 0), 0, "undetermined"),
    (_half("memorized", 16), _half("inconclusive", 2), 0, "undetermined"),
    # The fine-tune reproduces it, the baseline's own certificate does not: its count decides ...
    (_half("rarely_reproduced", 2), _half("not_memorized", 0), 0, "undetermined"),
    # ... and the baseline reproducing it from the fine-tune's witness, not significantly less often, is inherited.
    (_half("memorized", 12), _half("not_memorized", 0), 10, "inherited"),
    (_half("memorized", 16), _half("not_memorized", 0), 3, "introduced"),
])
def test_the_rule_names_each_category(fine, base, cross, category):
    from scipy.stats import fisher_exact

    best = max((base["replications"], base["generations"]), (cross, 16), key=lambda pair: pair[0] / pair[1])
    p_value = fisher_exact([[fine["replications"], fine["generations"] - fine["replications"]],
                            [best[0], best[1] - best[0]]], alternative="greater")[1]
    found, reason = _category(fine, base, {"replications": cross, "generations": 16}, p_value, 0.05, *best)
    assert found == category, reason
    assert found in DIFFERENTIAL_CATEGORIES and reason


@pytest.fixture(scope="module")
def differential_run(tiny_model, tmp_path_factory):
    """Two images certified with ``--lora ... --baseline`` through the CLI on the tiny model, given in the reverse of
    their files' order (the summary lists them as given; verify must not read them back sorted)."""
    folder = tmp_path_factory.mktemp("differential")
    images = write_images(folder / "images", count=2)
    lora = write_tiny_lora(tiny_model, folder / "style.safetensors")
    config = folder / "fast.json"
    config.write_text(json.dumps(FAST))
    out = folder / "out"
    arguments = ["certify", str(tiny_model), *map(str, reversed(images)), "--out", str(out), "--config", str(config),
                 "--device", TEST_DEVICE, "--lora", f"{lora}:0.8", "--baseline"]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code in (0, 1), result.output
    return {"out": out, "images": images, "lora": lora, "config": config, "arguments": arguments,
            "output": result.output}


def test_the_baseline_half_is_a_plain_run_of_the_base(tiny_model, differential_run, tmp_path):
    """Certifying under the adapters switched off gives the numbers a plain run of the base gives, and the fine-tune
    half records the adapter: two ordinary run folders, joined by one record per image."""
    out = differential_run["out"]
    plain = tmp_path / "plain"
    result = CliRunner().invoke(main, ["certify", str(tiny_model), *map(str, differential_run["images"]), "--out",
                                       str(plain), "--config", str(differential_run["config"]), "--device",
                                       TEST_DEVICE])
    assert result.exit_code in (0, 1), result.output
    for image in differential_run["images"]:
        alone = json.loads((plain / f"{image.stem}.json").read_text())
        based = json.loads((out / "baseline" / f"{image.stem}.json").read_text())
        tuned = json.loads((out / "fine-tune" / f"{image.stem}.json").read_text())
        assert based["model"]["fingerprint"] == alone["model"]["fingerprint"] == tuned["model"]["base_fingerprint"]
        assert based["model"]["adapters"] == [] and len(tuned["model"]["adapters"]) == 1
        assert based["prediction_error"] == alone["prediction_error"]
        assert based["conditions"]["probability"]["per_scale"] == alone["conditions"]["probability"]["per_scale"]
        record = json.loads((out / "differential" / f"{image.stem}.json").read_text())
        assert record["fine_tune"]["verdict"] == tuned["verdict"] and record["baseline"]["verdict"] == based["verdict"]
        assert [row["seeds"] for row in record["cross"]["per_scale"]] == [
            tuned["witness"]["seeds"][:row["generations"]] for row in tuned["conditions"]["probability"]["per_scale"]]
        assert record["finding"]["category"] in DIFFERENTIAL_CATEGORIES
    summary = json.loads((out / "differential" / "summary.json").read_text())
    assert sum(summary["counts"].values()) == 2
    assert summary["denoiser_evaluations"]["cross"] > 0
    assert "differential records in" in differential_run["output"]


def test_a_second_run_reuses_every_half_and_record(differential_run):
    out = differential_run["out"]
    before = {path: path.stat().st_mtime_ns for path in (out / "differential").glob("*.json")
              if path.name != "summary.json"}
    result = CliRunner().invoke(main, differential_run["arguments"])
    assert result.exit_code in (0, 1), result.output
    assert "sampling the fine-tune's witness" not in result.output
    assert "resuming: 2 images already certified" in result.output
    assert before == {path: path.stat().st_mtime_ns for path in before}


def test_verify_holds_a_differential_run(differential_run):
    result = CliRunner().invoke(main, ["verify", str(differential_run["out"]), "--device", TEST_DEVICE])
    assert result.exit_code == 0, result.output
    for name in ("fine-tune/", "baseline/", "differential finding", "cross generations", "(differential)"):
        assert name in result.output


def _edited(out, tmp_path, relative: str, edit):
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    path = copy / relative
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record, indent=2))
    return copy


def _failed(result) -> set[str]:
    return {check.name for check in result.checks if not check.passed}


@pytest.mark.parametrize("relative, edit, failing", [
    ("differential/img0.json", lambda r: r["finding"].update(category="introduced"), {"differential finding"}),
    ("differential/img0.json", lambda r: r["finding"].update(p_value=0.001), {"differential finding"}),
    ("differential/img0.json", lambda r: r["cross"]["per_scale"][0]["scores"].__setitem__(0, 0.99),
     {"differential finding", "cross generations"}),
    ("differential/img0.json", lambda r: r["baseline"].update(sha256="0" * 64), {"baseline certificate"}),
    ("differential/summary.json", lambda r: r["counts"].update(introduced=r["counts"]["introduced"] + 1),
     {"summary"}),
])
def test_verify_names_an_edited_record(differential_run, tmp_path, relative, edit, failing):
    copy = _edited(differential_run["out"], tmp_path, relative, edit)
    result = verify_differential(copy, images=differential_run["images"], device=TEST_DEVICE)
    assert _failed(result) == failing, [c for c in result.checks if not c.passed]


def test_verify_fails_when_the_baseline_half_is_swapped_for_the_fine_tune(differential_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(differential_run["out"], copy)
    shutil.rmtree(copy / "baseline")
    shutil.copytree(copy / "fine-tune", copy / "baseline")
    result = verify_differential(copy, images=differential_run["images"], device=TEST_DEVICE)
    assert {"baseline certificate"} <= _failed(result)


def test_baseline_without_adapters_or_model_is_a_usage_error(tiny_model, tmp_path):
    images = write_images(tmp_path / "images", count=1)
    result = CliRunner().invoke(main, ["certify", str(tiny_model), *map(str, images), "--out", str(tmp_path / "out"),
                                       "--baseline"])
    assert result.exit_code == 2, result.output
    assert "--baseline without a MODEL needs --lora adapters" in result.output


def test_a_baseline_of_another_family_is_refused(tiny_model, tmp_path):
    images = write_images(tmp_path / "images", count=1)
    other = build_tiny_pipeline(tmp_path / "sd3", family="sd3")
    result = CliRunner().invoke(main, ["certify", str(tiny_model), *map(str, images), "--out", str(tmp_path / "out"),
                                       "--device", TEST_DEVICE, "--baseline", str(other)])
    assert result.exit_code == 2, result.output
    assert "is a sd3 model and the model under test a sd one" in result.output
    assert not (tmp_path / "out" / "fine-tune").exists()


def test_a_policy_can_gate_on_introduced_alone():
    policy = Policy.of({"fail": {}, "differential": {"fail": ["introduced"]}}, source="test", sha256="0" * 64)
    assert policy.judge_differential({"finding": {"category": "introduced"}})["fails"]
    assert not policy.judge_differential({"finding": {"category": "inherited"}})["fails"]
    assert Policy.from_record(policy.record()) == policy
    with pytest.raises(PolicyError, match=r"\[differential\] fail = \['introduce'\] is not allowed.*introduced"):
        Policy.of({"fail": {}, "differential": {"fail": ["introduce"]}}, source="test", sha256="0" * 64)
    with pytest.raises(PolicyError, match="unknown key 'fails'.*did you mean 'fail'"):
        Policy.of({"fail": {}, "differential": {"fails": []}}, source="test", sha256="0" * 64)


def test_a_signed_differential_run_catches_an_edit_below_the_tolerance(tiny_model, tmp_path):
    """With --sign-key every record and the summary are signed too; a cross score nudged within the regeneration
    tolerance still follows (same category), so only the signature tells."""
    private, public = write_keypair(tmp_path)
    images = write_images(tmp_path / "images", count=1)
    lora = write_tiny_lora(tiny_model, tmp_path / "style.safetensors")
    out = tmp_path / "out"
    config = VerifierConfig(device=TEST_DEVICE, **{key: tuple(value) if isinstance(value, list) else value
                                                   for key, value in FAST.items()})
    certify_differential(tiny_model, images, out, config, loras=[LoraSpec(lora)], sign_key=private)
    assert (out / "differential" / "img0.json.sig").is_file() and (out / "differential" / "summary.json.sig").is_file()
    assert verify_differential(out, device=TEST_DEVICE, public_key=public).passed
    path = out / "differential" / "img0.json"
    record = json.loads(path.read_text())
    record["cross"]["per_scale"][0]["scores"][0] += 0.005
    path.write_text(json.dumps(record, indent=2))
    result = verify_differential(out, device=TEST_DEVICE, public_key=public)
    assert _failed(result) == {"signature"}, [c for c in result.checks if not c.passed]
