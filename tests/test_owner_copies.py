"""The owner's own copy (issue 22): owner copies, the framing search's parts, and a reframed copy end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import structural_similarity

from verifier.alignment import FramedSimilarity, Framing, FramingBounds, OwnerImage, ssim_pairs
from verifier.images import prepare_image
from verifier.reference_models import reference_model_path
from verifier.similarity import SSIM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import owner_copies  # noqa: E402  (benchmarks/owner_copies.py)
from helpers.tampering import failed_checks_after  # noqa: E402

REFERENCE = reference_model_path("reference-32px")


def _photo() -> Image.Image:
    from data import load_photo  # benchmarks/reference_model/data.py, on the path owner_copies set

    return load_photo("chelsea")


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    return float(structural_similarity(a, b, channel_axis=2, data_range=1.0))


def test_ssim_pairs_is_scikit_images_ssim_of_the_overlaps():
    rng = np.random.default_rng(0)
    generations = rng.random((6, 32, 32, 3)).astype(np.float32)
    frames = np.clip(generations + rng.normal(0, 0.2, generations.shape), 0, 1).astype(np.float32)
    overlaps = [(0, 0, 32, 32), (3, 2, 20, 25), (10, 0, 22, 32), (0, 5, 9, 7), (1, 1, 30, 30), (25, 25, 7, 7)]
    fast = ssim_pairs(torch.from_numpy(generations).permute(0, 3, 1, 2), torch.from_numpy(frames).permute(0, 3, 1, 2),
                      torch.tensor(overlaps)).numpy()
    slow = [_ssim(g[t:t + h, l:l + w], f[t:t + h, l:l + w]) for g, f, (t, l, h, w) in zip(generations, frames, overlaps)]
    np.testing.assert_allclose(fast, slow, atol=1e-5)


@pytest.mark.parametrize("box, expected_scale, expected_dx, mirror", [
    ((75, 0, 300, 300), 1.0, 0, False),  # the trained box itself, as a wider photo (centre-cropped)
    ((99, 0, 300, 300), 1.0, -3, False),  # moved right by 8% of the side: the frame sits 3 of 32 pixels left
    ((90, 15, 270, 270), 1.1111, 0, False),  # the owner cropped 10% tighter: the frame reaches past the copy
    ((75, 0, 300, 300), 1.0, 0, True),  # mirrored
])
def test_the_framing_search_finds_the_trained_framing_in_an_owners_copy(tmp_path, box, expected_scale, expected_dx,
                                                                        mirror):
    """The model reproduces its training crop; the search finds where that crop lies in the owner's copy."""
    photo = _photo()
    trained = np.asarray(photo.resize((32, 32), Image.Resampling.BICUBIC, box=(75, 0, 375, 300)),
                         dtype=np.float32) / 255
    left, top, width, height = box
    if width == 300 and left == 75 and not mirror:
        owner_file = photo.crop((0, 0, 451, 300))  # the whole photograph: another aspect ratio
    else:
        owner_file = photo.crop((left, top, left + width, top + height))
    if mirror:
        owner_file = owner_file.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    path = tmp_path / "owner.jpg"
    owner_file.save(path, quality=85)
    owner = OwnerImage.open(path, FramingBounds(), 32)
    scores, framings = owner.best(trained[None])
    plain = _ssim(trained, prepare_image(path, 32))
    # The search renders from a copy at 4x the frame's side, so the plain framing scores within 0.01 of
    # verifier's own preparation; a shift between two grid pixels costs a little more.
    assert scores[0] > 0.85 and scores[0] >= plain - 0.01
    found = framings[0]
    assert found.mirror == mirror
    assert abs(found.scale - expected_scale) < 0.06 and abs(found.dx - expected_dx) <= 1 and abs(found.dy) <= 1
    # The metric on the overlap at the model's resolution agrees with the search's score.
    framed = FramedSimilarity(SSIM())(trained[None], owner)[0]
    assert framed > 0.85


