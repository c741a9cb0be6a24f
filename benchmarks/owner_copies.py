"""Owner copies: the images an owner holds, cut from the full-resolution photographs the reference models were trained on.

An owner never holds the trained pixels (a 32 px square resized from a box of a photograph); they hold
the photograph, at its own size, framing and compression. This builds, for every memorized image of a
shipped reference model and for a seeded choice of its never-trained images, copies of the kinds owners
hold, each described in ``copies.json`` (the box in the photograph, what was done to it, what a correct
verdict is) and listed in ``manifest.csv`` for ``verifier certify``:

    python benchmarks/owner_copies.py build --model reference-32px --out owner/reference-32px
    verifier certify verifier/reference_models/reference-32px owner/reference-32px/manifest.csv --out runs/owner-32px
    python benchmarks/owner_copies.py table owner/reference-32px runs/owner-32px

``measure`` does the three in one call. Kinds (``VARIANTS``): the same box at the photograph's
resolution (PNG; JPEG quality 60 and 90; half the side, JPEG 85), the box grown or shrunk (its side
times 1.10, 1.20, 0.90, 0.80, same centre), moved by 8% or 15% of its side (a seeded direction that
stays inside the photograph), a 4:3 rectangle around the box (a different aspect ratio; verifier
centre-crops it), mirrored, and colour-shifted (saturation x1.15, brightness x1.06). A kind whose box
cannot fit the photograph (a whole square photo cannot be framed wider) is listed as not applicable.

Everything is seeded (``--seed``); the photographs are checked against their pinned sha256
(``reference_model/data.py``), so the same command builds the same files.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parent / "reference_model"))
from data import Crop, load_photo  # noqa: E402  (benchmarks/reference_model/data.py)

SCHEMA = "verifier.owner-copies/1"
FLAGGED = ("memorized", "rarely_reproduced")


@dataclass(frozen=True)
class Variant:
    """One kind of owner copy: how its box relates to the trained box, and how it is saved."""

    name: str
    group: str  # re-encoded | re-sized | re-framed | mirrored | colour
    scale: float = 1.0  # the owner box's side / the trained box's side (same centre)
    move: float = 0.0  # the owner box's centre moved by this fraction of the trained side
    aspect: float = 1.0  # width / height of the owner's rectangle (1: a square)
    mirror: bool = False
    colour: bool = False
    resize: float = 1.0  # the saved file's side / the box's side in the photograph
    jpeg_quality: int | None = None


VARIANTS = (
    Variant("png", "re-encoded"),
    Variant("jpeg60", "re-encoded", jpeg_quality=60),
    Variant("jpeg90", "re-encoded", jpeg_quality=90),
    Variant("half-jpeg85", "re-sized", resize=0.5, jpeg_quality=85),
    Variant("aspect-4x3", "re-sized", aspect=4 / 3),
    Variant("grown-10", "re-framed", scale=1.10),
    Variant("grown-20", "re-framed", scale=1.20),
    Variant("shrunk-10", "re-framed", scale=0.90),
    Variant("shrunk-20", "re-framed", scale=0.80),
    Variant("moved-8", "re-framed", move=0.08),
    Variant("moved-15", "re-framed", move=0.15),
    Variant("mirrored", "mirrored", mirror=True),
    Variant("colour", "colour", colour=True),
)
# The eight directions a moved box tries, in a seeded order: (rows, columns) per unit of move.
DIRECTIONS = ((0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1))


def owner_rectangle(crop: Crop, variant: Variant, photo_size: tuple[int, int],
                    rng: np.random.Generator) -> tuple[int, int, int, int] | None:
    """(top, left, height, width) of the owner's rectangle in the photograph, or None where it cannot fit."""
    width, height = photo_size
    centre_y, centre_x = crop.top + crop.size / 2, crop.left + crop.size / 2
    side = crop.size * variant.scale
    if variant.move:
        for index in rng.permutation(len(DIRECTIONS)):
            rows, columns = DIRECTIONS[index]
            top = round(centre_y + rows * variant.move * crop.size - side / 2)
            left = round(centre_x + columns * variant.move * crop.size - side / 2)
            if 0 <= top and 0 <= left and top + round(side) <= height and left + round(side) <= width:
                return top, left, round(side), round(side)
        return None
    box_h, box_w = round(side), round(side)
    if variant.aspect != 1.0:
        # Widen along the photograph's long axis: the owner's copy is the wider picture around the box.
        if width >= height:
            box_w = round(side * variant.aspect)
        else:
            box_h = round(side * variant.aspect)
        if box_w > width or box_h > height:
            return None
    if box_h > height or box_w > width:
        return None
    top = round(centre_y - box_h / 2)
    left = round(centre_x - box_w / 2)
    if variant.aspect != 1.0:  # slide a wider rectangle back inside the photograph (verifier centre-crops it)
        top, left = min(max(top, 0), height - box_h), min(max(left, 0), width - box_w)
    if top < 0 or left < 0 or top + box_h > height or left + box_w > width:
        return None  # a grown box that leaves the photograph would be another framing, not this one
    return top, left, box_h, box_w


