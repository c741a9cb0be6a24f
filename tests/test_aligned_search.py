"""The aligned search (issue 22): a framing refined between the grid's points, the owner's image cut there."""

from __future__ import annotations

import numpy as np
import pytest

from verifier.alignment import Cut, Framing, FramingBounds, OwnerImage, refine
from verifier.framing import ALIGNED_SEARCH, aligned_search_runs, framing_record, witness_search


def _photo():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "reference_model"))
    from data import load_photo  # benchmarks/reference_model/data.py: the sha256-pinned source photographs

    return load_photo("chelsea").crop((60, 0, 360, 300))


@pytest.mark.parametrize("truth", [Framing(1.03, 0.4, -0.6, False), Framing(0.91, -1.3, 0.7, False),
                                   Framing(1.0, 0.25, 0.25, True)])
def test_refine_finds_a_framing_between_the_grid_points(truth):
    """An exact generation of the owner's image at a framing between grid points: refining from the nearest grid
    framing recovers it to a twentieth of a pixel and a fraction of a percent of scale."""
    owner = OwnerImage(_photo(), FramingBounds(), 32)
    generation = owner.frame(truth, 32)[0]
    grid = Framing(1.0 if truth.scale == 1.0 else min(np.exp(np.linspace(-np.log(1.25), np.log(1.25), 9)),
                                                      key=lambda s: abs(np.log(s / truth.scale))),
                   round(truth.dy), round(truth.dx), truth.mirror)
    score, found = refine(owner, generation, grid)
    assert score > 0.99
    assert abs(np.log(found.scale / truth.scale)) < 0.006
    assert abs(found.dy - truth.dy) <= 0.1 and abs(found.dx - truth.dx) <= 0.1 and found.mirror == truth.mirror


def test_refine_never_leaves_the_bounds():
    owner = OwnerImage(_photo(), FramingBounds(), 32)
    edge = Framing(1.25, 6, -6, False)  # the grid's largest scale and shift
    generation = owner.frame(Framing(1.3, 7.0, -7.0, False), 32)[0]  # the truth lies past both
    _, found = refine(owner, generation, edge)
    record = found.record(32)
    assert FramingBounds().contains(record["scale"], record["shift"], 1.0, found.mirror)


def test_a_cut_is_the_frame_with_the_uncovered_strip_filled_from_its_edge():
    owner = OwnerImage(_photo(), FramingBounds(), 32)
    inside = Framing(0.9, 0, 0, False)
    cut = owner.cut(inside, 32)
    np.testing.assert_array_equal(cut.pixels, owner.frame(inside, 32)[0])
    assert cut.covered == (0, 0, 32, 32) and cut.coverage == 1.0
    moved = Framing(1.0, 0, 4, False)  # the frame reaches 4 pixels past the right edge
    pixels, (top, left, height, width) = owner.frame(moved, 32)
    cut = owner.cut(moved, 32)
    assert (top, left, height, width) == cut.covered == (0, 0, 32, 28)
    np.testing.assert_array_equal(cut.pixels[:, :28], pixels[:, :28])
    np.testing.assert_array_equal(cut.pixels[:, 28:], np.repeat(pixels[:, 27:28], 4, axis=1))


def test_a_cut_above_the_search_side_comes_from_the_full_image():
    """At a model resolution above the search side the cut keeps the owner's detail (the search's reduced copy
    would blur a 512-pixel cut)."""
    photo = _photo()
    owner = OwnerImage(photo, FramingBounds(), 64, resolution=300)
    assert owner.image.size[0] < 300  # the search keeps a reduced copy
    cut = owner.cut(Framing(1.0, 0, 0, False), 300)
    np.testing.assert_allclose(cut.pixels, np.asarray(photo, dtype=np.float32) / 255, atol=1e-6)


def _strip_cut() -> Cut:
    """A 32-pixel cut of the photograph whose top 6 and right 10 pixels are the filler (moved up and right)."""
    cut = OwnerImage(_photo(), FramingBounds(), 32).cut(Framing(1.0, -6, 10, False), 32)
    assert cut.covered == (6, 0, 26, 22)
    return cut


