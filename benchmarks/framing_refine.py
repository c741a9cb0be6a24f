"""Between the grid's framings: does re-inverting the owner's image at a precise framing find what the framing
search missed? (issue 22; docs/owner-copies.md, "Between the grid's framings")

For owner copies the default config certifies ``not_memorized`` although they re-frame a memorized image:

1. certify each copy keeping the framing search's witness whatever it found (a diagnostic: the pipeline keeps
   it only where it replicated), to get its closest generation and that generation's grid framing;
2. refine the framing around the grid's (``verifier.alignment.refine``: SSIM against the closest generation,
   to 0.05 px);
3. cut the owner's image at three framings, the uncovered strip edge-padded: the grid's, the refined one, and
   the exact one (the trained box in the owner's copy, from ``copies.json``);
4. certify those crops like any image (the first search only) and print what each framing gives.

With ``--blurred-trained SIGMA`` it runs no model: the stand-in for the closest generation is the trained
image itself, Gaussian-blurred by SIGMA pixels, and it prints where the grid and the refinement place it
against the exact framing (does the refinement find the framing when the generation does resemble the
memorized image?).

    python benchmarks/owner_copies.py build --model reference-32px --out owner/reference-32px
    python benchmarks/framing_refine.py --model reference-32px --copies owner/reference-32px \\
        --ids dup06-coins-x1000.grown-20 dup03-rocket-x2000.moved-8 --out runs/refine
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from verifier.alignment import Framing, OwnerImage, refine
from verifier.config import VerifierConfig
from verifier.framing import BOUNDS
from verifier.images import load_rgb

def exact_framing(copy: dict, side: int) -> Framing:
    """The trained box placed on the owner's copy (both square boxes in the source photograph)."""
    trained, owner = copy["trained_box"], copy["owner_rectangle"]
    size = min(owner["height"], owner["width"])
    centre = [(trained[edge] + trained["size"] / 2 - owner[edge] - length / 2) / trained["size"]
              for edge, length in (("top", owner["height"]), ("left", owner["width"]))]
    return Framing(trained["size"] / size, centre[0] * side, centre[1] * side, False)


def locate_blurred_trained(model: str, copies_folder: Path, copies: dict, ids: list[str], sigma: float) -> None:
    """Refine from a blurred copy of each copy's trained image; print the grid's, refined and exact framings."""
    from PIL import ImageFilter

    from verifier.alignment import FramedSimilarity
    from verifier.reference_models import reference_model_path
    from verifier.similarity import SSIM

    def shown(framing: Framing) -> str:
        return (f"{framing.scale:.3f}; ({framing.dy / side:+.3f}, {framing.dx / side:+.3f})"
                + (", mirrored" if framing.mirror else ""))

    print(f"\n{model}: refined from the trained image blurred by {sigma:g} px (no model run)\n")
    print("| copy | exact | grid | refined | refined SSIM |")
    print("|---|---|---|---|---|")
    for copy_id in ids:
        copy = copies[copy_id]
        trained = Image.open(reference_model_path(model) / "images" / f"{copy['source_image']}.png").convert("RGB")
        side = trained.size[0]
        generation = np.asarray(trained.filter(ImageFilter.GaussianBlur(sigma)), dtype=np.float32) / 255
        owner = OwnerImage(load_rgb(copies_folder / copy["file"]), BOUNDS, min(side, 64), side)
        grid = FramedSimilarity(SSIM()).framings(generation[None], owner)[0]
        score, refined = refine(owner, generation, grid)
        side = owner.side
        print(f"| {copy_id} | {shown(exact_framing(copy, side))} | {shown(grid)} | {shown(refined)} | {score:.3f} |")


