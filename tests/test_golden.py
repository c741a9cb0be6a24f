"""Golden numbers on the fixture: a refactor must not move a verdict, a replication or an error ratio.

The numbers in ``golden/fixture-16px.json`` were recorded with the default config on the CPU before
the model-adapter layer existed (issue 7); any change of behaviour shows up here as a named
difference. Like diffusers' ``expected_slice`` tests, they hold on one kind of machine and one
torch version: floating-point values are compared with a small relative tolerance, counts and
verdicts exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from verifier.api import certify
from verifier.config import VerifierConfig
from verifier.reference_models import load_manifest, reference_model_path

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

GOLDEN = json.loads((Path(__file__).parent / "golden" / "fixture-16px.json").read_text())["images"]


@pytest.fixture(scope="module")
def fixture_certificates(tmp_path_factory):
    folder = reference_model_path("fixture-16px")
    files = [folder / image["file"] for image in load_manifest("fixture-16px")["images"]]
    out = tmp_path_factory.mktemp("golden")
    return {c["image"]["id"]: c for c in certify(folder, files, out, VerifierConfig(device="cpu"))}


@pytest.mark.parametrize("image_id", sorted(GOLDEN))
def test_fixture_numbers_match_the_golden_record(fixture_certificates, image_id):
    golden, certificate = GOLDEN[image_id], fixture_certificates[image_id]
    error = certificate["prediction_error"]
    per_scale = certificate["conditions"]["probability"]["per_scale"]
    assert certificate["verdict"] == golden["verdict"], certificate["verdict_reason"]
    assert {str(s["guidance_scale"]): s["replications"] for s in per_scale} == golden["replications"]
    for name, recorded in (("error_ratio", error["ratio"]), ("inverted_mean", error["inverted_mean"]),
                           ("empty_mean", error["empty_mean"])):
        assert recorded == pytest.approx(golden[name], rel=1e-3), name
    assert certificate["conditions"]["similarity"]["value"] == pytest.approx(golden["best_similarity"], abs=2e-3)
