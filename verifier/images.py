"""Protected images: collect them from files, folders and manifests, and prepare them for a model.

Preparation policy (recorded in every certificate as ``image.preprocessing``):

1. EXIF orientation is applied (a phone photo is checked the way it is displayed);
2. palette, grayscale, 16-bit and CMYK images become 8-bit RGB; transparent pixels are composited
   over white;
3. the largest centred square is cut out and resized to the model's resolution with antialiased
   bicubic resampling (Stable Diffusion was trained on centre crops of this kind).

The sha256 recorded for an image is that of the file's bytes, so an owner can match a certificate
to the exact file they hold.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
MANIFEST_SUFFIXES = (".csv", ".jsonl")
PREPROCESSING = "exif-transpose, rgb (alpha over white), centre square crop, bicubic antialiased resize"


class ImageInputError(ValueError):
    """A protected-image argument that cannot be used; the message names it and what is allowed."""


@dataclass(frozen=True)
class ProtectedImage:
    """One image to certify: a stable id, its file and that file's sha256."""

    id: str
    path: Path
    sha256: str


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _safe_id(text: str) -> str:
    """An id usable as a file name: path separators and odd characters become '_'."""
    cleaned = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text).strip("._")
    return cleaned or "image"


def _from_manifest(path: Path) -> list[tuple[str | None, Path]]:
    """Rows of a CSV (header with a ``path`` column) or JSONL (objects with ``path``) manifest."""
    rows: list[dict] = []
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or "path" not in reader.fieldnames:
                raise ImageInputError(
                    f"IMAGES manifest {path} has columns {reader.fieldnames}; it needs a 'path' column (and optionally 'id')"
                )
            rows = list(reader)
    else:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ImageInputError(f"IMAGES manifest {path} line {number} is not JSON: {error.msg}") from None
            if not isinstance(row, dict) or "path" not in row:
                raise ImageInputError(f"IMAGES manifest {path} line {number} needs an object with a 'path' key")
            rows.append(row)
    entries = []
    for row in rows:
        file = Path(row["path"])
        if not file.is_absolute():
            file = path.parent / file  # relative paths are relative to the manifest, not the shell
        entries.append((row.get("id") or None, file))
    return entries


def collect_images(arguments: list[str | Path]) -> list[ProtectedImage]:
    """Expand IMAGES arguments (files, folders searched recursively, CSV/JSONL manifests) into images.

    Ids are the manifest's ``id`` when given, else the file name without suffix; clashes get the
    parent folder prepended, and exact duplicates of the same file are kept once.
    """
    if not arguments:
        raise ImageInputError("IMAGES: no image given; pass image files, folders or a CSV/JSONL manifest")
    entries: list[tuple[str | None, Path]] = []
    for argument in arguments:
        path = Path(argument)
        if not path.exists():
            raise ImageInputError(f"IMAGES: {str(argument)!r} does not exist")
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ImageInputError(f"IMAGES: folder {str(argument)!r} holds no image ({', '.join(IMAGE_SUFFIXES)})")
            entries += [(None, p) for p in found]
        elif path.suffix.lower() in MANIFEST_SUFFIXES:
            entries += _from_manifest(path)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            entries.append((None, path))
        else:
            raise ImageInputError(
                f"IMAGES: {str(argument)!r} is neither an image ({', '.join(IMAGE_SUFFIXES)}), "
                f"a folder, nor a manifest ({', '.join(MANIFEST_SUFFIXES)})"
            )
    images: list[ProtectedImage] = []
    seen_paths: set[Path] = set()
    used_ids: set[str] = set()
    for given_id, file in entries:
        resolved = file.resolve()
        if resolved in seen_paths:
            continue
        if not file.is_file():
            raise ImageInputError(f"IMAGES: {str(file)!r} (listed in a manifest) does not exist")
        seen_paths.add(resolved)
        image_id = _safe_id(given_id) if given_id else _safe_id(file.stem)
        if image_id in used_ids and not given_id:
            image_id = _safe_id(f"{file.parent.name}_{file.stem}")
        if image_id in used_ids:
            raise ImageInputError(f"IMAGES: two images share the id {image_id!r}; give them distinct ids in a manifest")
        used_ids.add(image_id)
        images.append(ProtectedImage(image_id, file, file_sha256(file)))
    return images


def prepare_image(path: Path, resolution: int) -> np.ndarray:
    """Load, normalise and centre-crop one image to ``resolution``; float32 RGB HWC in [0, 1]."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            image.load()
    except (UnidentifiedImageError, OSError) as error:
        raise ImageInputError(f"IMAGES: {str(path)!r} cannot be read as an image: {error}") from None
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grey: rescale to 8 bits by the range the format allows, not by clipping.
        array = np.asarray(image, dtype=np.float64)
        scale = 65535.0 if array.max() > 255 or image.mode.startswith("I;16") else 255.0
        image = Image.fromarray(np.clip(array / scale * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(canvas, rgba)
    image = image.convert("RGB")
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    # Crop first, then resize: resizing with a box would let pixels outside the square bleed in.
    image = image.crop((left, top, left + side, top + side))
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.float32) / 255.0
