"""Sequential sampling: seeds double where the rate is undecided, and every bound stays valid.

The rule (``conditions.scale_to_extend``) and the decision (``conditions.decide``) are exercised on
simulated replications, where the true rate is known: at a rate just below the minimum the
procedure may call an image memorized at most ``1 - confidence`` of the time, however many looks
it takes. The sampling stage (``verifier.sampling``) runs the stock pipeline: a seed's generation
does not depend on the look that made it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from verifier.conditions import decide, look_confidences, sampling_looks, scale_to_extend, undecided
from verifier.similarity import SSIM

CONFIDENCE, MIN_RATE, THRESHOLD = 0.95, 0.25, 0.7


def test_the_looks_and_their_confidences_spend_exactly_the_error_rate():
    assert sampling_looks(16, 3) == [16, 32, 64, 128]
    assert sampling_looks(16, 0) == [16]
    assert look_confidences(0.95, 2, 1) == [1 - 0.05 / 2]  # a single look: Bonferroni over the scales
    for scales, looks in ((1, 2), (2, 4), (3, 3)):
        spent = scales * sum(1 - c for c in look_confidences(0.95, scales, looks))
        assert spent == pytest.approx(0.05)


def test_undecided_means_the_bounds_straddle_the_minimum_rate():
    confidence = look_confidences(CONFIDENCE, 2, 4)[0]
    assert undecided(7, 16, confidence, MIN_RATE)  # XL's rocket at the first look
    assert not undecided(16, 16, confidence, MIN_RATE)  # settled: memorized
    assert not undecided(0, 16, confidence, MIN_RATE)  # no replication: nothing to settle
    assert not undecided(1, 64, look_confidences(CONFIDENCE, 2, 4)[2], MIN_RATE)  # settled: below the minimum


def _scores(hits: np.ndarray) -> np.ndarray:
    return np.where(hits, 0.9, 0.1)


def _run(rng, rates: dict[float, float], doublings: int) -> tuple[str, int]:
    """One image through the real rule and decision, with replications drawn at the given true rates."""
    looks = sampling_looks(16, doublings)
    draws = {scale: _scores(rng.random(looks[-1]) < rate) for scale, rate in rates.items()}
    counts = {scale: looks[0] for scale in rates}
    for look in range(len(looks) - 1):
        scale = scale_to_extend({s: draws[s][:counts[s]] for s in rates}, look, existence_holds=True, metric=SSIM(),
                                threshold=THRESHOLD, min_rate=MIN_RATE, confidence=CONFIDENCE, looks=looks)
        if scale is None:
            break
        counts[scale] = looks[look + 1]
    decision = decide(error_ratio=0.1, scores_by_scale={s: draws[s][:counts[s]] for s in rates}, metric=SSIM(),
                      threshold=THRESHOLD, max_error_ratio=0.5, min_rate=MIN_RATE, confidence=CONFIDENCE, looks=looks)
    assert not [s for s in decision.conditions["probability"]["per_scale"] if s["generations"] not in looks]
    return decision.verdict, sum(counts.values())


def test_the_procedure_keeps_its_error_rate_at_the_minimum_rate():
    """True rate at the minimum on both scales: `memorized` is a false claim; it must stay under 5%."""
    rng = np.random.default_rng(0)
    runs = 1500
    false_claims = sum(_run(rng, {1.0: MIN_RATE, 3.0: MIN_RATE}, doublings=3)[0] == "memorized" for _ in range(runs))
    # 5% plus three binomial standard errors; the union bound makes the true rate lower still.
    assert false_claims / runs <= 0.05 + 3 * (0.05 * 0.95 / runs) ** 0.5, false_claims


def test_looking_again_finds_images_a_single_look_cannot_settle():
    """A rate of 0.45 at one scale (what XL's rocket showed): 16 seeds rarely settle it, doubling usually does."""
    rng = np.random.default_rng(1)
    rates = {1.0: 0.05, 3.0: 0.45}
    single = [_run(rng, rates, doublings=0) for _ in range(300)]
    sequential = [_run(rng, rates, doublings=3) for _ in range(300)]
    found_single = sum(verdict == "memorized" for verdict, _ in single) / 300
    found_sequential = sum(verdict == "memorized" for verdict, _ in sequential) / 300
    assert found_single < 0.5 < 0.9 < found_sequential, (found_single, found_sequential)
    # Clear images stop at the first look: a rate of 0.95 costs 16 seeds per scale.
    assert {_run(rng, {1.0: 0.95, 3.0: 0.95}, doublings=3)[1] for _ in range(20)} == {32}


def test_a_seed_gives_the_same_generation_at_any_look(tmp_path):
    """Seeds 2-3 made at a later look equal seeds 2-3 made at the first look of a larger plan."""
    from conftest_images import write_images
    from tiny_models import build_tiny_pipeline
    from verifier.images import prepare_image
    from verifier.models import load_model
    from verifier.sampling import sample

    model = load_model(build_tiny_pipeline(tmp_path / "model"), device="cpu")
    pixels = [prepare_image(path, 16) for path in write_images(tmp_path / "images", count=2)]
    witnesses = model.empty_conditioning().expand(2)
    noise = torch.Generator().manual_seed(0)
    witnesses = witnesses.map(lambda tensor: tensor + 0.1 * torch.randn(tensor.shape, generator=noise))
    empty, seeds = model.empty_conditioning(), [11, 12, 13, 14]
    common = dict(seeds=seeds, scales=(1.0, 2.0), steps=2, resolution=16)
    extended = sample(model, witnesses, empty, pixels, SSIM(), looks=[2, 4], **common,
                      extend=lambda index, scores, look: 2.0 if index == 1 else None)
    planned = sample(model, witnesses, empty, pixels, SSIM(), looks=[4], **common, extend=lambda *args: None)
    assert extended.seeds_used(0) == {1.0: 2, 2.0: 2} and extended.seeds_used(1) == {1.0: 2, 2.0: 4}
    np.testing.assert_allclose(extended.scores[1][2.0], planned.scores[1][2.0], atol=1e-5)
    np.testing.assert_allclose(extended.scores[0][1.0], planned.scores[0][1.0][:2], atol=1e-5)
    scale, seed, generation = extended.closest[1]
    assert seed in seeds and generation.shape == (16, 16, 3)
    values = extended.scores[1][scale]
    assert values[seeds.index(seed)] == np.nanmax([v for s in extended.scores[1].values() for v in s])

