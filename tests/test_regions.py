"""Partial replication (verifier.regions): windows, window scores, the candidate rule, the twin control."""

from __future__ import annotations

import numpy as np
import pytest

from verifier.regions import WindowSSIM, best_window, fewest_specific_replications, part_record, windows


def test_windows_are_a_three_by_three_grid_of_half_side_windows():
    assert windows(32) == [(top, left, 16) for top in (0, 8, 16) for left in (0, 8, 16)]
    assert windows(512)[-1] == (256, 256, 256) and len(windows(512)) == 9
    assert all(top + side <= 16 and left + side <= 16 for top, left, side in windows(16))


def test_a_window_scores_high_only_where_the_generation_copies_the_image():
    rng = np.random.default_rng(0)
    image = rng.random((32, 32, 3))
    generation = rng.random((32, 32, 3))
    generation[16:, 16:] = image[16:, 16:]  # the bottom-right window copied, the rest unrelated
    scores = WindowSSIM(32)(generation[None], image)
    assert scores.shape == (1, 9)
    untouched = [0, 1, 2, 3, 6]  # the windows that do not overlap the copied quarter
    assert scores[0, 8] == pytest.approx(1.0) and scores[0, untouched].max() < 0.3 and scores[0, :8].max() < 0.7
    assert WindowSSIM(32).replications(scores).tolist() == [0] * 8 + [1]


def test_windows_of_a_tiny_image_are_scored_with_a_window_they_hold():
    image = np.random.default_rng(1).random((8, 8, 3))
    scores = WindowSSIM(8)(image[None], image)  # 4-pixel windows: SSIM over 3 x 3 neighbourhoods
    assert scores.shape == (1, 9) and np.allclose(scores, 1.0)


def test_the_candidate_needs_as_many_replications_as_fisher_needs_against_a_twin_with_none():
    # 4 of 16 against 0 of 16: p = 0.0506 (not significant at 95%); 5 of 16: p = 0.0217.
    assert fewest_specific_replications(16, 0.95) == 5
    assert fewest_specific_replications(2, 0.95) is None  # 2 of 2 against 0 of 2: p = 1/6
    assert fewest_specific_replications(16, 0.99) > 5


def scores_with(replications: int, window: int, seeds: int = 16) -> np.ndarray:
    scores = np.full((seeds, 9), 0.2)
    scores[:replications, window] = 0.9
    return scores


@pytest.mark.parametrize("verdict, twin_replications, candidate, found", [
    ("not_memorized", 0, True, True),
    ("not_memorized", 8, True, False),  # the twin's best window replicates as often: not specific
    ("memorized", 0, False, False),  # the whole image is reproduced: nothing to add
    ("inconclusive", 0, True, True),  # the error fell but the whole image was not replicated: a part may explain it
])
def test_a_part_is_found_only_against_a_twin_that_does_not_replicate(verdict, twin_replications, candidate, found):
    metric = WindowSSIM(32)
    window_scores = {1.0: scores_with(3, 4), 3.0: scores_with(8, 2)}
    control = {"guidance_scale": 3.0, "scores": scores_with(twin_replications, 6)}  # the twin's own best window
    record = part_record(verdict, window_scores, metric, 16, 0.95, control if candidate else None)
    assert record["best"]["window"] == 2 and record["best"]["guidance_scale"] == 3.0
    assert record["best"]["replications"] == 8 and record["best"]["box"] == [0, 16, 16]
    assert record["candidate"] is candidate and record["found"] is found
    if candidate:
        assert record["control"]["window"] == (6 if twin_replications else 0)
        assert record["control"]["replications"] == twin_replications
    assert ("a part is replicated" in record["statement"]) is found


def test_too_few_replications_are_not_a_candidate():
    record = part_record("not_memorized", {1.0: scores_with(4, 0), 3.0: scores_with(1, 3)}, WindowSSIM(32), 16, 0.95,
                         None)
    assert not record["candidate"] and not record["found"] and "too few" in record["statement"]


def test_the_best_window_is_chosen_among_the_first_looks_seeds_only():
    later = np.full((32, 9), 0.2)
    later[16:, 5] = 0.9  # replications only among seeds 17-32
    assert best_window({1.0: later}, WindowSSIM(32), 16)["replications"] == 0