def test_framed_similarity_is_the_metric_itself_on_prepared_pixels():
    rng = np.random.default_rng(1)
    generations, target = rng.random((3, 32, 32, 3)).astype(np.float32), rng.random((32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(FramedSimilarity(SSIM())(generations, target), SSIM()(generations, target))


def test_an_unrelated_image_stays_unrelated_under_the_search(tmp_path):
    """Searching thousands of framings must not make a different photograph look like a copy."""
    photo = _photo()
    other = prepare_image(REFERENCE / "images" / "dup02-coffee-x2000.png", 32)
    path = tmp_path / "cat.png"
    photo.save(path)
    scores, _ = OwnerImage.open(path, FramingBounds(), 32).best(other[None])
    assert scores[0] < 0.5


def test_the_grid_spans_the_stated_bounds():
    framings = FramingBounds().framings(32)
    scales = sorted({f.scale for f in framings})
    assert scales[0] == pytest.approx(0.8) and scales[-1] == pytest.approx(1.25) and 1.0 in [round(s, 9) for s in scales]
    assert max(abs(f.dx) for f in framings) == 6 and {f.mirror for f in framings} == {False, True}
    assert Framing(1.0, 3, -2, False).record(32) == {"scale": 1.0, "shift": [3 / 32, -2 / 32], "mirror": False}


@pytest.mark.parametrize("family_model", ["reference-32px", "reference-sd3-32px"])
def test_a_noise_floor_draws_only_the_noisiest_timesteps_and_none_leaves_training_draws_alone(family_model):
    from verifier.models.loading import load_model

    model = load_model(reference_model_path(family_model), device="cpu")
    model.configure_objective("native", "logit_normal", 32)
    objective = model.objective
    plain = objective.sample_timesteps(torch.Generator().manual_seed(3), 4000)
    again = objective.sample_timesteps(torch.Generator().manual_seed(3), 4000, 0.0)
    torch.testing.assert_close(plain, again)  # certificates without the search keep their numbers
    coarse = objective.sample_timesteps(torch.Generator().manual_seed(3), 4000, 0.8).float()
    cut = torch.quantile(plain.float(), 0.78)  # the noisiest 20% of what training draws (sampling error: 0.78)
    assert coarse.min() >= cut and coarse.max() <= 1000
    assert (plain.float() >= coarse.min()).float().mean() < 0.25


def test_owner_copies_are_built_the_same_every_time_and_described(tmp_path):
    first = owner_copies.build(REFERENCE, tmp_path / "a", never_trained=2, seed=0)
    second = owner_copies.build(REFERENCE, tmp_path / "b", never_trained=2, seed=0)
    assert [c["sha256"] for c in first["copies"]] == [c["sha256"] for c in second["copies"]]
    manifest = json.loads((REFERENCE / "manifest.json").read_text())
    memorized = {image["id"] for image in manifest["images"] if image.get("memorized")}
    assert {c["source_image"] for c in first["copies"] if c["status"] == "memorized"} == memorized
    assert len({c["source_image"] for c in first["copies"] if c["status"] == "never_trained"}) == 2
    by_id = {c["id"]: c for c in first["copies"]}
    # The same box at the photograph's resolution prepares to the trained pixels; a moved box does not.
    chelsea = "dup01-chelsea-x3000"
    trained = prepare_image(REFERENCE / "images" / f"{chelsea}.png", 32)
    assert _ssim(trained, prepare_image(tmp_path / "a" / by_id[f"{chelsea}.png"]["file"], 32)) > 0.99
    assert _ssim(trained, prepare_image(tmp_path / "a" / by_id[f"{chelsea}.moved-15"]["file"], 32)) < 0.3
    moved = by_id[f"{chelsea}.moved-15"]["owner_rectangle"]
    assert abs(moved["left"] - 75) == 45 and moved["width"] == 300  # 15% of the 300-pixel side
    # A square photograph cannot be framed wider: that copy is listed as not applicable, never faked.
    assert "dup00-astronaut-x3000.grown-10" in {entry["id"] for entry in first["not_applicable"]}
    # The manifest is a verifier manifest.
    from verifier.images import collect_images

    assert len(collect_images([tmp_path / "a" / "manifest.csv"])) == len(first["copies"])


@pytest.mark.field
def test_a_moved_copy_of_a_memorized_photograph_is_not_cleared_and_verify_rechecks_the_framing(tmp_path):
    """Before the framing search, this copy (the photograph moved by 8% of its side) was certified not_memorized."""
    from verifier.api import certify
    from verifier.config import VerifierConfig
    from verifier.verify import verify

    record = owner_copies.build(REFERENCE, tmp_path / "copies", never_trained=0, seed=0)
    moved = next(c for c in record["copies"] if c["id"] == "dup01-chelsea-x3000.moved-8")
    out = tmp_path / "run"
    (certificate,) = certify(REFERENCE, [tmp_path / "copies" / moved["file"]], out, VerifierConfig(device="cpu"))
    framing = certificate["framing"]
    assert framing["searched"] and framing["first_search"]["replications"] == 0
    assert certificate["verdict"] in ("memorized", "inconclusive"), certificate["verdict_reason"]
    assert framing["witness"] == "framing search" and certificate["conditions"]["similarity"]["replications"] > 0
    # The frame the model reproduces lies left of the owner's centre (the owner's copy was moved right).
    assert framing["closest_framing"]["shift"][1] < 0
    result = verify(out)
    assert result.passed, [check for check in result.checks if not check.passed]
    # A certificate that claims the first witness although the framing search replicated is caught.
    assert "framing" in failed_checks_after(out, certificate["image"]["id"],
                                            lambda tampered: tampered["framing"].update(witness="owner's framing"))
    # The screen: 25 candidates at each of scales 0.8 and 1, 21 at 1.25 (4 leave less than half the frame on the
    # owner's image), the chosen one the rule's; an edited ratio or chosen framing is caught, the latter also by
    # the error re-measured on the owner's image cut there.
    screen = framing["screen"]
    scales = [candidate["scale"] for candidate in screen["candidates"]]
    assert (scales.count(0.8), scales.count(1.0), scales.count(1.25)) == (25, 25, 21)
    assert screen["steps"] == certificate["config"]["framing_steps"] == 120
    assert (screen["twin"] is None) == (certificate["conditions"]["existence"]["control"] is None)  # the same screen
    chosen = next(c for c in screen["candidates"]
                  if (c["scale"], c["shift"]) == (screen["chosen"]["scale"], screen["chosen"]["shift"]))

    def chosen_ratio_raised(tampered: dict) -> None:
        for candidate in tampered["framing"]["screen"]["candidates"]:
            if (candidate["scale"], candidate["shift"]) == (chosen["scale"], chosen["shift"]):
                candidate["ratio"] = 9.0

    def another_chosen(tampered: dict) -> None:
        tampered["framing"]["screen"]["chosen"]["shift"] = [0.2 if chosen["shift"][0] != 0.2 else -0.2, 0.2]

    assert "framing" in failed_checks_after(out, certificate["image"]["id"], chosen_ratio_raised)
    assert {"framing", "prediction error"} <= failed_checks_after(out, certificate["image"]["id"], another_chosen)


def _summary(verdict: str, replications: int) -> dict:
    return {"verdict": verdict, "error_ratio": 0.9, "replications": replications, "generations": 32}


def test_the_witness_is_the_first_search_that_stands_in_order():
    from verifier.framing import ALIGNED_SEARCH, witness_search

    nothing, some = _summary("not_memorized", 0), _summary("memorized", 9)
    assert witness_search(None) == "owner's framing"
    assert witness_search(nothing) == "owner's framing"
    assert witness_search(some) == "framing search"
    assert witness_search(some, some) == "framing search"  # the aligned search does not run after a replication
    assert witness_search(nothing, some) == ALIGNED_SEARCH


def test_the_framing_record_says_what_each_search_found():
    from verifier.framing import framing_record

    nothing = _summary("not_memorized", 0)
    common = {"searched": True, "enabled": True, "scales_enabled": True, "first": nothing, "framed": nothing,
              "evaluations": {"total": 1},
              "closest_framing": None, "aligned": None, "aligned_framing": None, "aligned_evaluations": None}
    off = framing_record(mirror_enabled=False, **common)
    assert off["witness"] == "owner's framing"
    assert "mirrored framings are not screened: framing_mirror = false" in off["statement"]
    on = framing_record(mirror_enabled=True, **common)
    assert "framing_mirror" not in on["statement"] and on["mirror_enabled"] is True
    assert "framing_scales" not in on["statement"] and on["scales_enabled"] is True
    unscaled = framing_record(mirror_enabled=True, **common | {"scales_enabled": False})
    assert "only scale 1 is screened: framing_scales = false" in unscaled["statement"]
    found = framing_record(mirror_enabled=True, **common | {
        "framed": _summary("memorized", 12), "closest_framing": {"scale": 1.0, "shift": [0.0, 0.0], "mirror": True}})
    assert found["witness"] == "framing search" and found["statement"].endswith("mirrored in its closest generation")


def test_framing_mirror_is_off_by_default_and_leaves_earlier_run_keys_alone():
    from verifier.config import ConfigError, VerifierConfig, build_config

    assert VerifierConfig().framing_mirror is False
    assert "framing_mirror" not in VerifierConfig().fingerprint_dict()
    assert VerifierConfig(framing_mirror=True).fingerprint_dict()["framing_mirror"] is True
    with pytest.raises(ConfigError, match="framing_mirror='yes' is not allowed: expected true or false"):
        build_config(overrides={"framing_mirror": "yes"})
    # Scales in the screen are on by default, and earlier runs' keys stay valid while they are.
    assert VerifierConfig().framing_scales is True and "framing_scales" not in VerifierConfig().fingerprint_dict()
    assert VerifierConfig(framing_scales=False).fingerprint_dict()["framing_scales"] is False


def test_a_mirrored_copy_is_found_by_the_screens_mirrored_candidates_and_verify_rechecks_it(tmp_path):
    """The fixture's astronaut, mirrored: the owner's framing replicates nothing (0 of 32); without framing_mirror
    the framing search's best is inconclusive (2 of 32, 2026-12-06); with it the screen also tries every candidate
    mirrored, chooses the mirrored owner's framing, and the framing search replicates it with the error falling."""
    from verifier.api import certify
    from verifier.config import VerifierConfig
    from verifier.verify import verify

    fixture = reference_model_path("fixture-16px")
    record = owner_copies.build(fixture, tmp_path / "copies", never_trained=0, seed=0)
    mirrored = next(c for c in record["copies"] if c["id"] == "dup00-astronaut-x400.mirrored")
    out = tmp_path / "run"
    (certificate,) = certify(fixture, [tmp_path / "copies" / mirrored["file"]], out,
                             VerifierConfig(device="cpu", framing_mirror=True))
    framing = certificate["framing"]
    assert framing["first_search"]["replications"] == 0 and framing["witness"] == "framing search"
    mirrors = [candidate["mirror"] for candidate in framing["screen"]["candidates"]]
    assert len(mirrors) == 142 and sum(mirrors) == 71 and framing["screen"]["chosen"]["mirror"] is True
    assert certificate["verdict"] == "memorized", certificate["verdict_reason"]
    assert framing["closest_framing"]["mirror"] is True
    assert certificate["prediction_error"]["ratio"] <= certificate["conditions"]["existence"]["threshold"]
    result = verify(out)
    assert result.passed, [check for check in result.checks if not check.passed]
    # verify re-measures the error on the owner's image cut at the chosen framing: claiming the unmirrored one
    # fails both the screen's rule and the re-measured error.
    def unmirrored(tampered: dict) -> None:
        tampered["framing"]["screen"]["chosen"]["mirror"] = False

    assert {"framing", "prediction error"} <= failed_checks_after(out, certificate["image"]["id"], unmirrored)

    # The rule is replayed on the recorded ratios: a raised ratio of the chosen candidate is caught.
    chosen = framing["screen"]["chosen"]

    def chosen_ratio_raised(tampered: dict) -> None:
        for candidate in tampered["framing"]["screen"]["candidates"]:
            if (candidate["scale"], candidate["shift"], candidate["mirror"]) == (
                    chosen["scale"], chosen["shift"], chosen["mirror"]):
                candidate["ratio"] = 9.0

    assert "framing" in failed_checks_after(out, certificate["image"]["id"], chosen_ratio_raised)
