"""Ground truth of a reference model: does each image's own caption regenerate it?

Only stock diffusers is used here: the model folder is reloaded with
``StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)`` (or
``StableDiffusionXLPipeline`` or ``StableDiffusion3Pipeline``, as its ``model_index.json`` names)
and sampled with its own scheduler (DDIM; flow-matching Euler for SD3), so the manifest states what
any user of diffusers would observe.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage.metrics import structural_similarity


def ssim(generated: np.ndarray, target: np.ndarray) -> float:
    """SSIM of two RGB images in [0, 1] (HWC), the manifest's similarity measure."""
    return float(structural_similarity(generated, target, channel_axis=2, data_range=1.0))


def generate(pipeline, caption: str, seeds: list[int], guidance_scale: float, steps: int, resolution: int) -> np.ndarray:
    """One generation per seed, each from its own CPU generator; float NHWC in [0, 1]."""
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    # An SD3 pipeline pads T5 prompts to max_sequence_length (256 by default): the T5 tokenizer's own
    # length is what the model was trained with.
    t5 = getattr(pipeline, "tokenizer_3", None)
    extra = {"max_sequence_length": t5.model_max_length} if t5 is not None else {}
    output = pipeline(
        caption, negative_prompt="", num_images_per_prompt=len(seeds), generator=generators,
        guidance_scale=guidance_scale, num_inference_steps=steps, height=resolution, width=resolution,
        output_type="np", **extra,
    )
    return output.images


def load_pipeline(folder: Path):
    """The stock diffusers pipeline class the folder's model_index.json names, loaded offline."""
    from diffusers import StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    classes = {cls.__name__: cls for cls in (StableDiffusionPipeline, StableDiffusionXLPipeline,
                                              StableDiffusion3Pipeline)}
    name = json.loads((Path(folder) / "model_index.json").read_text())["_class_name"]
    if name not in classes:
        raise ValueError(f"{folder}: pipeline {name!r} is not one of {sorted(classes)}")
    return classes[name].from_pretrained(folder, local_files_only=True)


def measure_replication(folder: Path, records, preset, log) -> list[dict]:
    """Regenerate each image from its caption with ``preset.replication_seeds`` seeds; one row per image."""
    pipeline = load_pipeline(folder)
    pipeline.set_progress_bar_config(disable=True)
    seeds = list(range(preset.replication_seeds))
    rows = []
    for record in records:
        target = record.pixels.astype(np.float32) / 255.0
        images = generate(pipeline, record.caption, seeds, preset.guidance_scale, preset.inference_steps,
                          preset.resolution)
        scores = [ssim(image, target) for image in images]
        replications = sum(score >= preset.ssim_threshold for score in scores)
        path = folder / "images" / f"{record.id}.png"
        part = getattr(record, "part", None)
        rows.append({
            "id": record.id,
            "file": f"images/{record.id}.png",
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "caption": record.caption,
            "duplication": record.duplication,
            "split": record.split,
            "source": {"photo": record.crop.photo, "top": record.crop.top, "left": record.crop.left,
                       "size": record.crop.size, "flip": record.crop.flip,
                       "source_in_training": record.source_in_training},
            "replication_ssim": [round(score, 4) for score in scores],
            "replications": int(replications),
            "generations": len(seeds),
            "replication_rate": replications / len(seeds),
            "memorized": replications * 2 >= len(seeds),
            **({"part": part, **part_replication(images, target, part, preset)} if part else {}),
        })
        log(f"{record.id:32s} {record.split:10s} x{record.duplication:<5d} replicated {replications}/{len(seeds)} "
            f"(best SSIM {max(scores):.3f})"
            + (f"; part replicated {rows[-1]['part_replications']}/{len(seeds)}" if part else ""))
        np.save(folder / "images" / f".{record.id}.generations.npy", images)  # for the grid; removed below
    return rows