PART_MODEL = "reference-part-32px"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The part model's first composite whose logo its caption replicates, and the first decoy, with defaults but
    the framing search: both are never-trained pictures, so the search (most of a clean verdict's cost) would run
    on each and change nothing here (no framing of them replicates; the part is scored at the owner's framing).
    The same with the whole default config is a field test (below)."""
    out = tmp_path_factory.mktemp("parts") / "certs"
    _certify_composite_and_decoy(out, framing_search=False)
    return out


def _certify_composite_and_decoy(out, framing_search: bool) -> list[dict]:
    from verifier.api import certify
    from verifier.config import VerifierConfig
    from verifier.reference_models import load_manifest, reference_model_path

    manifest = load_manifest(PART_MODEL)
    composite = next(i for i in manifest["images"] if i["split"] == "part_composite" and i["part_replicated"])
    decoy = next(i for i in manifest["images"] if i["split"] == "part_decoy")
    folder = reference_model_path(PART_MODEL)
    return certify(folder, [folder / composite["file"], folder / decoy["file"]], out,
                   VerifierConfig(device="cpu", decode_witness=False, framing_search=framing_search))


@pytest.mark.field
def test_the_part_is_found_with_the_whole_default_config(tmp_path):
    """The composite and decoy of ``run`` with the framing search on, as a user runs them."""
    found, missed = _certify_composite_and_decoy(tmp_path / "certs", framing_search=True)
    assert found["framing"]["searched"] and missed["framing"]["searched"]
    assert [found["verdict"], missed["verdict"]] == ["not_memorized", "not_memorized"]
    assert found["part_replication"]["found"] and not missed["part_replication"]["found"]


def _read(run, split: str) -> tuple[dict, dict]:
    import json

    from verifier.reference_models import load_manifest

    image = next(i for i in load_manifest(PART_MODEL)["images"] if i["split"] == split
                 and (run / f"{i['id']}.json").is_file())
    return image, json.loads((run / f"{image['id']}.json").read_text())


def test_a_stamped_logo_is_found_in_its_composite_and_not_in_its_decoy(run):
    import json

    composite, certificate = _read(run, "part_composite")
    part = certificate["part_replication"]
    assert certificate["verdict"] == "not_memorized"  # the whole picture was never trained
    assert part["found"] and part["candidate"] and part["control"]["witness_specific"]
    top, left, side = part["best"]["box"]
    logo = composite["part"]
    assert top <= logo["top"] and left <= logo["left"]  # the best window holds the logo
    assert logo["top"] + logo["size"] <= top + side and logo["left"] + logo["size"] <= left + side
    assert certificate["budget"]["part_control_denoiser_evaluations"]["total"] > 0
    _, decoy = _read(run, "part_decoy")
    assert not decoy["part_replication"]["found"] and decoy["budget"]["part_control_denoiser_evaluations"] is None
    summary = json.loads((run / "summary.json").read_text())
    assert summary["parts_found"] == 1
    assert {row["id"]: row["part_found"] for row in summary["images"]} == {composite["id"]: True,
                                                                          decoy["image"]["id"]: False}
    report = (run / "report.html").read_text()
    window = part["best"]["window"]  # every generation whose part window replicates is marked, at every scale
    marked = sum(row[window] is not None and row[window] >= part["threshold"]
                 for scale in part["per_scale"] for row in scale["scores"])
    assert marked >= part["best"]["replications"]
    assert report.count("tile sheet-0 part-hit") + report.count("tile sheet-0 hit part-hit") == marked


def test_verify_replays_the_part_and_catches_an_edited_window_score(run, copy):
    import json

    from verifier.verify import verify

    held = verify(run)
    assert held.passed, [check for check in held.checks if not check.passed]
    assert any(check.name.startswith("part windows") and check.passed for check in held.checks)
    _, certificate = _read(copy, "part_composite")
    part = certificate["part_replication"]
    rows = next(s["scores"] for s in part["per_scale"] if s["guidance_scale"] == part["best"]["guidance_scale"])
    hit = next(index for index, row in enumerate(rows) if row[part["best"]["window"]] >= part["threshold"])
    rows[hit][part["best"]["window"]] = 0.1  # one replication of the part erased
    (copy / f"{certificate['image']['id']}.json").write_text(json.dumps(certificate))
    edited = verify(copy)
    assert any(check.name == "part replication" and not check.passed for check in edited.checks)
