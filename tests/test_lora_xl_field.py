"""Field: the default config, unchanged, on the shipped SDXL-architecture reference LoRA (``reference-xl-32px-lora``
on ``reference-xl-32px``), given with ``--lora``: every image it introduced is certified memorized. A file of its own
so that xdist runs it beside the other field tests."""

from __future__ import annotations

import pytest

from verifier.api import certify
from verifier.config import VerifierConfig
from verifier.models.lora import LoraSpec
from verifier.reference_models import load_lora_manifest, reference_lora_path, reference_model_path

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.mark.field
def test_the_sdxl_reference_lora_is_certified_by_its_manifest(tmp_path):
    manifest = load_lora_manifest("reference-xl-32px-lora")
    folder = reference_lora_path("reference-xl-32px-lora").parent
    introduced = [row for row in manifest["images"] if row["category"] == "introduced"]
    assert len(introduced) == 3
    certificates = certify(reference_model_path("reference-xl-32px"), [folder / row["file"] for row in introduced],
                           tmp_path / "run", VerifierConfig(device="cpu"),
                           loras=[LoraSpec(reference_lora_path("reference-xl-32px-lora"))])
    verdicts = {c["image"]["id"]: (c["verdict"], c["verdict_reason"]) for c in certificates}
    assert all(verdict == "memorized" for verdict, _ in verdicts.values()), verdicts
    assert {c["model"]["family"] for c in certificates} == {"sdxl"}
