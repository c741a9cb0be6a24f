"""The demo's ground truth for never-trained crops that re-frame a memorized crop (issue 22), from geometry only."""

import math

import numpy as np
import pytest
from PIL import Image

from verifier.alignment import FramingBounds, OwnerImage
from verifier.cli.demo import ground_truth
from verifier.framing import BOUNDS
from verifier.reference_models import WHOLE_IMAGE_MODELS, load_manifest, reference_model_path, reframed_copy


def crop(photo="p", top=0, left=0, size=100, flip=False, memorized=False, split="held_out", id="x"):
    return {"id": id, "memorized": memorized, "split": split, "duplication": 0, "replications": 0, "generations": 8,
            "source": {"photo": photo, "top": top, "left": left, "size": size, "flip": flip}}


def test_the_rocket_crop_of_every_family_is_a_reframed_copy_of_the_memorized_rocket():
    """Where a family memorized the rocket photograph (all but the fixture, which did not train it), its
    held-out rocket crop is that photograph framed 12% tighter; no never-trained photograph is a copy."""
    for name in WHOLE_IMAGE_MODELS:
        manifest = load_manifest(name)
        rocket = any(image["memorized"] and image["source"]["photo"] == "rocket" for image in manifest["images"])
        assert rocket == (name != "fixture-16px")
        for image in manifest["images"]:
            copy = reframed_copy(image, manifest)
            if image["id"] == "held00-rocket-crop" and rocket:
                assert copy["memorized_image"].startswith("dup03-rocket"), name
                assert copy["scale"] == pytest.approx(427 / 374, abs=1e-4) and not copy["mirror"]
                assert ground_truth(image, manifest)[0] == ("memorized", "rarely_reproduced", "inconclusive")
            elif image["split"] == "held_out" and not image["source"]["source_in_training"]:
                assert copy is None and ground_truth(image, manifest)[0] == ("not_memorized",), (name, image["id"])


def test_the_relation_is_the_framing_the_search_finds():
    """reframed_copy's scale and shift mean what alignment's Framing means: the search, given the memorized
    image as a generation and the rocket crop as the owner's image, lands within one grid step of it."""
    folder, manifest = reference_model_path("reference-32px"), load_manifest("reference-32px")
    images = {image["id"]: image for image in manifest["images"]}
    copy = reframed_copy(images["held00-rocket-crop"], manifest)
    owner = OwnerImage.open(folder / images["held00-rocket-crop"]["file"], BOUNDS, 32)
    generation = np.asarray(Image.open(folder / images[copy["memorized_image"]]["file"]).convert("RGB"),
                            dtype=np.float32)[None] / 255
    score, (framing,) = owner.best(generation)
    record = framing.record(owner.side)
    scale_step = math.log(BOUNDS.max_scale) * 2 / (BOUNDS.scale_steps - 1)
    assert score[0] > 0.9
    assert abs(math.log(record["scale"] / copy["scale"])) <= scale_step / 2 + 1e-6
    assert all(abs(a - b) <= 1 / owner.side for a, b in zip(record["shift"], copy["shift"]))
    assert record["mirror"] is False


@pytest.mark.parametrize(("owner", "expected"), [
    (crop(size=90, top=5, left=5), {"scale": 1.1111, "shift": [0.0, 0.0], "mirror": False}),
    (crop(size=90, top=5, left=5, flip=True), {"scale": 1.1111, "shift": [0.0, 0.0], "mirror": True}),
    (crop(size=100, left=15), {"scale": 1.0, "shift": [0.0, -0.15], "mirror": False}),
    (crop(size=100, left=15, flip=True), {"scale": 1.0, "shift": [0.0, -0.15], "mirror": True}),
    (crop(size=100, left=25), None),  # moved by a quarter of the side: outside the 20% bound
    (crop(size=75), None),  # the frame 1.33x the owner's image: outside the 1.25x bound
    (crop(size=100, photo="q"), None),  # another photograph
])
def test_reframed_copy_places_the_memorized_box_on_the_owner_crop(owner, expected):
    manifest = {"images": [crop(size=100, memorized=True, split="duplicated", id="m"), owner]}
    copy = reframed_copy(owner, manifest)
    if expected is None:
        assert copy is None
    else:
        assert {key: copy[key] for key in expected} == expected and copy["memorized_image"] == "m"


def test_bounds_contain_every_framing_of_their_grid_and_nothing_past_it():
    bounds = FramingBounds()
    for framing in bounds.framings(32):
        record = framing.record(32)
        assert bounds.contains(record["scale"], record["shift"], 1.0, record["mirror"])
    assert not bounds.contains(bounds.max_scale * 1.01, (0, 0), 1.0, False)
    assert not bounds.contains(1.0, (0, bounds.max_shift + 0.01), 1.0, False)
    assert not bounds.contains(1.0, (0, 0), bounds.min_overlap - 0.01, False)
    assert not FramingBounds(mirror=False).contains(1.0, (0, 0), 1.0, True)


def test_a_trained_image_that_is_not_memorized_is_shown_not_scored():
    image = crop(split="seen_once", id="once")
    assert ground_truth(image, {"images": [image]})[0] is None