def _refilled(cut: Cut, seed: int) -> Cut:
    """The same cut with other pixels (noise) in its uncovered strip."""
    pixels = np.random.default_rng(seed).random(cut.pixels.shape).astype(np.float32)
    pixels[6:, :22] = cut.pixels[6:, :22]
    return Cut(pixels, cut.covered)


def test_the_uncovered_strip_counts_in_no_latent_cell_and_turns_upside_down_with_the_twin():
    cut = _strip_cut()
    weights = cut.latent_weights((4, 4))  # 8-pixel cells: rows 1-3 (pixels 8-31) and columns 0-1 (0-15) lie inside
    expected = np.zeros((1, 4, 4), dtype=np.float32)
    expected[:, 1:, :2] = 1
    np.testing.assert_array_equal(weights.numpy(), expected)
    twin = cut.upside_down()
    assert twin.covered == (0, 0, 26, 22)
    np.testing.assert_array_equal(twin.pixels, cut.pixels[::-1])
    np.testing.assert_array_equal(twin.latent_weights((4, 4)).numpy(), expected[:, ::-1])


def test_similarity_and_part_windows_on_a_cut_do_not_see_its_filler():
    """Whatever fills the uncovered strip, a cut's scores are the same; windows reaching into it are not scored."""
    from verifier.alignment import FramedSimilarity
    from verifier.regions import WindowSSIM
    from verifier.similarity import SSIM

    cut, generations = _strip_cut(), np.random.default_rng(0).random((3, 32, 32, 3)).astype(np.float32)
    generations[0] = cut.pixels  # one exact copy
    metric = FramedSimilarity(SSIM(None))
    scores = metric(generations, cut)
    np.testing.assert_array_equal(scores, metric(generations, _refilled(cut, 1)))
    assert scores[0] == pytest.approx(1.0) and scores[1] < 0.5
    windows = WindowSSIM(32)(generations, cut)
    np.testing.assert_array_equal(windows, WindowSSIM(32)(generations, _refilled(cut, 2)))
    # Of the 3x3 windows (16 px, every 8 px), those wholly inside rows 6-31 and columns 0-21 are the ones at
    # top 8 or 16 and left 0: two.
    assert np.isfinite(windows[0]).sum() == 2 and np.isfinite(windows[0, [3, 6]]).all()


def test_an_error_with_weights_counts_the_marked_latent_cells_only():
    """The objective's weighted loss equals the plain loss on the marked cells; all ones give the plain loss."""
    import torch

    from verifier.objectives import _Objective

    class Plain(_Objective):
        def target(self, z0, noise, timesteps):
            return noise

    prediction = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    weights = torch.zeros(2, 1, 4, 4)
    weights[:, :, 1:, :2] = 1
    loss = Plain().loss(prediction, None, noise, None, weights)
    plain = ((prediction - noise)[:, :, 1:, :2]).pow(2).flatten(1).mean(dim=1)
    torch.testing.assert_close(loss, plain)
    torch.testing.assert_close(Plain().loss(prediction, None, noise, None, torch.ones(2, 1, 4, 4)),
                               Plain().loss(prediction, None, noise, None))


def _summary(replications: int) -> dict:
    return {"verdict": "not_memorized" if replications == 0 else "memorized", "error_ratio": 0.9,
            "replications": replications, "generations": 32}


