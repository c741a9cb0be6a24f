"""The screen over candidate framings (``verifier.screen``): its grid, its rule, and what it finds on a model."""

from __future__ import annotations

import math

import pytest

from verifier.alignment import FramingBounds
from verifier.screen import KEPT, candidate_framings, chosen, screen_cost, stages, survivors


def _candidates(ratios: list[list[float | None]]) -> list[dict]:
    return [{"scale": 1.0, "shift": [0.0, 0.1 * index], "mirror": False, "ratios": values}
            for index, values in enumerate(ratios)]


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


def test_each_screen_keeps_the_lowest_of_the_one_before_and_a_nan_ranks_last():
    first = [0.9, None, 0.5, 0.7, 0.95, 0.6, 0.8, 0.85, 0.99, 0.92, 0.4, 0.93, 0.94, 0.96, 0.97, 0.98]
    measured = survivors(_candidates([[value, None, None] for value in first]))
    assert measured[0] == list(range(len(first)))
    assert len(measured[1]) == KEPT[0] and 1 not in measured[1]
    assert set(measured[1]) == set(sorted(range(len(first)),
                                          key=lambda i: math.inf if first[i] is None else first[i])[:KEPT[0]])
    # the second screen ranks only the first's survivors, by its own ratios
    second = {index: 1.0 - 0.01 * index for index in measured[1]}
    ratios = [[value, second.get(index), None] for index, value in enumerate(first)]
    assert survivors(_candidates(ratios))[2] == sorted(sorted(measured[1], key=lambda i: second[i])[:KEPT[1]])


def test_the_framing_searched_is_the_last_screens_lowest_and_nothing_dropped_can_be_chosen():
    first = [0.9, 0.5, 0.7, 0.6, 0.8, 0.85, 0.95, 0.4, 0.99, 0.98, 0.97, 0.96, 0.94, 0.93, 0.92]
    ratios = [[value, value, None] for value in first]
    last = survivors(_candidates(ratios))[2]
    for index in last:
        ratios[index][2] = 1.0 - 0.01 * index
    ratios[last[2]][2] = 0.3
    assert chosen(_candidates(ratios)) == last[2]
    ratios[last[2]][2] = None  # not finite: ranks last
    assert chosen(_candidates(ratios)) != last[2]
    dropped = next(index for index in range(len(first)) if index not in last)
    ratios[dropped][2] = 0.01  # a ratio the rule never measured cannot win
    assert chosen(_candidates(ratios)) != dropped


@pytest.mark.parametrize("count", [25, 8])
def test_the_screens_cost_is_every_candidates_steps_but_the_chosen_ones_and_its_screens(count):
    steps = stages(60)
    assert steps == [20, 40, 60]
    record = {"steps": steps, "draws": 8, "candidates": _candidates([[0.5, 0.5, 0.5]] * count)}
    second, third = min(KEPT[0], count), min(KEPT[1], count)
    cost = screen_cost(record, inversion_noise_draws=4)
    assert cost["inversion_forward_backward"] == (count * 20 + second * 20 + third * 20 - 60) * 4
    assert cost["screen_forward"] == (2 * count + second + third) * 8
    assert cost["total"] == cost["inversion_forward_backward"] + cost["screen_forward"]
