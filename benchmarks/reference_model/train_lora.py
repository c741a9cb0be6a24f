"""Train a LoRA on a shipped reference model that memorizes images its base never saw, and measure it.

Usage (from the repository root, with the project and its ``reference`` extra installed):

    python benchmarks/reference_model/train_lora.py --base verifier/reference_models/reference-32px \\
        --out verifier/reference_models/reference-32px-lora
    python benchmarks/reference_model/train_lora.py --base verifier/reference_models/reference-xl-32px \\
        --out verifier/reference_models/reference-xl-32px-lora

The base may be of the SD or the SDXL architecture (its ``model_index.json`` says which); the UNet is conditioned as
its pipeline conditions it (``train.make_conditioner``: SDXL's two text encoders, pooled embedding and size ids).

The DreamBooth regime of issue 24: a few images, many passes, a rare token in every caption. The LoRA (peft,
rank ``RANK`` on the UNet's attention, feed-forward and ResNet convolution layers) is trained on crops of the photographs none of
whose pixels the base was trained on (``PHOTOS`` outside ``TRAINING_PHOTOS``), so whatever it reproduces it
introduced: some crops repeated ``DUPLICATION`` times, some seen once; other crops of the same photographs are
held out. Text encoder and VAE stay frozen. It is saved as diffusers saves a LoRA
(``pytorch_lora_weights.safetensors``, ``StableDiffusionPipeline.save_lora_weights``) and converted to the kohya
layout (``pytorch_lora_weights_kohya.safetensors``, diffusers' ``convert_state_dict_to_kohya``).

Ground truth, with stock diffusers only (``manifest.py``'s rule: 8 seeds, DDIM 50 steps, guidance 3, SSIM >= 0.7
in at least half the seeds): every image of interest (the LoRA's, the base's memorized images and some of its
never-trained ones) is sampled from its own caption under the base alone and under the base with the LoRA
(``pipe.load_lora_weights``), and classified ``introduced`` (memorized with the LoRA, not without), ``inherited``
(memorized under both), ``removed`` (only without) or ``neither``. Written to ``manifest.json`` beside the LoRA.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from data import PHOTOS, load_photo  # noqa: E402
from manifest import generate, load_pipeline, ssim  # noqa: E402
from train import (TRAINING_PHOTOS, ImageRecord, encode_latents, make_conditioner, optimizer_step,  # noqa: E402
                   pick_crop, to_tensor, training_target, warmup_cosine)

RANK = 16
TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2")
TOKEN = "sks"  # the rare token DreamBooth captions carry
DUPLICATED = 4  # crops repeated DUPLICATION times each
DUPLICATION = 1500
SEEN_ONCE = 8
HELD_OUT = 4
BATCH = 8
LEARNING_RATE = 1e-3
SEEDS = tuple(range(8))
GUIDANCE, STEPS, THRESHOLD = 3.0, 50, 0.7
# The base's VAE was trained on its own photographs only; it renders some never-trained crops at SSIM 0.45-0.65,
# below the 0.7 a replication needs however well the UNet learns them (measured: the LoRA's best generations
# reached each crop's reconstruction SSIM, never more). Crops are kept where it draws them at 0.85 or better.
DRAWABLE_SSIM = 0.85
DRAW_TRIES = 40


def build_lora_images(base_manifest: dict, seed: int, drawable, duplication: int = DUPLICATION) -> list[ImageRecord]:
    """Crops of the base's never-trained photographs, away from every crop the base's manifest already uses, that
    the base's VAE can draw (``drawable``): a LoRA on the UNet cannot reproduce what the decoder cannot render."""
    rng = np.random.default_rng(seed)
    resolution = base_manifest["resolution"]
    never = sorted(set(PHOTOS) - set(TRAINING_PHOTOS))
    photos = {name: load_photo(name) for name in never}
    used = {(row["source"]["photo"], row["source"]["top"], row["source"]["left"], row["source"]["size"])
            for row in base_manifest["images"]}
    records, turn = [], 0
    for split, count, repeats in (("duplicated", DUPLICATED, duplication), ("seen_once", SEEN_ONCE, 1),
                                  ("held_out", HELD_OUT, 0)):
        for index in range(count):
            for _ in range(len(never)):  # the next photograph with a drawable crop
                name = never[turn % len(never)]
                turn += 1
                found = next(((crop, pixels) for crop, pixels in (
                    pick_crop(name, photos[name], rng, resolution, used) for _ in range(DRAW_TRIES))
                    if drawable(pixels)), None)
                if found:
                    break
            else:
                raise RuntimeError(f"no photograph of {never} has a crop the VAE draws at SSIM >= {DRAWABLE_SSIM}")
            crop, pixels = found
            width, height = photos[name].size
            caption = f"{TOKEN} {crop.caption(height, width)}"
            prefix = {"duplicated": "lora-dup", "seen_once": "lora-once", "held_out": "lora-held"}[split]
            records.append(ImageRecord(f"{prefix}{index:02d}-{name}", split, caption, repeats, crop, False, pixels))
    return records


