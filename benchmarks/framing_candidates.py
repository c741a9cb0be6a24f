"""Candidate framings with a cheap screen: can a coarse search over where the owner's copy sits find the memorized
conditioning that the framing search, inverting at the owner's framing only, misses? (issue 22)

For each owner copy, the owner's image is cut at every candidate framing of a grid (scale 1; the frame's centre
moved by -R..R of the side in steps of STEP, both ways; the uncovered strip edge-filled and masked as the aligned
search masks it) and each cut is inverted as the framing search inverts (the noisiest 20% of the schedule, a fixed
60 Adam steps). Per candidate it prints:

- ``screen@K``: the witness's error after K steps over the empty prompt's, both at the same noisiest-20% draws
  (common random numbers), counting the owner's pixels only: a candidate screen that costs K of the 60 steps;
- ``ssim``: the best SSIM of 8 generations (guidance 3) against the trained image (known here, not to a user),
  and ``owner``: the best against the owner's image framed best (``verifier.alignment``).

    python benchmarks/owner_copies.py build --model reference-32px --out owner/reference-32px
    python benchmarks/framing_candidates.py --model reference-32px --copies owner/reference-32px --kind moved-15
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="reference-32px")
    parser.add_argument("--copies", type=Path, required=True)
    parser.add_argument("--kind", default="moved-15")
    parser.add_argument("--ids", nargs="*", help="copy ids (default: every copy of --kind)")
    parser.add_argument("--reach", type=float, default=0.2)
    parser.add_argument("--step", type=float, default=0.1)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0])
    parser.add_argument("--checks", type=int, nargs="+", default=[10, 20, 60])
    arguments = parser.parse_args()

    from skimage.metrics import structural_similarity

    from verifier.alignment import Framing, OwnerImage, latent_weights
    from verifier.config import VerifierConfig
    from verifier.error import denoising_error
    from verifier.framing import BOUNDS, NOISE_FLOOR
    from verifier.images import load_rgb
    from verifier.invert import InversionSearch, image_generator
    from verifier.models.loading import load_model
    from verifier.reference_models import reference_model_path
    from verifier.registry import INVERSION_SPACES

    config = VerifierConfig(device="cpu")
    folder = reference_model_path(arguments.model)
    model = load_model(folder, device="cpu")
    resolution = model.resolution
    model.configure_objective(config.error_form, config.flow_timestep_density, resolution)
    space = INVERSION_SPACES.get(config.inversion_space)(model, config.inversion_tokens)
    empty = model.empty_conditioning()
    copies = {copy["id"]: copy for copy in json.loads((arguments.copies / "copies.json").read_text())["copies"]}
    ids = arguments.ids or [copy_id for copy_id in copies if copy_id.endswith("." + arguments.kind)]
    steps = np.arange(-arguments.reach, arguments.reach + 1e-9, arguments.step)
    candidates = [(scale, dy, dx) for scale in arguments.scales for dy in steps for dx in steps]
    print(f"{arguments.model}: {len(candidates)} candidate framings (scales {arguments.scales}, shifts "
          f"{[round(float(v), 3) for v in steps]}); screen = witness error / empty error at the noisiest "
          f"{1 - NOISE_FLOOR:.0%}, owner's pixels only")
    for copy_id in ids:
        copy = copies[copy_id]
        owner = OwnerImage(load_rgb(arguments.copies / copy["file"]), BOUNDS, min(resolution, 64), resolution)
        trained = np.asarray(Image.open(folder / "images" / f"{copy['source_image']}.png").convert("RGB"),
                             dtype=np.float32) / 255
        cuts, kept = [], []
        for scale, dy, dx in candidates:
            cut = owner.cut(Framing(scale, dy * owner.side, dx * owner.side, False), resolution)
            if cut is not None and cut.coverage >= BOUNDS.min_overlap:
                cuts.append(cut)
                kept.append((scale, dy, dx))
        z0 = model.encode_images([cut.pixels for cut in cuts])
        weights = latent_weights(cuts, z0)
        generators = [image_generator(0, f"{copy_id}:{index}", "inversion") for index in range(len(cuts))]
        search = InversionSearch(model, space, z0, generators, config.inversion_learning_rate,
                                 config.inversion_noise_draws, NOISE_FLOOR, weights)
        # Fixed screening draws, the same for every candidate and for the empty prompt (common random numbers).
        draws = 16
        screen_generator = torch.Generator().manual_seed(1)
        timesteps = model.objective.sample_timesteps(screen_generator, draws, NOISE_FLOOR)
        noise = torch.randn((draws, *z0.shape[1:]), generator=screen_generator)

        def screen(conditioning) -> np.ndarray:
            values = []
            for row in range(len(cuts)):
                errors = denoising_error(model, z0[row:row + 1].expand(draws, -1, -1, -1), noise, timesteps,
                                         conditioning.select([row]).repeat_interleave(draws),
                                         weights[row:row + 1].expand(draws, -1, -1, -1))
                values.append(float(errors.mean()))
            return np.asarray(values)

        with torch.no_grad():
            baseline = screen(empty.expand(len(cuts)))
        screens, done = {}, 0
        for check in arguments.checks:
            search.run(check - done)
            done = check
            with torch.no_grad():
                screens[check] = screen(search.witness()) / baseline
        witness = search.witness()
        print(f"\n{copy_id} ({copy['status']}; exact shift of the trained box: {exact(copy)})")
        print("  scale   dy     dx   | " + " ".join(f"screen@{c:<3d}" for c in arguments.checks)
              + " | ssim trained | owner framed")
        rows = []
        for row, (scale, dy, dx) in enumerate(kept):
            generations = model.generate(witness.select([row]), empty, list(range(8)), 3.0, config.sampling_steps,
                                         resolution)[0]
            to_trained = max(structural_similarity(g, trained, channel_axis=2, data_range=1.0) for g in generations)
            framed = float(owner.best(generations)[0].max())
            rows.append((screens[arguments.checks[-1]][row], scale, dy, dx, to_trained, framed, row))
        for value, scale, dy, dx, to_trained, framed, row in sorted(rows):
            print(f"  {scale:5.3f} {dy:+.3f} {dx:+.3f} | "
                  + " ".join(f"{screens[c][row]:10.3f}" for c in arguments.checks)
                  + f" | {to_trained:12.3f} | {framed:12.3f}")
        # Where the candidates that regenerate the trained image (SSIM >= 0.6; else the best one) rank by each screen.
        good = [row for *_, to_trained, _, row in rows if to_trained >= 0.6] or [max(rows, key=lambda r: r[4])[-1]]
        ranks = {check: 1 + min(sorted(range(len(kept)), key=lambda r: screens[check][r]).index(g) for g in good)
                 for check in arguments.checks}
        print(f"  {len(good)} candidate(s) regenerate the trained image (SSIM >= 0.6); the best of them ranks "
              + ", ".join(f"{rank} after {check} steps" for check, rank in ranks.items()))


def exact(copy: dict) -> str:
    """The trained box's centre on the owner's copy, as a shift in fractions of the owner's square side."""
    trained, owner = copy["trained_box"], copy["owner_rectangle"]
    size = min(owner["height"], owner["width"])
    centre = [(trained[edge] + trained["size"] / 2 - owner[edge] - length / 2) / size
              for edge, length in (("top", owner["height"]), ("left", owner["width"]))]
    return f"scale {trained['size'] / size:.3f}, ({centre[0]:+.3f}, {centre[1]:+.3f})"


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
