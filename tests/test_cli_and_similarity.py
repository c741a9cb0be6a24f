"""The command line (through click.testing) and the similarity registry."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from helpers.images import write_images
from verifier.cli import main
from verifier.conditions import clopper_pearson, decide
from verifier.config import VerifierConfig
from verifier.registry import SIMILARITY_METRICS
from verifier.similarity import SSCD, SSIM, LPIPSSimilarity, SimilarityError

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

FAST_OPTIONS = ["--inversion-steps", "2", "--framing-steps", "2", "--generations", "2", "--device", "cpu"]


def test_help_is_instant_and_imports_no_torch():
    code = "import sys; from verifier.cli import main; assert 'torch' not in sys.modules; assert 'diffusers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    result = CliRunner().invoke(main, ["certify", "--help"])
    assert result.exit_code == 0 and "Examples:" in result.output


def test_help_names_every_family_and_only_files_that_exist():
    """The help is generated from the registry and names shipped files only, so it cannot go stale."""
    import re
    from pathlib import Path

    from verifier.registry import MODEL_FAMILIES

    root = Path(__file__).resolve().parents[1]
    certify_help = CliRunner().invoke(main, ["certify", "--help"], terminal_width=200).output
    assert all(re.search(rf"\b{name}\b", certify_help) for name in MODEL_FAMILIES.names()), certify_help
    for command in main.commands:
        output = CliRunner().invoke(main, [command, "--help"], terminal_width=200).output
        named = re.findall(r"configs/[\w./-]+\.(?:toml|json)", output)
        assert [path for path in named if not (root / path).is_file()] == [], (command, named)


def test_config_options_are_the_config_fields_with_their_defaults_and_choices():
    """Every config option of certify, demo and calibrate is made from a config field (its name, help, values and
    default), so none can be hand-written to disagree with the config; each reaches the config it sets."""
    import dataclasses

    from verifier.config import VerifierConfig
    from verifier.registry import SIMILARITY_METRICS

    exposed = {field.name: field for field in dataclasses.fields(VerifierConfig) if "help" in field.metadata}
    assert {"inversion_steps", "similarity", "framing_search", "fail_on", "calibration"} <= set(exposed)
    for command in ("certify", "demo", "calibrate"):
        params = {param.name: param for param in main.commands[command].params}
        config_params = {name for name in params if name in {f.name for f in dataclasses.fields(VerifierConfig)}}
        assert config_params == set(exposed), (command, config_params ^ set(exposed))
        help_text = " ".join(CliRunner().invoke(main, [command, "--help"], terminal_width=1000).output.split())
        for name, field in exposed.items():
            flag = "--" + name.replace("_", "-")
            assert flag in help_text, flag
            if isinstance(field.default, bool):
                assert params[name].secondary_opts == [f"--no-{flag[2:]}"]
            elif field.default is not None:
                assert f"Default: {field.default}." in help_text, flag
        assert "One of: " + ", ".join(SIMILARITY_METRICS.names()) in help_text
    from verifier.cli.options import build

    assert build(None, inversion_steps=7, framing_search=False, fail_on="never") == dataclasses.replace(
        VerifierConfig(), inversion_steps=7, framing_search=False, fail_on="never")


def test_certify_exit_codes(tmp_path, tiny_model):
    images = write_images(tmp_path / "images", count=2)
    runner = CliRunner()
    ok = runner.invoke(main, ["certify", str(tiny_model), str(tmp_path / "images"), "--out", str(tmp_path / "o"),
                              *FAST_OPTIONS])
    assert ok.exit_code == 0, ok.output
    assert "2 certificates" in ok.output and (tmp_path / "o" / "summary.json").is_file()
    verdicts = {c["verdict"] for c in json.loads((tmp_path / "o" / "summary.json").read_text())["images"]}
    assert "memorized" not in verdicts  # a random model memorizes nothing

    usage = runner.invoke(main, ["certify", str(tiny_model), str(images[0]), "--out", str(tmp_path / "u"),
                                 "--generations", "0"])
    assert usage.exit_code == 2 and "generations=0 is not allowed" in usage.output
    missing = runner.invoke(main, ["certify", str(tiny_model), str(tmp_path / "nope.png"), "--out", str(tmp_path / "u")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    (tmp_path / "model.ckpt").write_bytes(b"x")
    runtime = runner.invoke(main, ["certify", str(tmp_path / "model.ckpt"), str(images[0]), "--out", str(tmp_path / "r")])
    assert runtime.exit_code == 3 and "pickle checkpoint" in runtime.output
    no_weights = runner.invoke(main, ["certify", str(tiny_model), str(images[0]), "--out", str(tmp_path / "l"),
                                      "--similarity", "lpips", "--lpips-weights", str(tmp_path / "alexnet.pth")])
    assert no_weights.exit_code == 3 and "alexnet-owt-7be5be79.pth" in no_weights.output


def test_fail_on_levels_gate_the_exit_code(tmp_path, tiny_model):
    """With a threshold every generation passes, images come out non-clean and --fail-on decides the exit."""
    images = write_images(tmp_path / "images", count=1)
    runner = CliRunner()
    arguments = ["certify", str(tiny_model), str(images[0]), "--out", str(tmp_path / "o"), *FAST_OPTIONS,
                 "--similarity-threshold", "-1"]
    config = tmp_path / "lenient.toml"
    config.write_text("existence_max_error_ratio = 1.0\nprobability_min_rate = 0.01\n")
    gated = runner.invoke(main, [*arguments, "--config", str(config)])
    verdicts = [image["verdict"] for image in json.loads((tmp_path / "o" / "summary.json").read_text())["images"]]
    assert verdicts == ["memorized"], gated.output
    assert gated.exit_code == 1
    for level, code in (("rarely_reproduced", 1), ("never", 0)):
        assert runner.invoke(main, [*arguments, "--config", str(config), "--fail-on", level]).exit_code == code, level


# --- similarity ---------------------------------------------------------------------------------

def test_registry_lists_the_metrics():
    assert SIMILARITY_METRICS.names() == ["lpips", "sscd", "ssim"]
    with pytest.raises(KeyError, match="unknown similarity metric 'psnr'"):
        SIMILARITY_METRICS.get("psnr")


def test_ssim_is_one_for_identical_images_and_lower_for_others():
    rng = np.random.default_rng(0)
    image = rng.random((16, 16, 3)).astype(np.float32)
    scores = SSIM()(np.stack([image, rng.random((16, 16, 3)).astype(np.float32)]), image)
    assert scores[0] == pytest.approx(1.0) and scores[1] < 0.2


def test_lpips_names_the_missing_trunk_file(tmp_path):
    config = VerifierConfig(similarity="lpips", lpips_weights=str(tmp_path / "missing.pth"))
    with pytest.raises(SimilarityError, match="alexnet-owt-7be5be79.pth.*missing.pth"):
        LPIPSSimilarity(config)


@pytest.mark.filterwarnings("ignore:.*(pretrained|weight enum).*:UserWarning")  # lpips' own torchvision call
def test_lpips_runs_with_a_trunk_file(tmp_path):
    """The real loading path, with a random trunk saved as torchvision would (a smoke test, not a metric)."""
    import torchvision

    torch.manual_seed(0)
    weights = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(torchvision.models.alexnet().state_dict(), weights)
    metric = LPIPSSimilarity(VerifierConfig(similarity="lpips", lpips_weights=str(weights)))
    rng = np.random.default_rng(0)
    image = rng.random((32, 32, 3)).astype(np.float32)
    distances = metric(np.stack([image, rng.random((32, 32, 3)).astype(np.float32)]), image)
    assert distances[0] == pytest.approx(0.0, abs=1e-6) and distances[1] > 0
    assert metric.weights["sha256"] and not metric.higher_is_similar


def test_sscd_uses_a_torchscript_file(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=4), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    path = tmp_path / "sscd.torchscript.pt"
    torch.jit.script(net).save(str(path))
    metric = SSCD(VerifierConfig(similarity="sscd", sscd_weights=str(path)))
    rng = np.random.default_rng(0)
    image = rng.random((16, 16, 3)).astype(np.float32)
    scores = metric(np.stack([image, 1 - image]), image)
    assert scores[0] == pytest.approx(1.0, abs=1e-5) and scores[1] < scores[0]
    with pytest.raises(SimilarityError, match="needs sscd_weights"):
        SSCD(VerifierConfig(similarity="sscd"))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(SimilarityError, match="is not a TorchScript file"):
        SSCD(VerifierConfig(similarity="sscd", sscd_weights=str(tmp_path / "junk.pt")))


# --- conditions ---------------------------------------------------------------------------------

def test_clopper_pearson_bounds():
    lower, upper = clopper_pearson(0, 16, 0.95)
    assert lower == 0 and upper == pytest.approx(1 - 0.05 ** (1 / 16))
    lower, upper = clopper_pearson(16, 16, 0.95)
    assert upper == 1 and lower == pytest.approx(0.05 ** (1 / 16))
    lower, upper = clopper_pearson(8, 16, 0.95)
    assert lower < 0.5 < upper


@pytest.mark.parametrize(("ratio", "scores", "verdict"), [
    (0.2, [0.9] * 16, "memorized"),
    (0.2, [0.9] * 3 + [0.1] * 13, "rarely_reproduced"),
    (0.95, [0.1] * 16, "not_memorized"),
    (0.2, [0.1] * 16, "inconclusive"),
    # A simple image drawn generically: similar generations, but the error never falls.
    (0.95, [0.9] * 16, "inconclusive"),
])
def test_verdict_table(ratio, scores, verdict):
    decision = decide(error_ratio=ratio, scores_by_scale={3.0: np.array(scores)}, metric=SSIM(), threshold=0.7,
                      max_error_ratio=0.5, min_rate=0.5, confidence=0.95, looks=[16])
    assert decision.verdict == verdict
    assert decision.conditions["existence"]["pass"] == (ratio <= 0.5)
    if verdict == "not_memorized":
        assert "replication probability <=" in decision.reason


def test_the_demo_subset_keeps_every_memorized_image_and_one_of_each_kind():
    from verifier.cli.demo import demo_images
    from verifier.reference_models import load_manifest

    manifest = load_manifest("reference-32px")
    chosen, said = demo_images(manifest, everything=False)
    assert [image["id"] for image in chosen if image["memorized"]] == [
        image["id"] for image in manifest["images"] if image["memorized"]]
    assert sum(image["split"] == "held_out" for image in chosen) == 4
    kinds = {(image["split"], image["duplication"]) for image in manifest["images"]
             if not image["memorized"] and image["split"] != "held_out"}
    assert {(image["split"], image["duplication"]) for image in chosen
            if not image["memorized"] and image["split"] != "held_out"} == kinds
    assert said.startswith(f"demo: {len(chosen)} of 60 images") and "--all" in said
    assert demo_images(manifest, everything=True)[0] == manifest["images"]


def test_error_form_x0_is_used_recorded_and_reverified(tmp_path, tiny_model):
    """``--error-form x0`` measures the error on the implied clean latent (other numbers than the native
    loss), the certificate says so, and ``verify`` re-measures it in the same form."""
    images = write_images(tmp_path / "images", count=1)
    runner = CliRunner()
    errors = {}
    for form in ("native", "x0"):
        out = tmp_path / form
        result = runner.invoke(main, ["certify", str(tiny_model), str(images[0]), "--out", str(out), *FAST_OPTIONS,
                                      "--error-form", form])
        assert result.exit_code in (0, 1), result.output
        certificate = json.loads(next(p for p in out.glob("*.json") if p.name != "summary.json").read_text())
        assert certificate["config"]["error_form"] == certificate["model"]["objective"]["error_form"] == form
        errors[form] = certificate["prediction_error"]["empty"]
        checked = runner.invoke(main, ["verify", str(out), "--device", "cpu"])
        assert checked.exit_code == 0, checked.output
    assert errors["native"] != errors["x0"]