def test_the_aligned_search_runs_only_where_the_framing_search_found_nothing():
    nothing, some = _summary(0), _summary(5)
    assert aligned_search_runs(nothing)
    assert not aligned_search_runs(None)  # the framing search did not run: the first witness replicated
    assert not aligned_search_runs(some)
    assert witness_search(nothing, some) == ALIGNED_SEARCH
    assert witness_search(nothing, nothing) == "owner's framing"
    # The aligned search is a whole search at the framing the model points to: an error under the existence
    # threshold there without a replication (inconclusive) is not cleared by the owner's framing.
    existence_only = {"verdict": "inconclusive", "error_ratio": 0.42, "replications": 0, "generations": 32}
    assert witness_search(nothing, existence_only) == ALIGNED_SEARCH
    assert witness_search(existence_only, None) == "owner's framing"  # the framing search needs a replication
    record = framing_record(searched=True, enabled=True, mirror_enabled=False, scales_enabled=True, first=nothing,
                            framed=nothing,
                            aligned=existence_only, aligned_framing=Framing(1.1, 2, -3, False).record(32),
                            closest_framing=None, evaluations=None, aligned_evaluations=None)
    assert record["witness"] == ALIGNED_SEARCH and "inconclusive (error ratio 0.420)" in record["statement"]


def test_a_copy_the_framing_search_misses_is_found_at_the_refined_framing_and_verify_rechecks_it(tmp_path):
    """reference-32px's rocket moved by 15% of its side: neither the owner's framing nor the framing search with
    a shift-only screen of 60 steps (``framing_scales`` off, ``framing_steps`` 60) replicates it (0 and 0 of 32 on
    2026-12-06; with scales in the screen the framing search replicates it, 4 of 32, 2026-12-07, and with 120 steps
    alone 1 of 32); the aligned search does, and verify re-cuts the owner's image at the recorded framing to
    re-measure the error and re-score the generations."""
    import sys
    from pathlib import Path

    from helpers.tampering import failed_checks_after
    from verifier.api import certify
    from verifier.config import VerifierConfig
    from verifier.reference_models import reference_model_path
    from verifier.verify import verify

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import owner_copies

    model = reference_model_path("reference-32px")
    record = owner_copies.build(model, tmp_path / "copies", never_trained=0, seed=0)
    moved = next(c for c in record["copies"] if c["id"] == "dup03-rocket-x2000.moved-15")
    out = tmp_path / "run"
    (certificate,) = certify(model, [tmp_path / "copies" / moved["file"]], out,
                             VerifierConfig(device="cpu", framing_scales=False, framing_steps=60))
    framing = certificate["framing"]
    assert framing["first_search"]["replications"] == 0 and framing["framing_search"]["replications"] == 0
    assert framing["witness"] == "aligned search", framing["statement"]
    assert certificate["verdict"] in ("memorized", "rarely_reproduced"), certificate["verdict_reason"]
    aligned = framing["aligned_framing"]
    assert framing["closest_framing"] == aligned and FramingBounds().contains(aligned["scale"], aligned["shift"], 1.0,
                                                                              aligned["mirror"])
    assert any(abs(value * 32 - round(value * 32)) > 1e-6 for value in aligned["shift"])  # between the grid's pixels
    owner = OwnerImage.open(tmp_path / "copies" / moved["file"], FramingBounds(), 32)
    cut = owner.cut(Framing(aligned["scale"], aligned["shift"][0] * 32, aligned["shift"][1] * 32, False), 32)
    assert cut.coverage < 1  # the frame reaches past the copy: its strip is filler, counted nowhere
    assert certificate["budget"]["aligned_denoiser_evaluations"] == framing["aligned_denoiser_evaluations"]
    result = verify(out)
    assert result.passed, [check for check in result.checks if not check.passed]
    def moved_by_a_pixel(tampered: dict) -> None:  # the cut is another image: its errors are not the recorded ones
        tampered["framing"]["aligned_framing"]["shift"][1] += 1 / 32
        tampered["framing"]["closest_framing"] = tampered["framing"]["aligned_framing"]

    assert "prediction error" in failed_checks_after(out, certificate["image"]["id"], moved_by_a_pixel)
    # A certificate that hides the aligned search behind the owner's framing fails the framing rule.
    assert "framing" in failed_checks_after(out, certificate["image"]["id"],
                                            lambda tampered: tampered["framing"].update(witness="owner's framing"))
