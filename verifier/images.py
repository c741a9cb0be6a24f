"""Protected images: collect them from files, folders and manifests, and prepare them for a model.

Preparation policy (recorded in every certificate as ``image.preprocessing``):

1. EXIF orientation is applied (a phone photo is checked the way it is displayed);
2. palette, grayscale, 16-bit, 32-bit integer, float (0..1) and CMYK images become 8-bit RGB by
   their format's range (never by clipping); transparent pixels are composited over white;
3. the largest centred square is cut out and resized to the model's resolution with antialiased
   bicubic resampling (Stable Diffusion was trained on centre crops of this kind).

The sha256 recorded for an image is that of the file's bytes, so an owner can match a certificate
to the exact file they hold.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from verifier.context import ContextError, ImageContext, context_from_row
from verifier.paths import broken_link

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
MANIFEST_SUFFIXES = (".csv", ".jsonl")
PREPROCESSING = "exif-transpose, rgb (alpha over white), centre square crop, bicubic antialiased resize"


class ImageInputError(ValueError):
    """A protected-image argument that cannot be used; the message names it and what is allowed."""


@dataclass(frozen=True)
class ProtectedImage:
    """One image to certify: a stable id, its file, that file's sha256 and the owner's context (manifests only)."""

    id: str
    path: Path
    sha256: str
    context: ImageContext | None = None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# File stems the run itself uses (run.json, summary.json, report.html, ...): no image id may take them.
RESERVED_STEMS = ("run", "summary", "report", "calibration", "demo-images")
MAX_ID_BYTES = 120  # <id>.witness.safetensors must stay well under the 255-byte file-name limit, in UTF-8 bytes


def _safe_id(text: str) -> str:
    """An id usable as a file name: path separators and odd characters become '_'.

    Ids are Unicode-normalized (NFC), so two spellings of one name are one id; ids that the run's own
    files use (``summary``, ``run``, ...) get an ``image-`` prefix, and ids longer than
    ``MAX_ID_BYTES`` in UTF-8 are shortened with a hash of the full text, so every id maps to one file of
    its own on any file system.
    """
    text = unicodedata.normalize("NFC", text)
    cleaned = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text).strip("._")
    cleaned = cleaned or "image"
    if cleaned.lower() in RESERVED_STEMS:
        cleaned = f"image-{cleaned}"
    if len(cleaned.encode()) > MAX_ID_BYTES:
        head = cleaned.encode()[:MAX_ID_BYTES - 17].decode(errors="ignore")
        cleaned = f"{head}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
    return cleaned


def is_valid_id(image_id: str) -> bool:
    """Whether ``image_id`` is an id verifier writes: one that its own id rules leave unchanged."""
    return bool(image_id) and _safe_id(image_id) == image_id


MAX_MANIFEST_LINE = 1 << 20  # characters in one JSONL row: the owner's prompts fit many times over
MAX_PATH_BYTES = 4096  # Linux's PATH_MAX


def _manifest_rows(path: Path) -> list[dict]:
    """The raw rows of a CSV or JSONL manifest, with their line numbers under ``_line``."""
    try:
        # utf-8-sig: spreadsheets often save a byte-order mark before the header.
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ImageInputError(f"IMAGES manifest {str(path)!r} is not UTF-8 text (byte {error.start}); "
                              "save it as UTF-8") from None
    rows: list[dict] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if reader.fieldnames is None or "path" not in reader.fieldnames:
            raise ImageInputError(
                f"IMAGES manifest {str(path)!r} has columns {reader.fieldnames}; it needs a 'path' column "
                "(and optionally 'id' and the owner's context: entity, explicit_prompts, implicit_prompts, public)")
        try:
            for row in reader:
                rows.append({**row, "_line": reader.line_num})
        except csv.Error as error:  # a field over csv's limit (128 KiB), or a broken quote
            # line_num counts the lines of the rows read whole; the bad one starts after them
            raise ImageInputError(f"IMAGES manifest {str(path)!r} line {reader.line_num + 1}: {error}") from None
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            if len(line) > MAX_MANIFEST_LINE:
                raise ImageInputError(f"IMAGES manifest {str(path)!r} line {number} is {len(line):,} characters long; "
                                      f"a row is at most {MAX_MANIFEST_LINE:,}")
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ImageInputError(f"IMAGES manifest {str(path)!r} line {number} is not JSON: {error.msg}") from None
            if not isinstance(row, dict) or "path" not in row:
                raise ImageInputError(f"IMAGES manifest {str(path)!r} line {number} needs an object with a 'path' key")
            rows.append({**row, "_line": number})
    if not rows:
        raise ImageInputError(f"IMAGES manifest {str(path)!r} lists no image")
    return rows


def _from_manifest(path: Path) -> list[tuple[str | None, Path, str, ImageContext | None]]:
    """(id or None, file, where, context) for each row of a CSV (``path`` column) or JSONL (``path`` key)
    manifest; the other columns are the owner's context (``verifier.context``)."""
    entries = []
    for row in _manifest_rows(path):
        where = f"IMAGES manifest {str(path)!r} line {row['_line']}"
        value, given_id = row.get("path"), row.get("id")
        if not isinstance(value, str) or not value.strip():
            raise ImageInputError(f"{where}: 'path' must be a non-empty string, got {value!r}")
        if len(value.encode()) > MAX_PATH_BYTES:
            raise ImageInputError(f"{where}: 'path' is {len(value.encode()):,} bytes long; a path is at most "
                                  f"{MAX_PATH_BYTES} bytes")
        if given_id is not None and not isinstance(given_id, (str, int)) or isinstance(given_id, bool):
            raise ImageInputError(f"{where}: 'id' must be a string, got {given_id!r}")
        try:
            context = context_from_row(row, where)
        except ContextError as error:
            raise ImageInputError(str(error)) from None
        file = Path(value)
        if not file.is_absolute():
            file = path.parent / file  # relative paths are relative to the manifest, not the shell
        entries.append((str(given_id) if given_id not in (None, "") else None, file, where, context))
    return entries