def render(photo: Image.Image, rectangle: tuple[int, int, int, int], variant: Variant) -> bytes:
    """The owner's file: the rectangle at the photograph's resolution, transformed and encoded."""
    top, left, box_h, box_w = rectangle
    image = photo.crop((left, top, left + box_w, top + box_h))
    if variant.resize != 1.0:
        image = image.resize((max(8, round(box_w * variant.resize)), max(8, round(box_h * variant.resize))),
                             Image.Resampling.LANCZOS)
    if variant.mirror:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if variant.colour:
        image = ImageEnhance.Brightness(ImageEnhance.Color(image).enhance(1.15)).enhance(1.06)
    buffer = io.BytesIO()
    if variant.jpeg_quality is None:
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format="JPEG", quality=variant.jpeg_quality)
    return buffer.getvalue()


def choose_images(manifest: dict, never_trained: int, seed: int) -> list[dict]:
    """Every memorized image, and ``never_trained`` held-out ones (half from untrained photographs where possible)."""
    memorized = [image for image in manifest["images"] if image.get("memorized")]
    held = [image for image in manifest["images"] if image["split"] == "held_out"]
    rng = np.random.default_rng(seed)
    foreign = [image for image in held if not image["source"]["source_in_training"]]
    native = [image for image in held if image["source"]["source_in_training"]]
    take_foreign = min(len(foreign), never_trained // 2)
    chosen = [foreign[i] for i in sorted(rng.choice(len(foreign), take_foreign, replace=False))]
    rest = min(len(native), never_trained - take_foreign)
    chosen += [native[i] for i in sorted(rng.choice(len(native), rest, replace=False))]
    return memorized + chosen


def nearest_memorized(image: dict, memorized: list[dict]) -> dict | None:
    """How a never-trained crop sits on a memorized image of the same photograph: its side over the memorized
    box's side and its centre's shift in fractions of that side (a held-out crop that is the memorized photo
    framed a little tighter is an owner's copy of a memorized image in all but name)."""
    source = image["source"]
    same_photo = [m for m in memorized if m["source"]["photo"] == source["photo"]]
    if not same_photo:
        return None
    other = same_photo[0]["source"]
    shift = [(source["top"] + source["size"] / 2 - other["top"] - other["size"] / 2) / other["size"],
             (source["left"] + source["size"] / 2 - other["left"] - other["size"] / 2) / other["size"]]
    scale = source["size"] / other["size"]
    return {"memorized_image": same_photo[0]["id"], "scale": round(scale, 4), "shift": [round(v, 4) for v in shift]}


def build(model: Path, out: Path, never_trained: int = 8, seed: int = 0) -> dict:
    """Write ``out/images/*``, ``out/manifest.csv`` and ``out/copies.json``; return the copies record."""
    manifest = json.loads((model / "manifest.json").read_text())
    (out / "images").mkdir(parents=True, exist_ok=True)
    copies, skipped = [], []
    memorized = [image for image in manifest["images"] if image.get("memorized")]
    for image in choose_images(manifest, never_trained, seed):
        source = image["source"]
        crop = Crop(source["photo"], source["top"], source["left"], source["size"], source.get("flip", False))
        photo = load_photo(crop.photo)
        status = "memorized" if image.get("memorized") else "never_trained"
        # One stream per image, so adding an image or a kind does not move another image's copies.
        rng = np.random.default_rng([seed, int(hashlib.sha256(image["id"].encode()).hexdigest()[:8], 16)])
        for variant in VARIANTS:
            rectangle = owner_rectangle(crop, variant, photo.size, rng)
            copy_id = f"{image['id']}.{variant.name}"
            if rectangle is None:
                skipped.append({"id": copy_id, "reason": f"the {variant.name} rectangle does not fit the "
                                f"{photo.size[0]}x{photo.size[1]} photograph"})
                continue
            data = render(photo, rectangle, variant)
            file = f"images/{copy_id}.{'png' if variant.jpeg_quality is None else 'jpg'}"
            (out / file).write_bytes(data)
            copies.append({"id": copy_id, "file": file, "sha256": hashlib.sha256(data).hexdigest(),
                           "source_image": image["id"], "status": status, "variant": asdict(variant),
                           "trained_box": {"top": crop.top, "left": crop.left, "size": crop.size},
                           "owner_rectangle": dict(zip(("top", "left", "height", "width"), rectangle)),
                           "photo": crop.photo,
                           "on_memorized": None if status == "memorized" else nearest_memorized(image, memorized)})
    with open(out / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "path"])
        for copy in copies:
            writer.writerow([copy["id"], copy["file"]])
    record = {"schema": SCHEMA, "model": manifest["preset"], "seed": seed, "never_trained": never_trained,
              "variants": [asdict(v) for v in VARIANTS], "copies": copies, "not_applicable": skipped}
    (out / "copies.json").write_text(json.dumps(record, indent=1))
    return record