def keep_the_framing_witness() -> None:
    """Diagnostic only: the framing search's witness stands wherever the search ran (and the aligned search,
    which this benchmark does by hand, does not run)."""
    import verifier.api

    verifier.api.witness_search = lambda framed, *_: "owner's framing" if framed is None else "framing search"
    verifier.api.aligned_search_runs = lambda framed: False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="reference-32px")
    parser.add_argument("--copies", type=Path, required=True, help="a benchmarks/owner_copies.py build folder")
    parser.add_argument("--ids", nargs="+", required=True)
    parser.add_argument("--out", type=Path, help="required unless --blurred-trained")
    parser.add_argument("--blurred-trained", type=float, metavar="SIGMA",
                        help="run no model: refine from the trained image blurred by SIGMA pixels")
    arguments = parser.parse_args()
    from verifier.api import certify
    from verifier.reference_models import reference_model_path

    model = reference_model_path(arguments.model)
    if not (arguments.copies / "copies.json").is_file():
        parser.error(f"--copies: {arguments.copies} has no copies.json (build it: benchmarks/owner_copies.py build)")
    copies = {copy["id"]: copy for copy in json.loads((arguments.copies / "copies.json").read_text())["copies"]}
    unknown = [copy_id for copy_id in arguments.ids if copy_id not in copies]
    if unknown:
        parser.error(f"--ids: {', '.join(unknown)} not in {arguments.copies / 'copies.json'} (ids look like "
                     f"{next(iter(copies), 'dup06-coins-x1000.grown-20')})")
    if arguments.blurred_trained is not None:
        locate_blurred_trained(arguments.model, arguments.copies, copies, arguments.ids, arguments.blurred_trained)
        return
    if arguments.out is None:
        parser.error("--out: required unless --blurred-trained")
    files = [arguments.copies / copies[copy_id]["file"] for copy_id in arguments.ids]
    keep_the_framing_witness()
    framed = {c["image"]["id"]: c for c in certify(model, files, arguments.out / "framing", VerifierConfig(device="cpu"))}
    (arguments.out / "aligned").mkdir(parents=True, exist_ok=True)
    crops, framings = [], {}
    for copy_id in arguments.ids:
        certificate = framed[copy_id]
        resolution = certificate["witness"]["height"]
        owner = OwnerImage(load_rgb(arguments.copies / copies[copy_id]["file"]), BOUNDS, min(resolution, 64), resolution)
        grid = certificate["framing"]["closest_framing"]
        grid = Framing(grid["scale"], grid["shift"][0] * owner.side, grid["shift"][1] * owner.side, grid["mirror"])
        generation = np.asarray(Image.open(arguments.out / "framing" / f"{copy_id}.closest.png").convert("RGB"),
                                dtype=np.float32) / 255
        _, refined = refine(owner, generation, grid)
        for name, framing in (("grid", grid), ("refined", refined), ("exact", exact_framing(copies[copy_id], owner.side))):
            path = arguments.out / "aligned" / f"{copy_id}.{name}.png"
            Image.fromarray((owner.cut(framing, resolution).pixels * 255).round().astype(np.uint8)).save(path)
            crops.append(path)
            framings[path.stem] = framing.record(owner.side)
    import verifier.api

    import verifier.framing

    verifier.api.witness_search = verifier.framing.witness_search
    verifier.api.aligned_search_runs = verifier.framing.aligned_search_runs
    results = certify(model, crops, arguments.out / "aligned-run", VerifierConfig(device="cpu", framing_search=False))
    print(f"\n{arguments.model}: each copy re-inverted at three framings (first search only, default config, one run)\n")
    print("| copy | framing | scale | shift (down, right) | verdict | error ratio | replications |")
    print("|---|---|---|---|---|---|---|")
    for certificate in results:
        stem = certificate["image"]["id"]
        copy_id, name = stem.rsplit(".", 1)
        framing = framings[stem]
        similarity = certificate["conditions"]["similarity"]
        print(f"| {copy_id} | {name} | {framing['scale']:.4f} | ({framing['shift'][0]:+.4f}, {framing['shift'][1]:+.4f}) | "
              f"{certificate['verdict']} | {certificate['prediction_error']['ratio']:.3f} | "
              f"{similarity['replications']}/{similarity['generations']} |")


if __name__ == "__main__":
    main()