def _is_inside(path: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def collect_images(arguments: list[str | Path], exclude: Path | None = None) -> list[ProtectedImage]:
    """Expand IMAGES arguments (files, folders searched recursively, CSV/JSONL manifests) into images.

    Ids are the manifest's ``id`` when given, else the file name without suffix; when several files
    share a name, each of them takes its parent folder's name too, and where that is shared as well
    (``photo.jpg`` beside ``photo.png``) its extension, so an id never depends on the order of the arguments.
    The same file given twice is kept once (twice under two manifest ids is an error). Files inside
    ``exclude`` (the run's output folder) are never taken as inputs.
    """
    if not arguments:
        raise ImageInputError("IMAGES: no image given; pass image files, folders or a CSV/JSONL manifest")
    entries: list[tuple[str | None, Path, str, ImageContext | None]] = []
    for argument in arguments:
        path = Path(argument)
        if not path.exists():
            raise ImageInputError(f"IMAGES: {str(argument)!r} {broken_link(path) or 'does not exist'}")
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                           and not _is_inside(p, exclude))
            if not found:
                raise ImageInputError(f"IMAGES: folder {str(argument)!r} holds no image ({', '.join(IMAGE_SUFFIXES)})"
                                      + (" outside the output folder" if exclude and _is_inside(exclude, path) else ""))
            entries += [(None, p, f"folder {str(argument)!r}", None) for p in found]
        elif not path.is_file():
            raise ImageInputError(f"IMAGES: {str(argument)!r} is not a regular file (a pipe or device?)")
        elif path.suffix.lower() in MANIFEST_SUFFIXES:
            entries += _from_manifest(path)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            entries.append((None, path, "the command line", None))
        else:
            raise ImageInputError(
                f"IMAGES: {str(argument)!r} is neither an image ({', '.join(IMAGE_SUFFIXES)}), "
                f"a folder, nor a manifest ({', '.join(MANIFEST_SUFFIXES)})"
            )
    unique: dict[Path, tuple[str | None, Path, str, ImageContext | None]] = {}
    for given_id, file, where, context in entries:
        if not file.exists():
            raise ImageInputError(f"IMAGES: {str(file)!r} (from {where}) {broken_link(file) or 'does not exist'}")
        if _is_inside(file, exclude):
            raise ImageInputError(f"IMAGES: {str(file)!r} ({where}) lies inside the output folder; outputs are "
                                  "never taken as inputs")
        if not file.is_file():
            raise ImageInputError(f"IMAGES: {str(file)!r} (from {where}) is not a regular file")
        resolved = file.resolve()
        if resolved in unique:
            previous_id = unique[resolved][0]
            if given_id and previous_id and given_id != previous_id:
                raise ImageInputError(f"IMAGES: {str(file)!r} is listed under two ids, {previous_id!r} and "
                                      f"{given_id!r}; list each file once")
            previous_context = unique[resolved][3]
            if context and previous_context and context != previous_context:
                raise ImageInputError(f"IMAGES: {str(file)!r} is listed twice with different context ({where} and "
                                      f"{unique[resolved][2]}); list each file once")
            if context and not previous_context:
                unique[resolved] = (given_id or previous_id, unique[resolved][1], where, context)
            continue
        unique[resolved] = (given_id, file, where, context)
    unnamed = [file for given_id, file, _, _ in unique.values() if not given_id]
    stems = Counter(_safe_id(file.stem) for file in unnamed)
    folder_stems = Counter(_safe_id(f"{file.parent.name}_{file.stem}") for file in unnamed)
    images: list[ProtectedImage] = []
    used_ids: dict[str, Path] = {}
    for given_id, file, where, context in unique.values():
        if given_id:
            image_id = _safe_id(given_id)
        elif stems[_safe_id(file.stem)] == 1:
            image_id = _safe_id(file.stem)
        elif folder_stems[_safe_id(f"{file.parent.name}_{file.stem}")] == 1:
            image_id = _safe_id(f"{file.parent.name}_{file.stem}")
        else:  # photo.jpg beside photo.png: the extension tells them apart
            image_id = _safe_id(f"{file.parent.name}_{file.name}")
        # Case-insensitively: on macOS and Windows file systems 'A.json' and 'a.json' are one file.
        other = used_ids.get(image_id.lower())
        if other is not None:
            raise ImageInputError(f"IMAGES: {str(file)!r} and {str(other)!r} would share the id {image_id!r}; give "
                                  "them distinct ids in a manifest")
        used_ids[image_id.lower()] = file
        images.append(ProtectedImage(image_id, file, file_sha256(file), context))
    return images