def table(copies_folder: Path, run: Path) -> list[dict]:
    """Per kind of copy: verdict counts of memorized images' copies and never-trained images' copies, as
    certified and, from each certificate's ``framing`` block, as the search at the owner's framing alone
    (verifier before the framing search)."""
    record = json.loads((copies_folder / "copies.json").read_text())
    certificates = {}
    for copy in record["copies"]:
        path = run / f"{copy['id']}.json"
        if path.is_file():
            certificates[copy["id"]] = json.loads(path.read_text())
    rows = []
    for variant in record["variants"]:
        row = {"variant": variant["name"], "group": variant["group"]}
        for status in ("memorized", "never_trained"):
            ids = [c["id"] for c in record["copies"] if c["variant"]["name"] == variant["name"] and c["status"] == status]
            for column, verdict_of in (("final", lambda c: c["verdict"]), ("first", first_search_verdict)):
                counts: dict[str, int] = {}
                for copy_id in ids:
                    verdict = verdict_of(certificates[copy_id]) if copy_id in certificates else "missing"
                    counts[verdict] = counts.get(verdict, 0) + 1
                row[f"{status}:{column}"] = counts
        rows.append(row)
    return rows


def first_search_verdict(certificate: dict) -> str:
    return certificate.get("framing", {}).get("first_search", {}).get("verdict", certificate["verdict"])


def print_table(rows: list[dict], title: str) -> None:
    def cell(counts: dict[str, int], wanted: tuple[str, ...]) -> str:
        total = sum(counts.values())
        hits = sum(counts.get(v, 0) for v in wanted)
        rest = ", ".join(f"{counts[v]} {v}" for v in sorted(counts) if v not in wanted)
        return f"{hits}/{total}" + (f" ({rest})" if rest else "")

    columns = ["first", "final"]
    names = {"first": "owner's framing only", "final": "as certified"}
    print(f"\n{title}\n")
    print("| copy | group | " + " | ".join(f"memorized images' copies: memorized ({names[c]})" for c in columns) + " | "
          + " | ".join(f"never-trained images' copies: flagged ({names[c]})" for c in columns) + " |")
    print("|---|---|" + "---|" * 2 * len(columns))
    for row in rows:
        print(f"| {row['variant']} | {row['group']} | "
              + " | ".join(cell(row[f"memorized:{c}"], ("memorized",)) for c in columns) + " | "
              + " | ".join(cell(row[f"never_trained:{c}"], FLAGGED) for c in columns) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="write the owner copies of one reference model")
    build_parser.add_argument("--model", required=True, help="a shipped reference model's name or folder")
    build_parser.add_argument("--out", type=Path, required=True)
    build_parser.add_argument("--never-trained", type=int, default=8)
    build_parser.add_argument("--seed", type=int, default=0)
    table_parser = commands.add_parser("table", help="tabulate a certify run over the copies")
    table_parser.add_argument("copies", type=Path)
    table_parser.add_argument("run", type=Path)
    measure_parser = commands.add_parser("measure", help="build, certify with the default config, tabulate")
    measure_parser.add_argument("--model", required=True)
    measure_parser.add_argument("--out", type=Path, required=True, help="copies go to OUT/copies, the run to OUT/run")
    measure_parser.add_argument("--never-trained", type=int, default=8)
    measure_parser.add_argument("--seed", type=int, default=0)
    measure_parser.add_argument("--config", type=Path, help="a config file (default: the default config)")
    measure_parser.add_argument("--framing-mirror", action="store_true",
                                help="certify with --framing-mirror (mirrored candidates in the framing search's screen)")
    arguments = parser.parse_args()

    if arguments.command == "table":
        print_table(table(arguments.copies, arguments.run), f"{arguments.run}")
        return
    from verifier.reference_models import reference_model_path

    model = Path(arguments.model) if Path(arguments.model).is_dir() else Path(reference_model_path(arguments.model))
    copies_folder = arguments.out if arguments.command == "build" else arguments.out / "copies"
    record = build(model, copies_folder, arguments.never_trained, arguments.seed)
    print(f"{len(record['copies'])} owner copies of {len({c['source_image'] for c in record['copies']})} images in "
          f"{copies_folder} ({len(record['not_applicable'])} kinds not applicable)")
    if arguments.command == "measure":
        import subprocess

        command = [sys.executable, "-m", "verifier", "certify", str(model), str(copies_folder / "manifest.csv"),
                   "--out", str(arguments.out / "run"), "--quiet"]
        if arguments.config:
            command += ["--config", str(arguments.config)]
        if arguments.framing_mirror:
            command += ["--framing-mirror"]
        completed = subprocess.run(command)
        if completed.returncode not in (0, 1):
            sys.exit(completed.returncode)
        print_table(table(copies_folder, arguments.out / "run"),
                    f"{model.name}: owner copies under {' '.join(command[3:])}")


if __name__ == "__main__":
    main()
