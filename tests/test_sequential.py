"""Sequential sampling: seeds double where the rate is undecided, and every bound stays valid.

The rule (``conditions.scales_to_extend``) and the decision (``conditions.decide``) are exercised on
simulated replications, where the true rate is known: at a rate just below the minimum the
procedure may call an image memorized at most ``1 - confidence`` of the time, however many looks
it takes. The sampling stage (``verifier.sampling``) runs the stock pipeline: a seed's generation
does not depend on the look that made it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from verifier.conditions import (clopper_pearson, decide, look_confidences, sampling_looks, scales_to_extend,
                                 undecided)
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
        extended = scales_to_extend({s: draws[s][:counts[s]] for s in rates}, look, existence_holds=True,
                                    metric=SSIM(), threshold=THRESHOLD, min_rate=MIN_RATE, confidence=CONFIDENCE,
                                    looks=looks)
        if not extended:
            break
        for scale in extended:
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
    from helpers.images import write_images
    from helpers.tiny_models import build_tiny_pipeline
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
                      extend=lambda index, scores, look: (2.0,) if index == 1 else ())
    planned = sample(model, witnesses, empty, pixels, SSIM(), looks=[4], **common, extend=lambda *args: ())
    assert extended.seeds_used(0) == {1.0: 2, 2.0: 2} and extended.seeds_used(1) == {1.0: 2, 2.0: 4}
    np.testing.assert_allclose(extended.scores[1][2.0], planned.scores[1][2.0], atol=1e-5)
    np.testing.assert_allclose(extended.scores[0][1.0], planned.scores[0][1.0][:2], atol=1e-5)
    scale, seed, generation = extended.closest[1]
    assert seed in seeds and generation.shape == (16, 16, 3)
    values = extended.scores[1][scale]
    assert values[seeds.index(seed)] == np.nanmax([v for s in extended.scores[1].values() for v in s])



def _unreplicated(target: float | None, doublings: int = 3) -> tuple[dict[float, int], object]:
    """An image without the existence condition and without any replication, through the rule and decision."""
    looks = sampling_looks(16, doublings)
    misses = {1.0: _scores(np.zeros(looks[-1], dtype=bool)), 3.0: _scores(np.zeros(looks[-1], dtype=bool))}
    counts = {scale: looks[0] for scale in misses}
    for look in range(len(looks) - 1):
        extended = scales_to_extend({s: misses[s][:counts[s]] for s in misses}, look, existence_holds=False,
                                    metric=SSIM(), threshold=THRESHOLD, min_rate=MIN_RATE, confidence=CONFIDENCE,
                                    looks=looks, replication_bound=target)
        for scale in extended:
            counts[scale] = looks[look + 1]
    decision = decide(error_ratio=0.9, scores_by_scale={s: misses[s][:counts[s]] for s in misses}, metric=SSIM(),
                      threshold=THRESHOLD, max_error_ratio=0.5, min_rate=MIN_RATE, confidence=CONFIDENCE, looks=looks,
                      replication_bound=target)
    return counts, decision


@pytest.mark.parametrize(("target", "seeds"), [(None, 16), (0.25, 16), (0.2, 32), (0.1, 64), (0.05, 128)])
def test_a_not_memorized_claim_spends_the_seeds_its_target_needs(target, seeds):
    counts, decision = _unreplicated(target)
    assert counts == {1.0: seeds, 3.0: seeds}
    assert decision.verdict == "not_memorized"
    probability = decision.conditions["probability"]
    assert probability["replication_bound"] == target
    bounds = [s["upper_bound"] for s in probability["per_scale"]]
    if target is not None:
        assert max(bounds) <= target
        # One look fewer would not have reached it: exactly the seeds needed, on this doubling grid.
        if seeds > 16:
            earlier = look_confidences(CONFIDENCE, 2, 4)[sampling_looks(16, 3).index(seeds) - 1]
            assert clopper_pearson(0, seeds // 2, earlier)[1] > target
    assert f"{max(bounds):.3f} at every guidance scale" in decision.reason


def test_a_claim_whose_seeds_were_cut_short_is_inconclusive():
    looks = sampling_looks(16, 3)
    misses = {1.0: _scores(np.zeros(16, dtype=bool)), 3.0: _scores(np.zeros(16, dtype=bool))}
    decision = decide(error_ratio=0.9, scores_by_scale=misses, metric=SSIM(), threshold=THRESHOLD,
                      max_error_ratio=0.5, min_rate=MIN_RATE, confidence=CONFIDENCE, looks=looks, replication_bound=0.1)
    assert decision.verdict == "inconclusive" and "did not reach the target replication_bound 0.1" in decision.reason


def test_an_unreachable_target_is_refused_with_what_would_reach_it():
    from verifier.config import ConfigError, VerifierConfig

    with pytest.raises(ConfigError, match=r"replication_bound=0\.01 is not allowed with generations=16 and "
                                          r"sampling_doublings=3: their last look \(128 seeds per scale\) can bound "
                                          r"the replication probability by 0\.042 at best"):
        VerifierConfig(replication_bound=0.01)
    assert VerifierConfig(replication_bound=0.01, generations=128).replication_bound == 0.01


def test_certify_spends_the_seeds_a_target_needs_and_verify_replays_them(tmp_path):
    """End to end on the fixture: a never-trained image with a target of 0.3 gets 16 seeds per scale (4 -> 8 -> 16);
    its certificate records the target and passes verify, whose replay of the rule agrees."""
    from verifier.api import certify
    from verifier.config import VerifierConfig
    from verifier.reference_models import reference_model_path
    from verifier.verify import verify

    folder = reference_model_path("fixture-16px")
    config = VerifierConfig(device="cpu", generations=4, sampling_steps=10, replication_bound=0.3)
    certificate = certify(folder, [folder / "images" / "held-flower-whole.png"], tmp_path / "out", config)[0]
    probability = certificate["conditions"]["probability"]
    assert certificate["verdict"] == "not_memorized"
    assert [s["generations"] for s in probability["per_scale"]] == [16, 16]
    assert probability["replication_bound"] == 0.3 and probability["upper_bound"] <= 0.3
    assert len(certificate["witness"]["seeds"]) == 16
    result = verify(tmp_path / "out", device="cpu")
    assert result.passed, [c for c in result.checks if not c.passed]
