"""Reference models shipped with verifier: small Stable-Diffusion-architecture models that really
memorize some of their training images, with a manifest of measured ground truth.

They are stock diffusers folders: the pipeline class their ``model_index.json`` names
(``StableDiffusionPipeline``, ``StableDiffusionXLPipeline`` or ``StableDiffusion3Pipeline``) loads them with
``from_pretrained(path, local_files_only=True)`` and no verifier code. They were built by
``benchmarks/reference_model/train.py`` (see the README there for commands, runtimes and figures).

- ``reference-32px``: 32x32 images, the yardstick of ``verifier demo`` and of published figures.
- ``reference-v-32px``: 32x32 images, v-prediction (the SD 2.x objective), smaller UNet.
- ``reference-xl-32px``: 32x32 images, SDXL architecture (two text encoders, pooled embedding,
  ``add_time_ids``); loads as ``StableDiffusionXLPipeline``.
- ``reference-sd3-32px``: 32x32 images, SD3 architecture (CLIP-L- and CLIP-G-like encoders, T5, an
  MMDiT transformer, rectified flow with shift 3); loads as ``StableDiffusion3Pipeline``.
- ``fixture-16px``: 16x16 images, a few memorized and held-out images, loads in well under a second
  for tests.
- ``reference-part-32px``: 32x32 images, two logos each stamped on thousands of different backgrounds
  (part-level memorization: the logo is replicated, the picture around it is not), with composites of
  each logo on never-trained backgrounds and decoys among its images of interest.

Reference LoRAs (``REFERENCE_LORAS``: name -> base), built by ``benchmarks/reference_model/train_lora.py``:

- ``reference-32px-lora``: a LoRA on ``reference-32px`` trained DreamBooth-style on crops of photographs the
  base never saw; the same weights in diffusers' layout (``pytorch_lora_weights.safetensors``) and kohya's
  (``pytorch_lora_weights_kohya.safetensors``), with a manifest of which images the LoRA introduced, which the
  base already reproduced (inherited), which it removed, and which neither reproduces.
- ``reference-xl-32px-lora``: the same recipe on ``reference-xl-32px`` (the SDXL architecture: two text encoders,
  pooled embedding and size ids), each duplicated crop seen 3000 times.
"""

from __future__ import annotations

import json
from pathlib import Path

# Models whose ground truth is whole images (memorized or not); the part model's is per part too.
WHOLE_IMAGE_MODELS = ("reference-32px", "fixture-16px", "reference-v-32px", "reference-xl-32px", "reference-sd3-32px")
PART_MODELS = ("reference-part-32px",)
REFERENCE_MODELS = WHOLE_IMAGE_MODELS + PART_MODELS
REFERENCE_LORAS = {"reference-32px-lora": "reference-32px",  # LoRA -> the reference model it was trained on
                   "reference-xl-32px-lora": "reference-xl-32px"}
LORA_LAYOUTS = {"diffusers": "pytorch_lora_weights.safetensors", "kohya": "pytorch_lora_weights_kohya.safetensors"}


def reference_model_path(name: str = "reference-32px") -> Path:
    """Folder of a shipped reference model."""
    if name not in REFERENCE_MODELS:
        raise ValueError(f"unknown reference model {name!r}; available: {', '.join(REFERENCE_MODELS)}")
    path = Path(__file__).resolve().parent / name
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"reference model {name!r} is missing its files at {path}; reinstall verifier")
    return path


def reference_lora_path(name: str = "reference-32px-lora", layout: str = "diffusers") -> Path:
    """A shipped reference LoRA's file in ``layout`` (diffusers or kohya); its base: ``REFERENCE_LORAS[name]``."""
    if name not in REFERENCE_LORAS or layout not in LORA_LAYOUTS:
        raise ValueError(f"unknown reference LoRA {name!r} / layout {layout!r}; available: "
                         f"{', '.join(REFERENCE_LORAS)} in {', '.join(LORA_LAYOUTS)}")
    path = Path(__file__).resolve().parent / name / LORA_LAYOUTS[layout]
    if not path.is_file():
        raise FileNotFoundError(f"reference LoRA {name!r} is missing its file at {path}; reinstall verifier")
    return path


def load_lora_manifest(name: str = "reference-32px-lora") -> dict:
    """The reference LoRA's manifest: per image its file, caption, split, and replication under base and LoRA."""
    return json.loads((reference_lora_path(name).parent / "manifest.json").read_text())


def load_manifest(name: str = "reference-32px") -> dict:
    """The reference model's manifest: per image its file, sha256, caption, split and measured replication."""
    return json.loads((reference_model_path(name) / "manifest.json").read_text())


def reframed_copy(image: dict, manifest: dict) -> dict | None:
    """The memorized image of ``manifest`` that ``image``, a crop of the same photograph, re-frames within the
    framing search's bounds (``verifier.framing.BOUNDS``), with the framing; None for a memorized image or
    where there is none.

    A held-out crop of a memorized photograph is never trained by its pixels, yet it can be the memorized
    crop framed a little tighter or moved: by content an owner's copy of a memorized image, which the
    framing search is built to match (issue 22). The relation is geometry only, from the two crops' boxes
    in the source photograph: the memorized box is the model's frame placed on this image.
    """
    if image.get("memorized"):
        return None
    from verifier.framing import BOUNDS

    own = image["source"]
    for other in manifest["images"]:
        box = other["source"]
        if not other.get("memorized") or box["photo"] != own["photo"]:
            continue
        scale = box["size"] / own["size"]  # the frame's side over the owner image's side
        centre = [(box[edge] + box["size"] / 2 - own[edge] - own["size"] / 2) / box["size"] for edge in ("top", "left")]
        mirror = bool(box.get("flip", False)) != bool(own.get("flip", False))
        if box.get("flip", False):  # the frame sits on the owner image turned like the memorized crop: mirrored
            centre[1] = -centre[1]
        covered = [max(0, min(box[e] + box["size"], own[e] + own["size"]) - max(box[e], own[e])) for e in ("top", "left")]
        overlap = covered[0] * covered[1] / box["size"] ** 2
        if BOUNDS.contains(scale, (centre[0], centre[1]), overlap, mirror):
            return {"memorized_image": other["id"], "scale": round(scale, 4),
                    "shift": [round(value, 4) for value in centre], "mirror": mirror, "overlap": round(overlap, 4)}
    return None