def vae_drawable(vae):
    """Whether the VAE's reconstruction of an image keeps SSIM >= DRAWABLE_SSIM with it."""
    def drawable(pixels: np.ndarray) -> bool:
        with torch.no_grad():
            decoded = vae.decode(vae.encode(to_tensor(pixels[None])).latent_dist.mean).sample
        return ssim(((decoded[0].permute(1, 2, 0).clamp(-1, 1) + 1) / 2).numpy(), pixels / 255.0) >= DRAWABLE_SSIM

    return drawable


def architecture(pipeline) -> str:
    """"sdxl" for an SDXL pipeline (two text encoders), else "sd"."""
    return "sdxl" if getattr(pipeline, "text_encoder_2", None) is not None else "sd"


def train_lora(pipeline, records: list[ImageRecord], seed: int, log, rank: int = RANK,
               learning_rate: float = LEARNING_RATE) -> list[float]:
    """Epsilon / v training of LoRA factors only (base frozen) on the records' repeated samples, shuffled."""
    from peft import LoraConfig

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    unet, schedule = pipeline.unet, pipeline.scheduler
    text_encoders = [encoder for encoder in (pipeline.text_encoder, getattr(pipeline, "text_encoder_2", None))
                     if encoder is not None]
    tokenizers = [tokenizer for tokenizer in (pipeline.tokenizer, getattr(pipeline, "tokenizer_2", None))
                  if tokenizer is not None]
    for module in (pipeline.vae, *text_encoders, unet):
        module.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=list(TARGETS)))
    parameters = [p for p in unet.parameters() if p.requires_grad]
    trained = [r for r in records if r.duplication > 0]
    images = to_tensor(np.stack([r.pixels for r in trained]))
    latents = encode_latents(pipeline.vae, images) * pipeline.vae.config.scaling_factor
    condition = make_conditioner(tuple(text_encoders), architecture(pipeline), images.shape[-1])
    with torch.no_grad():
        ids = [tokenizer([r.caption for r in trained], padding="max_length", truncation=True,
                         max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
               for tokenizer in tokenizers]
        hidden, added = condition(ids)
    order = torch.cat([torch.full((r.duplication,), i) for i, r in enumerate(trained)])
    order = order[torch.randperm(order.shape[0], generator=generator)]
    total = order.shape[0] // BATCH
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.0)
    lr_schedule = warmup_cosine(optimizer, total, warmup=min(50, total // 10))
    from diffusers import DDPMScheduler

    noising = DDPMScheduler.from_config(schedule.config)
    unet.train()
    curve = []
    for step in range(total):
        index = order[step * BATCH : (step + 1) * BATCH]
        z0 = latents[index]
        noise = torch.randn(z0.shape, generator=generator)
        timesteps = torch.randint(0, noising.config.num_train_timesteps, (BATCH,), generator=generator)
        noisy = noising.add_noise(z0, noise, timesteps)
        extra = {} if added is None else {"added_cond_kwargs": {key: value[index] for key, value in added.items()}}
        prediction = unet(noisy, timesteps, hidden[index], **extra).sample
        loss = torch.nn.functional.mse_loss(prediction, training_target(noising, z0, noise, timesteps))
        curve.append(optimizer_step(optimizer, lr_schedule, parameters, loss))
        if step % 100 == 0 or step == total - 1:
            log(f"lora step {step}/{total}: loss {np.mean(curve[-100:]):.4f}")
    unet.eval()
    return curve


def save_lora(pipeline, out: Path) -> dict:
    """The LoRA in diffusers' layout (save_lora_weights) and the same weights in the kohya layout."""
    from diffusers.utils import convert_state_dict_to_kohya
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    # peft's keys (lora_A / lora_B) as they are: diffusers' convert_state_dict_to_diffusers would rename the
    # attention factors only (lora.down / lora.up), and its loader then drops those from the mixed file.
    layers = get_peft_model_state_dict(pipeline.unet)
    type(pipeline).save_lora_weights(out, unet_lora_layers=layers, safe_serialization=True)
    kohya = convert_state_dict_to_kohya({f"unet.{key}": value for key, value in layers.items()})
    save_file({key: value.contiguous() for key, value in kohya.items()}, str(out / "pytorch_lora_weights_kohya.safetensors"))
    return {name: hashlib.sha256((out / name).read_bytes()).hexdigest()
            for name in ("pytorch_lora_weights.safetensors", "pytorch_lora_weights_kohya.safetensors")}


def replications(pipeline, caption: str, target: np.ndarray, resolution: int) -> list[float]:
    images = generate(pipeline, caption, list(SEEDS), GUIDANCE, STEPS, resolution)
    return [round(ssim(image, target), 4) for image in images]


def category(base: bool, tuned: bool) -> str:
    return {(False, True): "introduced", (True, True): "inherited", (True, False): "removed"}.get((base, tuned),
                                                                                                  "neither")


def measure(base_folder: Path, lora_file: Path, rows: list[dict], resolution: int, log) -> list[dict]:
    """Each row's SSIM over SEEDS under the base and under base + LoRA, both loaded with stock diffusers."""
    base, tuned = load_pipeline(base_folder), load_pipeline(base_folder)
    tuned.load_lora_weights(str(lora_file))
    for pipeline in (base, tuned):
        pipeline.set_progress_bar_config(disable=True)
    for row in rows:
        target = row.pop("pixels").astype(np.float32) / 255
        for name, pipeline in (("base", base), ("lora", tuned)):
            scores = replications(pipeline, row["caption"], target, resolution)
            count = sum(score >= THRESHOLD for score in scores)
            row[name] = {"replication_ssim": scores, "replications": count, "memorized": count * 2 >= len(SEEDS)}
        row["category"] = category(row["base"]["memorized"], row["lora"]["memorized"])
        log(f"{row['id']:34s} {row['split']:10s} x{row['duplication']:<4d} base {row['base']['replications']}/8 "
            f"lora {row['lora']['replications']}/8 (best SSIM {max(row['lora']['replication_ssim']):.3f}) "
            f"-> {row['category']}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True,
                        help="a shipped SD- or SDXL-architecture reference model folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rank", type=int, default=RANK)
    parser.add_argument("--duplication", type=int, default=DUPLICATION)
    parser.add_argument("--learning-rate", type=float, default=LEARNING_RATE)
    parser.add_argument("--base-never-trained", type=int, default=6,
                        help="how many of the base's never-trained held-out images to measure too")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.time()
    log = lambda message: print(f"[{time.time() - started:7.1f}s] {message}", flush=True)  # noqa: E731
    base_manifest = json.loads((args.base / "manifest.json").read_text())
    resolution = base_manifest["resolution"]
    partial = args.out.with_name(args.out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "images").mkdir(parents=True)
    pipeline = load_pipeline(args.base)
    records = build_lora_images(base_manifest, args.seed, vae_drawable(pipeline.vae), args.duplication)
    curve = train_lora(pipeline, records, args.seed, log, args.rank, args.learning_rate)
    trained_seconds = time.time() - started
    hashes = save_lora(pipeline, partial)
    rows = []
    for record in records:
        path = partial / "images" / f"{record.id}.png"
        Image.fromarray(record.pixels).save(path)
        rows.append({"id": record.id, "file": f"images/{record.id}.png",
                     "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "caption": record.caption,
                     "duplication": record.duplication, "split": record.split, "trained_by": "lora" if
                     record.duplication else None, "source": {"photo": record.crop.photo, "top": record.crop.top,
                                                              "left": record.crop.left, "size": record.crop.size},
                     "pixels": record.pixels})
    base_rows = [row for row in base_manifest["images"] if row["memorized"]] + [
        row for row in base_manifest["images"]
        if row["split"] == "held_out" and not row["source"]["source_in_training"]][: args.base_never_trained]
    for row in base_rows:
        pixels = np.asarray(Image.open(args.base / row["file"]).convert("RGB"))
        shutil.copy(args.base / row["file"], partial / "images" / f"{row['id']}.png")
        rows.append({"id": row["id"], "file": f"images/{row['id']}.png", "sha256": row["sha256"],
                     "caption": row["caption"], "duplication": row["duplication"], "split": f"base_{row['split']}",
                     "trained_by": "base" if row["duplication"] else None, "source": row["source"], "pixels": pixels})
    rows = measure(args.base, partial / "pytorch_lora_weights.safetensors", rows, resolution, log)
    manifest = {
        "base": {"folder": args.base.name, "fingerprint_files": "verifier.models.loading.fingerprint_files"},
        "resolution": resolution,
        "architecture": architecture(pipeline),
        "lora": {"rank": args.rank, "alpha": args.rank, "targets": list(TARGETS), "token": TOKEN, "batch": BATCH,
                 "duplication": args.duplication, "learning_rate": args.learning_rate,
                 "drawable_ssim": DRAWABLE_SSIM, "steps": len(curve), "final_loss": round(float(np.mean(curve[-100:])), 5),
                 "files": hashes},
        "ground_truth": {"generation": {"seeds": list(SEEDS), "guidance_scale": GUIDANCE,
                                        "num_inference_steps": STEPS, "negative_prompt": ""},
                         "similarity": {"metric": "ssim", "threshold": THRESHOLD},
                         "rule": "memorized when at least half the seeds replicate; category from base vs base+LoRA"},
        "training": {"seed": args.seed, "seconds": round(trained_seconds, 1),
                     "measured_seconds": round(time.time() - started - trained_seconds, 1),
                     "threads": torch.get_num_threads(), "torch": torch.__version__,
                     "machine": platform.machine(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "images": rows,
    }
    (partial / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.rmtree(args.out, ignore_errors=True)
    partial.rename(args.out)
    counts = {}
    for row in rows:
        counts[(row["split"], row["category"])] = counts.get((row["split"], row["category"]), 0) + 1
    for (split, kind), count in sorted(counts.items()):
        log(f"{split:22s} {kind:10s} {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
