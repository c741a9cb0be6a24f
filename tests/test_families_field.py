"""Field: the default config, unchanged, on each shipped whole-image family besides reference-32px (whose own
defaults are in test_behaviour.py): a file of its own so that xdist (whole files per worker) runs it beside them."""

from __future__ import annotations

import pytest

from verifier.api import certify
from verifier.config import VerifierConfig
from verifier.reference_models import WHOLE_IMAGE_MODELS, load_manifest, reference_model_path

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.mark.field
@pytest.mark.parametrize("name", [n for n in WHOLE_IMAGE_MODELS if n not in ("reference-32px", "fixture-16px")])
def test_one_default_config_gives_the_ground_truth_on_every_family(name, tmp_path):
    """The defaults, unchanged, on each other shipped family (v-prediction, SDXL): its most duplicated
    memorized image is certified memorized and a never-trained photograph not_memorized."""
    folder = reference_model_path(name)
    manifest = load_manifest(name)
    memorized = max((i for i in manifest["images"] if i["memorized"]), key=lambda i: i["duplication"])
    never = next(i for i in manifest["images"] if i["split"] == "held_out" and not i["source"]["source_in_training"])
    certificates = certify(folder, [folder / memorized["file"], folder / never["file"]], tmp_path / "out",
                           VerifierConfig(device="cpu"))
    assert [c["model"]["prediction_type"] for c in certificates] == [manifest["prediction_type"]] * 2
    assert certificates[0]["verdict"] == "memorized", certificates[0]["verdict_reason"]
    assert certificates[1]["verdict"] == "not_memorized", certificates[1]["verdict_reason"]


@pytest.mark.field
def test_an_owners_copy_framed_20_percent_wider_is_found_by_the_screens_longer_inversion(tmp_path):
    """reference-sd3-32px's hubble photograph framed 20% wider than the trained crop (trained scale 0.83, between
    the screen's 0.8 and 1): with the screen's 60 steps it was certified not_memorized (2026-12-07, commit 40782f0);
    with framing_steps 120 the candidate at scale 0.8 finds the memorized conditioning (docs/owner-copies.md,
    "Longer inversions in the screen")."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import owner_copies

    from verifier.taxonomy import REPRODUCED_VERDICTS

    model = reference_model_path("reference-sd3-32px")
    record = owner_copies.build(model, tmp_path / "copies", never_trained=0, seed=0)
    grown = next(c for c in record["copies"] if c["id"] == "dup07-hubble-x3000.grown-20")
    (certificate,) = certify(model, [tmp_path / "copies" / grown["file"]], tmp_path / "run", VerifierConfig(device="cpu"))
    framing = certificate["framing"]
    assert framing["first_search"]["replications"] == 0, "the owner's framing alone reproduces nothing"
    assert framing["screen"]["steps"] == 120 and framing["screen"]["chosen"]["scale"] == 0.8
    assert framing["witness"] == "framing search", framing["statement"]
    assert certificate["verdict"] in REPRODUCED_VERDICTS, certificate["verdict_reason"]