def _grey_to_8bit(array: np.ndarray, mode: str, path: Path) -> np.ndarray:
    """Rescale a 16-bit, 32-bit integer or float grey image to 8 bits by its format's range, never by clipping.

    Float images in [0, 1] are taken as such (the usual convention, e.g. tifffile's); other floats and
    integers are scaled by the smallest of the ranges 8-bit, 16-bit and signed 32-bit (Pillow's mode I) that holds them.
    """
    if not np.isfinite(array).all():
        raise ImageInputError(f"IMAGES: {str(path)!r} holds NaN or infinite pixel values")
    if array.min() < 0:
        raise ImageInputError(f"IMAGES: {str(path)!r} ({mode} mode) holds negative pixel values, which have no "
                              "agreed meaning as intensities; convert it to 8 or 16-bit first")
    if mode == "F" and array.max() <= 1.0:
        scale = 1.0
    elif mode.startswith("I;16"):
        scale = 65535.0
    else:
        scale = next(limit for limit in (255.0, 65535.0, 2.0**31 - 1) if array.max() <= limit or limit > 65535)
    return np.clip(array / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)


def check_images(images: list[ProtectedImage]) -> None:
    """Decode every image once, before any model is loaded, so a bad file is named before hours of work."""
    for image in images:
        prepare_image(image.path, 8)


def load_rgb(path: Path):
    """The image as verifier sees it before framing: EXIF orientation applied, 8-bit RGB, transparency over white
    (a PIL image)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            frames = getattr(opened, "n_frames", 1)
            if frames > 1:  # which frame an owner means is theirs to say: save it as a still image
                raise ImageInputError(f"IMAGES: {str(path)!r} holds {frames} frames (animated, or pages); verifier "
                                      "certifies still images: save the frame you mean as an image file of its own")
            image = ImageOps.exif_transpose(opened)
            image.load()
    except Image.DecompressionBombError as error:
        raise ImageInputError(f"IMAGES: {str(path)!r} is refused as a decompression bomb: {error}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise ImageInputError(f"IMAGES: {str(path)!r} cannot be read as an image: {error}") from None
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        image = Image.fromarray(_grey_to_8bit(np.asarray(image, dtype=np.float64), image.mode, path), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(canvas, rgba)
    return image.convert("RGB")


def centre_square(image, resolution: int) -> np.ndarray:
    """The largest centred square of a PIL RGB image, resized to ``resolution``; float32 RGB HWC in [0, 1]."""
    from PIL import Image

    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    # Crop first, then resize: resizing with a box would let pixels outside the square bleed in.
    image = image.crop((left, top, left + side, top + side))
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.float32) / 255.0


def prepare_image(path: Path, resolution: int) -> np.ndarray:
    """Load, normalise and centre-crop one image to ``resolution``; float32 RGB HWC in [0, 1]."""
    return centre_square(load_rgb(path), resolution)
