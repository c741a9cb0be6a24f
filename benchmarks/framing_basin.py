"""How far off the training framing can an owner's copy be before inversion stops finding the memorized conditioning?

    python benchmarks/framing_basin.py --model reference-32px            # the true caption's error ratio per shift
    python benchmarks/framing_basin.py --model reference-32px --invert   # plus inversions at each noise floor

Part 1 (no inversion): for memorized whole photographs of a reference model, the photograph is cut at the
trained box moved right by 0, 0.5, 1, 2, 3 and 5 model pixels, at the trained scale and 10% tighter, and the
true caption's prediction error over the empty prompt's is printed per timestep of the grid (8 noise draws,
common random numbers). Part 2 (``--invert``): owner copies (moved 8% and 15%, shrunk 10% and 20%) are
inverted (60 Adam steps, the default learning rate and draws) with training timesteps drawn from every noise
level and from the noisiest 40% and 20%; 8 seeds at guidance 3 are generated from each witness and compared
with the trained image (best SSIM) and with the owner's copy framed best (``verifier.alignment``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent / "reference_model"))
from data import load_photo  # noqa: E402

IMAGES = ("dup01-chelsea-x3000", "dup02-coffee-x2000", "dup04-china-x1500")
SHIFTS = (0, 0.5, 1, 2, 3, 5)
OWNER_BOXES = {"moved-8": (0.08, 1.0), "moved-15": (0.15, 1.0), "shrunk-10": (0.0, 0.9), "shrunk-20": (0.0, 0.8)}


def cut(photo: Image.Image, centre_x: float, centre_y: float, side: float, resolution: int) -> np.ndarray:
    box = (centre_x - side / 2, centre_y - side / 2, centre_x + side / 2, centre_y + side / 2)
    return np.asarray(photo.resize((resolution, resolution), Image.Resampling.BICUBIC, box=box), dtype=np.float32) / 255


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="reference-32px")
    parser.add_argument("--invert", action="store_true")
    arguments = parser.parse_args()

    from skimage.metrics import structural_similarity

    from verifier.alignment import FramingBounds, OwnerImage
    from verifier.error import prediction_error
    from verifier.invert import InversionSchedule, invert
    from verifier.models.loading import load_model
    from verifier.reference_models import reference_model_path
    from verifier.registry import INVERSION_SPACES

    folder = reference_model_path(arguments.model)
    manifest = {image["id"]: image for image in json.loads((folder / "manifest.json").read_text())["images"]}
    model = load_model(folder, device="cpu")
    resolution = model.resolution
    model.configure_objective("native", "logit_normal", resolution)
    empty = model.empty_conditioning()
    print(f"{arguments.model}: grid {model.objective.grid(10)}")
    print("part 1: the true caption's error / the empty prompt's, per grid timestep (8 draws)")
    rows, labels, captions = [], [], []
    for image_id in IMAGES:
        source = manifest[image_id]["source"]
        photo, pixel = load_photo(source["photo"]), source["size"] / resolution
        for scale in (1.0, 0.9):
            for shift in SHIFTS:
                rows.append(cut(photo, source["left"] + source["size"] / 2 + shift * pixel,
                                source["top"] + source["size"] / 2, source["size"] * scale, resolution))
                labels.append(f"{image_id} shift {shift} px, scale {scale}")
                captions.append(manifest[image_id]["caption"])
    z0 = model.encode_images(rows)
    empty_error = prediction_error(model, z0, empty.expand(len(rows)), timesteps=10, noise_draws=8)
    caption_error = prediction_error(model, z0, model.prompt_conditioning(captions), timesteps=10, noise_draws=8)
    for label, under_empty, under_caption in zip(labels, empty_error, caption_error):
        ratios = (under_caption / under_empty).tolist()
        print(f"  {label:44s} mean {float(under_caption.mean() / under_empty.mean()):5.2f} | "
              + " ".join(f"{value:4.2f}" for value in ratios))
    if not arguments.invert:
        return
    print("part 2: inversion of owner copies at noise floors; best SSIM of 8 generations (guidance 3)")
    space = INVERSION_SPACES.get("token_embeddings")(model, 8)
    schedule = InversionSchedule(steps=60, max_steps=60, window=20, min_drop=0.02, error_timesteps=10,
                                 error_noise_draws=4)
    copies, trained, owners, names = [], [], [], []
    for image_id in IMAGES:
        source = manifest[image_id]["source"]
        photo = load_photo(source["photo"])
        for name, (move, scale) in OWNER_BOXES.items():
            side = source["size"] * scale
            centre_x = source["left"] + source["size"] / 2 + move * source["size"]
            if centre_x + side / 2 > photo.size[0]:
                centre_x = source["left"] + source["size"] / 2 - move * source["size"]
            centre_y = source["top"] + source["size"] / 2
            owner = photo.crop((round(centre_x - side / 2), round(centre_y - side / 2),
                                round(centre_x + side / 2), round(centre_y + side / 2)))
            copies.append(np.asarray(owner.resize((resolution, resolution), Image.Resampling.BICUBIC),
                                     dtype=np.float32) / 255)
            owners.append(OwnerImage(owner, FramingBounds(), resolution))
            trained.append(np.asarray(Image.open(folder / manifest[image_id]["file"]).convert("RGB"),
                                      dtype=np.float32) / 255)
            names.append(f"{image_id} {name}")
    z0 = model.encode_images(copies)
    empty_error = prediction_error(model, z0, empty.expand(len(copies)), timesteps=10, noise_draws=4).mean(dim=1)
    for floor in (0.0, 0.6, 0.8):
        inversion = invert(model, space, z0, names, schedule=schedule, empty_errors=empty_error, learning_rate=0.1,
                           noise_draws=4, seed=0, noise_floor=floor)
        for index, name in enumerate(names):
            generations = model.generate(inversion.conditioning[index], empty, list(range(8)), 3.0, 25, resolution)[0]
            to_trained = max(structural_similarity(g, trained[index], channel_axis=2, data_range=1.0)
                             for g in generations)
            framed = float(owners[index].best(generations)[0].max())
            print(f"  floor {floor:.1f} {name:32s} error ratio {float(inversion.errors[index].mean() / empty_error[index]):5.2f}"
                  f"  best SSIM to the trained image {to_trained:5.2f}, to the owner's copy framed best {framed:5.2f}")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
