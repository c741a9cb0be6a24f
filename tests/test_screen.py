"""The screen over candidate framings (``verifier.screen``): its grid, its rule, and what it finds on a model."""

from __future__ import annotations

import math

import pytest

from verifier.alignment import FramingBounds
from verifier.screen import candidate_framings, chosen, screen_cost


def _candidates(ratios: list[float | None]) -> list[dict]:
    return [{"scale": 1.0, "shift": [0.0, 0.1 * index], "mirror": False, "ratio": value}
            for index, value in enumerate(ratios)]


def test_the_candidates_are_the_shift_grid_within_the_bounds_at_scale_one():
    framings = candidate_framings(FramingBounds(), 32)
    shifts = sorted({round(framing.dy / 32, 9) for framing in framings})
    assert shifts == [-0.2, -0.1, 0.0, 0.1, 0.2] and len(framings) == 25
    assert all(framing.scale == 1.0 and not framing.mirror for framing in framings)
    assert any(framing.dy == 0 and framing.dx == 0 for framing in framings)  # the owner's framing is a candidate
    narrow = candidate_framings(FramingBounds(max_shift=0.1), 32)
    assert len(narrow) == 9 and max(abs(framing.dx) for framing in narrow) <= 0.1 * 32 + 1e-9
    mirrored = candidate_framings(FramingBounds(), 32, mirror=True)
    assert len(mirrored) == 50 and sum(framing.mirror for framing in mirrored) == 25
    scaled = candidate_framings(FramingBounds(), 32, scales=True)
    assert sorted({round(framing.scale, 9) for framing in scaled}) == [0.8, 1.0, 1.25] and len(scaled) == 75
    assert [framing for framing in scaled if framing.scale == 1.0] == framings  # the scale-1 grid, unchanged
    assert len(candidate_framings(FramingBounds(), 32, mirror=True, scales=True)) == 150


def test_the_framing_searched_is_the_lowest_ratio_ties_to_the_earlier_and_a_nan_ranks_last():
    ratios = [0.9, None, 0.5, 0.7, 0.95, 0.6, 0.8, 0.5, 0.99]
    assert chosen(_candidates(ratios)) == 2  # 0.5 twice: the earlier
    ratios[2] = math.nan
    assert chosen(_candidates(ratios)) == 7
    assert chosen(_candidates([None, None, math.inf])) == 0  # nothing finite: the first, and no error


@pytest.mark.parametrize("count", [71, 25, 8])
def test_the_screens_cost_is_every_other_candidates_steps_and_two_forwards_per_draw(count):
    """Every candidate is inverted for all of its steps (the chosen one's steps are the framing search's own),
    and each is screened under its witness and under the empty prompt at every draw."""
    from verifier.config import VerifierConfig

    steps = VerifierConfig().framing_steps
    record = {"steps": steps, "draws": 8, "candidates": _candidates([0.5] * count)}
    cost = screen_cost(record, inversion_noise_draws=4)
    assert cost["inversion_forward_backward"] == (count - 1) * steps * 4
    assert cost["screen_forward"] == 2 * count * 8
    assert cost["total"] == cost["inversion_forward_backward"] + cost["screen_forward"]
    if count == 71:
        assert cost["total"] == 34_736  # a square owner's image with scales, 120 steps (docs/owner-copies.md)


def test_the_screen_inverts_every_candidate_for_framing_steps_and_verify_holds_it_to_the_config(tiny_model, tmp_path):
    """The screen's budget is its own (``framing_steps``), not the first search's ``inversion_steps``: a weakly
    memorized image in a re-framed copy is found after 90-120 steps (docs/owner-copies.md)."""
    from helpers.images import write_images
    from helpers.tampering import failed_checks_after

    from verifier.api import certify
    from verifier.config import VerifierConfig
    from verifier.invert import InversionSchedule

    config = VerifierConfig(device="cpu", inversion_steps=2, framing_steps=5, inversion_noise_draws=2,
                            error_timesteps=3, error_noise_draws=2, generations=2, sampling_doublings=0,
                            guidance_scales=(2.0,), sampling_steps=2, decode_witness=False)
    assert InversionSchedule.of(config, fixed=True).steps == 5 and InversionSchedule.of(config).steps == 2
    out = tmp_path / "run"
    (certificate,) = certify(tiny_model, write_images(tmp_path / "images", count=1), out, config)
    framing = certificate["framing"]
    assert framing["searched"], "a random tiny model reproduces nothing: the framing search runs"
    screen = framing["screen"]
    assert screen["steps"] == 5
    cost = framing["denoiser_evaluations"]["witness"]["screen"]
    assert cost["inversion_forward_backward"] == (len(screen["candidates"]) - 1) * 5 * 2
    # A screen recorded with other steps than the config's is caught.
    assert "framing" in failed_checks_after(out, certificate["image"]["id"],
                                            lambda tampered: tampered["framing"]["screen"].update(steps=2))