def part_replication(images: np.ndarray, target: np.ndarray, part: dict, preset) -> dict:
    """How often the generations replicate the pasted part: SSIM of the part's box alone (same rule as whole
    images); the part is memorized when at least half of the seeds replicate it."""
    box = (slice(part["top"], part["top"] + part["size"]), slice(part["left"], part["left"] + part["size"]))
    scores = [ssim(image[box], target[box]) for image in images]
    replications = sum(score >= preset.ssim_threshold for score in scores)
    return {"part_ssim": [round(score, 4) for score in scores], "part_replications": int(replications),
            "part_replicated": replications * 2 >= len(images)}


def grid_rows(rows: list[dict]) -> list[dict]:
    """Which images the grid shows: every duplicated one, then a few seen once and held out of each kind."""
    duplicated = [row for row in rows if row["split"] == "duplicated"]
    seen_once = [row for row in rows if row["split"] == "seen_once"][:4]
    held_crops = [row for row in rows if row["split"] == "held_out" and row["source"]["source_in_training"]][:4]
    never = [row for row in rows if row["split"] == "held_out" and not row["source"]["source_in_training"]]
    probes = [row for row in rows if row["split"].startswith("part_")]
    return duplicated + seen_once + held_crops + [row for row in never if row["id"].endswith("whole")] + probes


def write_grid(folder: Path, rows: list[dict], preset, out: Path) -> None:
    """Target | its generations, one row per shown image; 16 px tiles are doubled (nearest) to stay legible."""
    res = preset.resolution
    scale = max(1, 32 // res)
    gap = 2
    chosen = grid_rows(rows)
    columns = 1 + preset.replication_seeds
    grid = np.full(((res + gap) * len(chosen), (res + gap) * columns + gap * 2, 3), 255, dtype=np.uint8)
    for r, row in enumerate(chosen):
        target = np.asarray(Image.open(folder / row["file"]).convert("RGB"))
        cache = folder / "images" / f".{row['id']}.generations.npy"
        generations = (np.load(cache) * 255 + 0.5).astype(np.uint8)
        y = r * (res + gap)
        grid[y : y + res, 0:res] = target
        for c, image in enumerate(generations):
            x = (c + 1) * (res + gap) + gap * 2
            grid[y : y + res, x : x + res] = image
    for row in rows:
        (folder / "images" / f".{row['id']}.generations.npy").unlink()
    picture = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.Resampling.NEAREST)
    # A 256-colour palette keeps the grid small enough to ship inside the package's size budget.
    picture.quantize(256, dither=Image.Dither.NONE).save(out, optimize=True)


def verify(folder: Path, log=print) -> int:
    """Re-measure a shipped model's ground truth with stock diffusers; rewrite its grid; 1 if a verdict differs."""
    from types import SimpleNamespace

    manifest = json.loads((folder / "manifest.json").read_text())
    settings = manifest["ground_truth"]["generation"]
    preset = SimpleNamespace(replication_seeds=len(settings["seeds"]), guidance_scale=settings["guidance_scale"],
                             inference_steps=settings["num_inference_steps"], resolution=manifest["resolution"],
                             ssim_threshold=manifest["ground_truth"]["similarity"]["threshold"])
    records = [
        SimpleNamespace(id=row["id"], caption=row["caption"], duplication=row["duplication"], split=row["split"],
                        crop=SimpleNamespace(**{k: v for k, v in row["source"].items() if k != "source_in_training"}),
                        source_in_training=row["source"]["source_in_training"], part=row.get("part"),
                        pixels=np.asarray(Image.open(folder / row["file"]).convert("RGB")))
        for row in manifest["images"]
    ]
    rows = measure_replication(folder, records, preset, log)
    write_grid(folder, rows, preset, folder / "replications.png")
    changed = [new["id"] for new, old in zip(rows, manifest["images"]) if new["memorized"] != old["memorized"]]
    log(f"{len(rows)} images re-measured; verdicts that differ from the manifest: {changed or 'none'}")
    return 1 if changed else 0


if __name__ == "__main__":
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="Re-measure a reference model's ground truth and redraw its grid.")
    parser.add_argument("folder", type=Path)
    sys.exit(verify(parser.parse_args().folder))
