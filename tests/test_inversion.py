"""Inversion's schedule: every image gets ``inversion_steps``; images whose grid error still falls go on,
each exactly as if it were alone, until the error levels off or ``inversion_max_steps``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from verifier.error import prediction_error
from verifier.images import prepare_image
from verifier.invert import InversionSchedule, InversionSearch, image_generator, invert
from verifier.models import load_model
from verifier.reference_models import load_manifest, reference_model_path
from verifier.spaces import TokenEmbeddingSpace

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def fixture():
    folder = reference_model_path("fixture-16px")
    model = load_model(folder, device="cpu")
    rows = load_manifest("fixture-16px")["images"][:3]
    z0 = model.encode_images([prepare_image(folder / row["file"], model.resolution) for row in rows])
    return model, TokenEmbeddingSpace(model, 4), z0, [row["sha256"] for row in rows]


def schedule(steps=4, max_steps=12, window=4, min_drop=0.0):
    return InversionSchedule(steps=steps, max_steps=max_steps, window=window, min_drop=min_drop,
                             error_timesteps=3, error_noise_draws=2)


def run(fixture, plan, rows=slice(None)):
    model, space, z0, hashes = fixture
    empty = prediction_error(model, z0[rows], model.empty_conditioning().expand(len(hashes[rows])), timesteps=3,
                             noise_draws=2)
    return invert(model, space, z0[rows], hashes[rows], schedule=plan, empty_errors=empty.mean(1), learning_rate=0.1,
                  noise_draws=2, seed=0)


def test_dropping_images_keeps_each_remaining_image_s_adam_state(fixture):
    """An image that goes on after others stopped follows exactly the path it follows alone."""
    model, space, z0, hashes = fixture
    generators = lambda names: [image_generator(0, sha, "inversion") for sha in names]  # noqa: E731
    together = InversionSearch(model, space, z0[:2], generators(hashes[:2]), 0.1, 2)
    together.run(3)
    together.keep([1])
    curve = together.run(3)
    alone = InversionSearch(model, space, z0[1:2], generators(hashes[1:2]), 0.1, 2)
    alone_curve = alone.run(6)
    torch.testing.assert_close(curve[0], alone_curve[0, 3:], rtol=1e-4, atol=1e-6)
    for name in alone.variables:
        torch.testing.assert_close(together.variables[name], alone.variables[name], rtol=1e-3,
                                   atol=1e-3 * space.scales[name])


def test_images_whose_error_levels_off_stop_and_the_rest_go_on_to_the_limit(fixture):
    never_enough = run(fixture, schedule(min_drop=0.99))
    assert never_enough.steps == [4, 4, 4]
    assert [[step for step, _ in checks] for checks in never_enough.checks] == [[0, 4]] * 3
    any_fall = run(fixture, schedule(min_drop=0.0))
    for checks, steps in zip(any_fall.checks, any_fall.steps):
        means = [ratio for _, ratio in checks]
        # It went on exactly while each window lowered its ratio, and stopped at the first that did not.
        assert [step for step, _ in checks] == list(range(0, steps + 1, 4))
        assert all(means[i] < means[i - 1] for i in range(1, len(means) - 1))
        assert steps == 12 or means[-1] >= means[-2]
    assert max(any_fall.steps) > 4, "no image's error fell over a window: the test shows nothing"
    fixed = run(fixture, schedule(max_steps=4))
    assert fixed.steps == [4, 4, 4] and all(len(checks) == 1 for checks in fixed.checks)


def test_the_witness_error_is_the_last_check_and_the_schedule_is_batch_invariant(fixture):
    model, space, z0, hashes = fixture
    plan = schedule(min_drop=0.0)
    together, alone = run(fixture, plan), run(fixture, plan, slice(2, 3))
    assert together.steps[2] == alone.steps[0] and len(together.loss_curves[2]) == together.steps[2]
    for name in together.variables:
        torch.testing.assert_close(together.variables[name][2], alone.variables[name][0], rtol=1e-3,
                                   atol=1e-3 * space.scales[name])
    remeasured = prediction_error(model, z0, together.conditioning, timesteps=3, noise_draws=2)
    torch.testing.assert_close(remeasured, together.errors, rtol=1e-4, atol=1e-7)
    empty = prediction_error(model, z0, model.empty_conditioning().expand(3), timesteps=3, noise_draws=2)
    np.testing.assert_allclose([checks[-1][1] for checks in together.checks], together.errors.mean(1) / empty.mean(1),
                               rtol=1e-6)
