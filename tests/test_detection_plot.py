"""benchmarks/detection.py --plot: the score distributions drawn from recorded numbers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def certificate(image_id: str, ratio: float | None, rate: float) -> dict:
    return {"image": {"id": image_id},
            "conditions": {"existence": {"value": ratio, "threshold": 0.5},
                           "probability": {"rate": rate, "threshold": 0.25}}}


def test_plot_draws_every_finite_score_per_ground_truth_group(tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    from detection import plot_distributions

    truth = {"a": "memorized", "b": "memorized", "c": "never trained", "d": "never trained",
             "e": "trained, not memorized"}
    certificates = [certificate("a", 0.21, 1.0), certificate("b", 0.35, 0.75), certificate("c", 0.97, 0.0),
                    certificate("d", None, 0.0), certificate("e", 0.8, 0.0625)]
    results = [{"name": "m1", "truth": truth, "certificates": certificates},
               {"name": "m2", "truth": truth, "certificates": certificates[:3] + certificates[4:]}]
    drawn = plot_distributions(results, tmp_path / "plot.png")
    assert drawn == {"m1": {"never trained": 1, "trained, not memorized": 1, "memorized": 2},
                     "m2": {"never trained": 1, "trained, not memorized": 1, "memorized": 2}}
    with Image.open(tmp_path / "plot.png") as picture:
        assert picture.size == (1210, int(2.8 * 2 * 110))
        colours = {colour for _, colour in picture.convert("RGB").getcolors(1 << 20)}
    assert any(r - g > 80 and r - b > 80 for r, g, b in colours)  # the memorized points (red) were drawn


def test_the_fine_tune_rows_take_their_ground_truth_from_what_the_lora_reproduces():
    """The reference LoRA's rows: memorized = what base + LoRA reproduces (introduced or inherited), never trained =
    what neither model saw; an image the LoRA removed is trained, not memorized."""
    from detection import ground_truth
    from verifier.reference_models import load_lora_manifest

    truth = ground_truth("reference-32px-lora")
    manifest = {image["id"]: image for image in load_lora_manifest("reference-32px-lora")["images"]}
    assert {i for i, group in truth.items() if group == "memorized"} == {
        i for i, image in manifest.items() if image["category"] in ("introduced", "inherited")}
    assert truth["dup03-rocket-x2000"] == "trained, not memorized"
    assert truth["lora-held00-horse"] == truth["held-flower-whole"] == "never trained"
