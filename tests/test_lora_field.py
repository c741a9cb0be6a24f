"""Field: the default config, unchanged, on the shipped reference LoRA (``reference-32px-lora`` on
``reference-32px``), given as an adapter with ``--lora``: what it introduced is certified memorized, what neither
model saw is cleared, in both file layouts. A file of its own so that xdist runs it beside the other field tests."""

from __future__ import annotations

import pytest

from verifier.api import certify
from verifier.config import VerifierConfig
from verifier.models.lora import LoraSpec
from verifier.reference_models import load_lora_manifest, reference_lora_path, reference_model_path

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.mark.field
def test_the_reference_lora_is_certified_by_its_manifest_in_both_layouts(tmp_path):
    manifest = load_lora_manifest("reference-32px-lora")
    folder = reference_lora_path("reference-32px-lora").parent
    introduced = [row for row in manifest["images"] if row["category"] == "introduced"]
    held_out = next(row for row in manifest["images"] if row["split"] == "held_out")
    rows = introduced + [held_out]
    # One run: the batch's never-trained image sets its time, the memorized ones finish at the first search.
    certificates = certify(reference_model_path("reference-32px"), [folder / row["file"] for row in rows],
                           tmp_path / "diffusers", VerifierConfig(device="cpu"),
                           loras=[LoraSpec(reference_lora_path("reference-32px-lora"))])
    verdicts = {c["image"]["id"]: c["verdict"] for c in certificates}
    assert all(verdicts[row["id"]] == "memorized" for row in introduced), verdicts
    assert verdicts[held_out["id"]] == "not_memorized", verdicts
    assert {c["model"]["adapters"][0]["layout"] for c in certificates} == {"diffusers"}
    (kohya,) = certify(reference_model_path("reference-32px"), [folder / introduced[0]["file"]], tmp_path / "kohya",
                       VerifierConfig(device="cpu"), loras=[LoraSpec(reference_lora_path("reference-32px-lora",
                                                                                         "kohya"))])
    assert kohya["verdict"] == "memorized", kohya["verdict_reason"]
    assert kohya["model"]["adapters"][0]["layout"] == "kohya"
