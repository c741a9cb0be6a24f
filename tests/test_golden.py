"""Golden numbers on the fixture: a refactor must not move a verdict, a replication or an error ratio.

The numbers in ``golden/fixture-16px.json`` were recorded with the default config on the CPU before
the model-adapter layer existed (issue 7); any change of behaviour shows up here as a named
difference. Like diffusers' ``expected_slice`` tests, they hold on one kind of machine and one
torch version: floating-point values are compared with a small relative tolerance, counts and
verdicts exactly.

The default run certifies the fixture without the framing search, which moves none of these numbers: no
fixture image's witness is a framing search's (the record predates the search, and the field test below
checks the same numbers through ``verifier demo --all`` with the whole default config).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from verifier.cli import main
from verifier.reference_models import load_manifest, reference_model_path

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

GOLDEN = json.loads((Path(__file__).parent / "golden" / "fixture-16px.json").read_text())["images"]


def _assert_golden(certificate: dict) -> None:
    golden = GOLDEN[certificate["image"]["id"]]
    error = certificate["prediction_error"]
    per_scale = certificate["conditions"]["probability"]["per_scale"]
    assert certificate["verdict"] == golden["verdict"], certificate["verdict_reason"]
    assert {str(s["guidance_scale"]): s["replications"] for s in per_scale} == golden["replications"]
    for name, recorded in (("error_ratio", error["ratio"]), ("inverted_mean", error["inverted_mean"]),
                           ("empty_mean", error["empty_mean"])):
        assert recorded == pytest.approx(golden[name], rel=1e-3), name
    assert certificate["conditions"]["similarity"]["value"] == pytest.approx(golden["best_similarity"], abs=2e-3)


@pytest.fixture(scope="module")
def fixture_certificates(tmp_path_factory):
    from verifier.api import certify
    from verifier.config import VerifierConfig

    folder = reference_model_path("fixture-16px")
    files = [folder / image["file"] for image in load_manifest("fixture-16px")["images"]]
    out = tmp_path_factory.mktemp("golden")
    return {c["image"]["id"]: c for c in certify(folder, files, out, VerifierConfig(device="cpu", framing_search=False))}


@pytest.mark.parametrize("image_id", sorted(GOLDEN))
def test_fixture_numbers_match_the_golden_record(fixture_certificates, image_id):
    _assert_golden(fixture_certificates[image_id])


@pytest.mark.field
def test_demo_on_the_fixture_agrees_with_its_ground_truth_and_the_golden_record(tmp_path):
    """`verifier demo --all` end to end, with the whole default config, on the small shipped model."""
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--model", "fixture-16px", "--all", "--out", str(out)])
    manifest = load_manifest("fixture-16px")
    assert result.exit_code == 0, result.output
    assert f"demo: all {len(manifest['images'])} images of the manifest" in result.output
    scored = sum(image["memorized"] or image["split"] == "held_out" for image in manifest["images"])
    assert f"{scored}/{scored} scored verdicts agree with the ground truth" in result.output
    assert sorted(GOLDEN) == sorted(image["id"] for image in manifest["images"])
    certificates = [json.loads((out / f"{image['id']}.json").read_text()) for image in manifest["images"]]
    assert any(certificate["framing"]["searched"] for certificate in certificates)  # the whole default config
    for certificate in certificates:
        _assert_golden(certificate)
