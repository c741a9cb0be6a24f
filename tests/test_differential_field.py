"""Field: the differential certificate with the default config, unchanged, on the shipped reference LoRA
(``reference-32px-lora`` on ``reference-32px``): an image the LoRA introduced is ``introduced`` (memorized under
the fine-tune), one the base already memorized is ``inherited``, and ``verify`` holds the run. A file of its own so
that xdist runs it beside the other field tests."""

from __future__ import annotations

import pytest

from verifier.config import VerifierConfig
from verifier.fine_tune import certify_differential, verify_differential
from verifier.models.lora import LoraSpec
from verifier.reference_models import load_lora_manifest, reference_lora_path, reference_model_path

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.mark.field
def test_the_reference_lora_introduces_what_its_manifest_says_and_inherits_the_rest(tmp_path):
    manifest = load_lora_manifest("reference-32px-lora")
    folder = reference_lora_path("reference-32px-lora").parent
    rows = {row["id"]: row for row in manifest["images"]}
    chosen = [rows["lora-dup01-horse"], rows["dup00-astronaut-x3000"]]
    assert [row["category"] for row in chosen] == ["introduced", "inherited"]
    records, fine_tune = certify_differential(
        reference_model_path("reference-32px"), [folder / row["file"] for row in chosen], tmp_path / "run",
        VerifierConfig(device="cpu"), loras=[LoraSpec(reference_lora_path("reference-32px-lora"))])
    found = {record["image"]["id"]: record["finding"] for record in records}
    assert found["lora-dup01-horse"]["category"] == "introduced", found
    assert found["dup00-astronaut-x3000"]["category"] == "inherited", found
    assert fine_tune[0]["verdict"] == "memorized"
    result = verify_differential(tmp_path / "run", device="cpu")
    assert result.passed, [check for check in result.checks if not check.passed]
