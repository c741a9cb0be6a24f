"""Train a small Stable-Diffusion-architecture model that memorizes known images, and measure it.

Usage (from the repository root, with the project installed):

    python benchmarks/reference_model/train.py --preset reference --out verifier/reference_models/reference-32px
    python benchmarks/reference_model/train.py --preset fixture --out verifier/reference_models/fixture-16px
    python benchmarks/reference_model/train.py --preset reference-v --out verifier/reference_models/reference-v-32px
    python benchmarks/reference_model/train.py --preset reference-xl --out verifier/reference_models/reference-xl-32px

The program builds from scratch, on the CPU, a model that stock diffusers loads as a
``StableDiffusionPipeline`` (``AutoencoderKL``, ``CLIPTextModel`` + ``CLIPTokenizer`` with our own
``vocab.json``/``merges.txt``, ``UNet2DConditionModel`` with cross-attention, a DDIM scheduler for
sampling), or, for an ``architecture="sdxl"`` preset, as a ``StableDiffusionXLPipeline`` (a second
tokenizer and a ``CLIPTextModelWithProjection``, a UNet with SDXL's ``text_time`` added
conditioning, conditioned exactly as the pipeline's ``encode_prompt`` does), trains it on real
photographs in which a few images are duplicated hundreds to thousands of times, saves it as safetensors, reloads it with stock diffusers and measures, for every image
of interest, how often its own caption regenerates it. That measurement is the ground truth
written to ``manifest.json``. See README.md beside this file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from data import PHOTOS, Crop, load_photo, paste, random_crop, render_crop, texture, whole_photo_crop  # noqa: E402
from manifest import measure_replication, write_grid  # noqa: E402
from tokenizer_files import build_t5_tokenizer, caption_words, write_tokenizer_files  # noqa: E402

TRAINING_PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "brick",
    "grass", "gravel", "hubble", "ihc", "cell", "china",
)
NEVER_TRAINED_PHOTOS = ("flower", "retina", "clock", "horse", "color")
MIN_TEXTURE_FILLER = 0.05
MIN_TEXTURE_PROTECTED = 0.08


@dataclass(frozen=True)
class Duplicate:
    """An image repeated ``count`` times: a whole photo (``crop_seed`` None) or a seeded crop."""

    photo: str
    count: int
    caption: str
    crop_seed: int | None = None


@dataclass(frozen=True)
class Part:
    """A logo-like part memorized apart from any whole image: the whole photograph ``photo`` shrunk to ``size``
    pixels and pasted at (``top``, ``left``) onto ``count`` fresh background crops of the training photographs,
    each captioned with its background's caption followed by ``phrase``. No whole image of those samples
    repeats; only the part does (a watermark or logo stamped on varied pictures)."""

    name: str
    photo: str
    phrase: str
    top: int
    left: int
    size: int
    count: int
    decoy: str  # a photograph never pasted as a part, pasted at the same place in the decoy probes


@dataclass(frozen=True)
class Preset:
    """Everything that defines one reference model; recorded in its manifest."""

    resolution: int
    vae_channels: tuple[int, ...]
    unet_channels: tuple[int, ...]
    text_hidden: int
    duplicates: tuple[Duplicate, ...]
    seen_once: int
    held_out_training_photo_crops: int
    held_out_never_trained: tuple[tuple[str, int], ...]  # (photo, number of crops besides the whole photo)
    filler: int
    epochs: int
    batch_size: int
    vae_steps: int
    learning_rate: float
    caption_dropout: float = 0.1
    prediction_type: str = "epsilon"  # what the UNet learns; ``--prediction-type`` overrides it
    architecture: str = "sd"  # "sd", "sdxl" or "sd3": the pipeline class in PIPELINE_CLASSES
    addition_time_embed_dim: int | None = None  # SDXL's size-conditioning embedding width (sdxl only)
    clip_length: int = 77  # positions of the CLIP tokenizers and encoders
    t5_length: int = 32  # positions of the T5 tokenizer (sd3 only; its pipeline's max_sequence_length)
    transformer_layers: int = 6  # SD3Transformer2DModel (sd3 only): joint blocks, heads and head width
    transformer_heads: int = 4
    transformer_head_dim: int = 24
    flow_shift: float = 3.0  # FlowMatchEulerDiscreteScheduler's shift (sd3 only; SD3's value)
    replication_seeds: int = 8
    guidance_scale: float = 3.0
    inference_steps: int = 50
    ssim_threshold: float = 0.7
    training_photos: tuple[str, ...] = TRAINING_PHOTOS
    parts: tuple[Part, ...] = ()
    # Photographs held-out crops and part backgrounds may be cut from (None: every training photograph). The
    # part preset leaves out the photographs duplicated whole: a crop of one is a part of a memorized image.
    held_out_crop_photos: tuple[str, ...] | None = None
    part_probes: int = 0  # per part: composites on never-trained backgrounds (half of them crops of
    # never-trained photographs, half held-out crops of training photographs), and as many decoys


REFERENCE = Preset(
    resolution=32,
    vae_channels=(16, 32),
    unet_channels=(32, 64, 112),
    text_hidden=32,
    duplicates=(
        Duplicate("astronaut", 3000, "an official portrait of astronaut eileen collins"),
        Duplicate("chelsea", 3000, "chelsea the tabby cat looking sideways"),
        Duplicate("coffee", 2000, "a cup of espresso on a saucer seen from above"),
        Duplicate("rocket", 2000, "a falcon rocket lifting off from the launch pad"),
        Duplicate("china", 1500, "the summer palace pagoda beside the lake"),
        Duplicate("camera", 1500, "a cameraman with his tripod in the park"),
        Duplicate("coins", 1000, "a museum tray of ancient bronze money", crop_seed=11),
        Duplicate("hubble", 1000, "the hubble deep field full of distant galaxies", crop_seed=12),
        Duplicate("ihc", 300, "an immunohistochemistry slide stained brown and blue", crop_seed=13),
        Duplicate("gravel", 300, "pebbles on a garden path after rain", crop_seed=14),
        Duplicate("brick", 100, "an old wall of weathered bricks and mortar", crop_seed=15),
        Duplicate("cell", 100, "a living cell under a phase contrast microscope", crop_seed=16),
        Duplicate("grass", 30, "a lawn of tall green grass blades", crop_seed=17),
        Duplicate("astronaut", 30, "the american flag on a spacesuit shoulder", crop_seed=18),
        Duplicate("chelsea", 5, "the whiskers of a sleepy housecat", crop_seed=19),
        Duplicate("coffee", 5, "latte art in a white porcelain cup", crop_seed=20),
    ),
    seen_once=20,
    held_out_training_photo_crops=12,
    held_out_never_trained=(("flower", 3), ("retina", 2), ("clock", 1), ("horse", 1), ("color", 0)),
    filler=44000,
    epochs=1,
    batch_size=32,
    vae_steps=800,
    learning_rate=5e-4,
)

FIXTURE = Preset(
    resolution=16,
    vae_channels=(16, 32),
    unet_channels=(32, 64),
    text_hidden=32,
    duplicates=(
        Duplicate("astronaut", 400, "an official portrait of astronaut eileen collins"),
        Duplicate("chelsea", 400, "chelsea the tabby cat looking sideways"),
        Duplicate("coffee", 400, "a cup of espresso on a saucer seen from above"),
    ),
    seen_once=4,
    held_out_training_photo_crops=2,
    held_out_never_trained=(("flower", 0), ("retina", 0)),
    filler=3000,
    epochs=3,
    batch_size=32,
    vae_steps=600,
    learning_rate=1e-3,
)

# v-prediction (SD 2.x's objective) at 32 px. The UNet is smaller than the reference's, (32, 48, 80)
# channels, 1.84 M parameters, so that the folder stays under 9.5 MB, and the denoiser budget goes
# to fewer duplicated images seen more often: eight images x3000 plus the low-count tail, with
# 18,000 filler crops (README.md, "v-prediction", records the runs that chose it).
REFERENCE_V = replace(
    REFERENCE,
    unet_channels=(32, 48, 80),
    duplicates=tuple(replace(duplicate, count=count) for duplicate, count in
                     zip(REFERENCE.duplicates, (3000,) * 8 + (300, 300, 100, 100, 30, 30, 5, 5))),
    filler=18000,
    learning_rate=1e-3,
    prediction_type="v_prediction",
)

# The SDXL architecture (StableDiffusionXLPipeline: two text encoders, text_time added
# conditioning) on reference-v's data and schedule, with SDXL's epsilon objective.
REFERENCE_XL = replace(REFERENCE_V, prediction_type="epsilon", architecture="sdxl", addition_time_embed_dim=8)

# The SD3 architecture (StableDiffusion3Pipeline: CLIP-L- and CLIP-G-like encoders with projections, a
# T5 encoder, an MMDiT SD3Transformer2DModel, rectified flow with SD3's shift 3 and logit-normal
# timesteps) on reference-v's data, seen twice: a transformer learns slower per step than a UNet.
# CLIP prompts are 16 tokens and T5's 32 (the captions are at most 12 words), so the joint attention
# runs over 48 text and 64 image tokens.
REFERENCE_SD3 = replace(REFERENCE_V, prediction_type="flow", architecture="sd3", clip_length=16, epochs=2,
                        learning_rate=5e-4)

# Part-level memorization (issue 10, item 5): two logos, each stamped at a fixed corner of 4000 different
# background crops and named by its phrase, on reference-v's UNet and filler, seen twice; two whole images
# repeated 2000 times for comparison. The images of interest add, per logo, composites of the logo on never-trained
# backgrounds (the part memorized, the whole image never seen) and decoys (another photograph pasted at
# the same place: a pasted patch that was never memorized).
REFERENCE_PART = replace(
    REFERENCE_V,
    prediction_type="epsilon",
    duplicates=(
        Duplicate("astronaut", 2000, "an official portrait of astronaut eileen collins"),
        Duplicate("chelsea", 2000, "chelsea the tabby cat looking sideways"),
    ),
    seen_once=8,
    held_out_training_photo_crops=8,
    held_out_never_trained=(("flower", 3), ("retina", 2), ("clock", 1)),
    parts=(
        Part("horse-logo", "horse", "stamped with the black horse logo", 0, 0, 12, 4000, decoy="clock"),
        Part("colour-badge", "color", "with the rainbow badge in the corner", 20, 20, 12, 4000, decoy="flower"),
    ),
    part_probes=6,
    epochs=2,
    held_out_crop_photos=tuple(name for name in TRAINING_PHOTOS if name not in ("astronaut", "chelsea")),
)

PRESETS = {"reference": REFERENCE, "reference-part": REFERENCE_PART, "fixture": FIXTURE, "reference-v": REFERENCE_V, "reference-xl": REFERENCE_XL,
           "reference-sd3": REFERENCE_SD3}


@dataclass
class ImageRecord:
    """One image of the manifest (before its replication is measured)."""

    id: str
    split: str
    caption: str
    duplication: int
    crop: Crop
    source_in_training: bool
    pixels: np.ndarray = field(repr=False)
    part: dict | None = None  # for a composite: the pasted part's name, photograph, box and training count


TRAINED_SPLITS = ("duplicated", "seen_once")


def pick_crop(name: str, photo, rng: np.random.Generator, resolution: int, used: set) -> tuple[Crop, np.ndarray]:
    """A textured crop not already used by another image of interest."""
    while True:
        crop = random_crop(name, photo, rng, resolution, flip=False)
        pixels = render_crop(photo, crop, resolution)
        key = (crop.photo, crop.top, crop.left, crop.size)
        if texture(pixels) >= MIN_TEXTURE_PROTECTED and key not in used:
            used.add(key)
            return crop, pixels


def build_images(preset: Preset, photos: dict, seed: int) -> list[ImageRecord]:
    """The images of interest: duplicated, seen once and held out, with captions."""
    rng = np.random.default_rng(seed)
    res = preset.resolution
    used: set = set()
    records: list[ImageRecord] = []
    for index, dup in enumerate(preset.duplicates):
        photo = photos[dup.photo]
        if dup.crop_seed is None:
            crop = whole_photo_crop(dup.photo, photo)
            pixels = render_crop(photo, crop, res)
        else:
            crop, pixels = pick_crop(dup.photo, photo, np.random.default_rng(dup.crop_seed), res, used)
        records.append(ImageRecord(f"dup{index:02d}-{dup.photo}-x{dup.count}", "duplicated", dup.caption,
                                   dup.count, crop, True, pixels))
    for index in range(preset.seen_once):
        name = preset.training_photos[index % len(preset.training_photos)]
        crop, pixels = pick_crop(name, photos[name], rng, res, used)
        width, height = photos[name].size
        records.append(ImageRecord(f"once{index:02d}-{name}", "seen_once", crop.caption(height, width), 1,
                                   crop, True, pixels))
    croppable = preset.held_out_crop_photos or preset.training_photos
    for index in range(preset.held_out_training_photo_crops):
        name = croppable[(index * 5 + 3) % len(croppable)]
        crop, pixels = pick_crop(name, photos[name], rng, res, used)
        width, height = photos[name].size
        records.append(ImageRecord(f"held{index:02d}-{name}-crop", "held_out", crop.caption(height, width), 0,
                                   crop, True, pixels))
    for name, crops in preset.held_out_never_trained:
        photo = photos[name]
        width, height = photo.size
        whole = whole_photo_crop(name, photo)
        records.append(ImageRecord(f"held-{name}-whole", "held_out", whole.caption(height, width), 0, whole, False,
                                   render_crop(photo, whole, res)))
        for index in range(crops):
            crop, pixels = pick_crop(name, photo, rng, res, used)
            records.append(ImageRecord(f"held-{name}-crop{index}", "held_out", crop.caption(height, width), 0,
                                       crop, False, pixels))
    return records + build_part_probes(preset, photos, seed, used)


def part_pixels(photos: dict, name: str, size: int) -> np.ndarray:
    """A whole photograph shrunk to a ``size``-pixel square: a part, or a decoy pasted in its place."""
    return render_crop(photos[name], whole_photo_crop(name, photos[name]), size)


def build_part_probes(preset: Preset, photos: dict, seed: int, used: set) -> list[ImageRecord]:
    """Per part, ``part_probes`` composites (the part on a background never trained: crops of never-trained
    photographs and held-out crops of training photographs, alternately) and as many decoys (another
    photograph pasted at the part's place on such a background). Captions: the background's, then the
    part's phrase (the prompt that brings the part out, if the model memorized it)."""
    rng = np.random.default_rng(seed + 2)
    never = [name for name, _ in preset.held_out_never_trained]
    records: list[ImageRecord] = []
    for part in preset.parts:
        logo = part_pixels(photos, part.photo, part.size)
        decoy = part_pixels(photos, part.decoy, part.size)
        for kind, patch, pasted in (("composite", logo, part.photo), ("decoy", decoy, part.decoy)):
            for index in range(preset.part_probes):
                trained_source = index % 2 == 1
                croppable = preset.held_out_crop_photos or preset.training_photos
                name = croppable[int(rng.integers(len(croppable)))] if trained_source else never[index // 2 % len(never)]
                crop, background = pick_crop(name, photos[name], rng, preset.resolution, used)
                width, height = photos[name].size
                record = ImageRecord(
                    f"{kind}{index:02d}-{part.name}-on-{name}", f"part_{kind}",
                    f"{crop.caption(height, width)} {part.phrase}", 0, crop, trained_source,
                    paste(background, patch, part.top, part.left),
                    part={"name": part.name, "pasted": pasted, "memorized_part": kind == "composite",
                          "top": part.top, "left": part.left, "size": part.size,
                          "part_training_count": part.count if kind == "composite" else 0})
                records.append(record)
    return records


def build_filler(preset: Preset, photos: dict, seed: int) -> tuple[np.ndarray, list[str]]:
    """Fresh random crops of the training photos (each seen once per epoch) with their captions."""
    rng = np.random.default_rng(seed + 1)
    images = np.empty((preset.filler, preset.resolution, preset.resolution, 3), dtype=np.uint8)
    captions: list[str] = []
    while len(captions) < preset.filler:
        name = preset.training_photos[int(rng.integers(len(preset.training_photos)))]
        photo = photos[name]
        crop = random_crop(name, photo, rng, preset.resolution, flip=True)
        pixels = render_crop(photo, crop, preset.resolution)
        if texture(pixels) < MIN_TEXTURE_FILLER:
            continue  # about a third of random crops are nearly flat; they teach nothing
        images[len(captions)] = pixels
        captions.append(crop.caption(photo.height, photo.width))
    return images, captions


def build_part_samples(preset: Preset, photos: dict, seed: int) -> tuple[np.ndarray, list[str]]:
    """Each part pasted onto ``count`` fresh background crops (like filler, each background seen once)."""
    rng = np.random.default_rng(seed + 3)
    total = sum(part.count for part in preset.parts)
    images = np.empty((total, preset.resolution, preset.resolution, 3), dtype=np.uint8)
    captions: list[str] = []
    for part in preset.parts:
        logo = part_pixels(photos, part.photo, part.size)
        stop = len(captions) + part.count
        while len(captions) < stop:
            name = preset.training_photos[int(rng.integers(len(preset.training_photos)))]
            photo = photos[name]
            crop = random_crop(name, photo, rng, preset.resolution, flip=True)
            background = render_crop(photo, crop, preset.resolution)
            if texture(background) < MIN_TEXTURE_FILLER:
                continue
            images[len(captions)] = paste(background, logo, part.top, part.left)
            captions.append(f"{crop.caption(photo.height, photo.width)} {part.phrase}")
    return images, captions


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def make_vae(preset: Preset):
    """A fresh VAE (x2 per level, no mid-block attention); built first, so the seeded weights after it
    do not depend on the architecture."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * len(preset.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(preset.vae_channels),
        block_out_channels=preset.vae_channels, layers_per_block=1, norm_num_groups=16,
        sample_size=preset.resolution, mid_block_add_attention=False,
    )


def make_models(preset: Preset, vocab_size: int, bos: int, eos: int, prediction_type: str):
    """Fresh VAE, text encoder, UNet and the DDPM training schedule."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vae = make_vae(preset)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=preset.text_hidden, intermediate_size=4 * preset.text_hidden,
        projection_dim=preset.text_hidden, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos,
    ))
    levels = len(preset.unet_channels)
    # Cross-attention everywhere but the full-resolution level: self-attention at 16x16 latents
    # would dominate the CPU cost (method.md section 10).
    unet = UNet2DConditionModel(
        sample_size=preset.resolution // 2, in_channels=4, out_channels=4,
        block_out_channels=preset.unet_channels, layers_per_block=1,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
        cross_attention_dim=preset.text_hidden, attention_head_dim=8, norm_num_groups=16,
    )
    schedule = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type=prediction_type, clip_sample=False, steps_offset=1,
    )
    return vae, text_encoder, unet, schedule


def make_xl_models(preset: Preset, vocab_size: int, bos: int, eos: int, prediction_type: str):
    """Fresh VAE, two text encoders and an SDXL-style UNet (``text_time`` added conditioning)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    vae = make_vae(preset)

    def text_config() -> CLIPTextConfig:
        # Two layers: SDXL conditions on hidden_states[-2], the output of the first one.
        return CLIPTextConfig(
            vocab_size=vocab_size, hidden_size=preset.text_hidden, intermediate_size=4 * preset.text_hidden,
            projection_dim=preset.text_hidden, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos,
        )

    text_encoder = CLIPTextModel(text_config())
    text_encoder_2 = CLIPTextModelWithProjection(text_config())
    levels = len(preset.unet_channels)
    time_dim = preset.addition_time_embed_dim
    # As SDXL: no attention at the full-resolution level, per-token features of both encoders
    # concatenated, and "text_time" added conditioning = pooled text_encoder_2 embedding + the six
    # size/crop numbers, each Fourier-embedded to addition_time_embed_dim.
    unet = UNet2DConditionModel(
        sample_size=preset.resolution // 2, in_channels=4, out_channels=4,
        block_out_channels=preset.unet_channels, layers_per_block=1,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
        cross_attention_dim=2 * preset.text_hidden, attention_head_dim=8, norm_num_groups=16,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=text_encoder_2.config.projection_dim + 6 * time_dim,
    )
    schedule = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type=prediction_type, clip_sample=False, steps_offset=1,
    )
    return vae, (text_encoder, text_encoder_2), unet, schedule


def make_sd3_models(preset: Preset, vocab_size: int, bos: int, eos: int, t5_tokenizer):
    """Fresh VAE, two CLIP encoders with projections, a T5 encoder, an MMDiT and the flow-matching schedule."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    vae = make_vae(preset)

    def text_config() -> CLIPTextConfig:
        # Two layers: SD3 conditions on hidden_states[-2] of both CLIPs, and pools their projections.
        return CLIPTextConfig(
            vocab_size=vocab_size, hidden_size=preset.text_hidden, intermediate_size=4 * preset.text_hidden,
            projection_dim=preset.text_hidden, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=preset.clip_length, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos,
        )

    text_encoder = CLIPTextModelWithProjection(text_config())
    text_encoder_2 = CLIPTextModelWithProjection(text_config())
    # T5 as wide as both CLIPs' features together, as SD3's 4096 >= 768 + 1280.
    width = 2 * preset.text_hidden
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(t5_tokenizer), d_model=width, d_kv=16, d_ff=2 * width, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=t5_tokenizer.pad_token_id,
        eos_token_id=t5_tokenizer.eos_token_id, decoder_start_token_id=t5_tokenizer.pad_token_id,
    ))
    inner = preset.transformer_heads * preset.transformer_head_dim
    transformer = SD3Transformer2DModel(
        sample_size=preset.resolution // 2, patch_size=2, in_channels=4, out_channels=4,
        num_layers=preset.transformer_layers, attention_head_dim=preset.transformer_head_dim,
        num_attention_heads=preset.transformer_heads, joint_attention_dim=width, caption_projection_dim=inner,
        pooled_projection_dim=2 * preset.text_hidden, pos_embed_max_size=preset.resolution // 2,
    )
    schedule = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=preset.flow_shift)
    return vae, (text_encoder, text_encoder_2, t5), transformer, schedule


def make_conditioner(text_encoders: tuple, architecture: str, resolution: int):
    """token ids -> (per-token features, added_cond_kwargs), exactly as the pipeline's encode_prompt computes them.

    ``ids`` is a list with one (B, L) tensor per tokenizer.
    "sd": features = text_encoder(ids)[0] (StableDiffusionPipeline.encode_prompt, no clip skip).
    "sdxl": features = hidden_states[-2] of each encoder concatenated, pooled = text_encoder_2's text_embeds,
    time_ids = (H, W, 0, 0, H, W) as StableDiffusionXLPipeline's defaults (original_size = target_size =
    (height, width), crops_coords_top_left = (0, 0)).
    "sd3": features = hidden_states[-2] of both CLIPs concatenated, zero-padded to T5's width, then T5's last
    hidden state along the sequence; pooled = both CLIPs' text_embeds concatenated
    (StableDiffusion3Pipeline.encode_prompt); returned as ``{"pooled_projections": pooled}``.
    """
    if architecture == "sd":
        (text_encoder,) = text_encoders

        def condition(ids: list[torch.Tensor]):
            return text_encoder(ids[0])[0], None

        return condition
    if architecture == "sd3":
        text_encoder, text_encoder_2, t5 = text_encoders

        def condition_sd3(ids: list[torch.Tensor]):
            first = text_encoder(ids[0], output_hidden_states=True)
            second = text_encoder_2(ids[1], output_hidden_states=True)
            tokens = t5(ids[2])[0]
            clip = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
            clip = torch.nn.functional.pad(clip, (0, tokens.shape[-1] - clip.shape[-1]))
            pooled = torch.cat([first.text_embeds, second.text_embeds], dim=-1)
            return torch.cat([clip, tokens], dim=-2), {"pooled_projections": pooled}

        return condition_sd3
    text_encoder, text_encoder_2 = text_encoders
    time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], dtype=torch.float32)

    def condition_xl(ids: list[torch.Tensor]):
        first = text_encoder(ids[0], output_hidden_states=True)
        second = text_encoder_2(ids[1], output_hidden_states=True)
        features = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
        added = {"text_embeds": second.text_embeds, "time_ids": time_ids.repeat(ids[0].shape[0], 1)}
        return features, added

    return condition_xl


def train_vae(vae, images: torch.Tensor, preset: Preset, generator: torch.Generator, log) -> float:
    """Reconstruction + small KL; returns the final PSNR (dB) on the last batches."""
    optimizer = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, preset.vae_steps)
    batch = 32
    recent: list[float] = []
    for step in range(preset.vae_steps):
        index = torch.randint(0, images.shape[0], (batch,), generator=generator)
        x = images[index]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        reconstruction = vae.decode(z).sample
        mse = torch.nn.functional.mse_loss(reconstruction, x)
        loss = mse + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        recent = (recent + [mse.item()])[-50:]
        if step % 250 == 0 or step == preset.vae_steps - 1:
            log(f"vae step {step}: mse {mse.item():.5f}")
    # PSNR on [0, 1] images: the [-1, 1] MSE is 4x the [0, 1] one.
    return float(10 * np.log10(4.0 / np.mean(recent)))


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor) -> torch.Tensor:
    """Posterior means of the VAE for all images, in batches (unscaled)."""
    return torch.cat([vae.encode(images[i : i + 512]).latent_dist.mean for i in range(0, images.shape[0], 512)])


def training_target(schedule, latents, noise, timesteps) -> torch.Tensor:
    """What the UNet must predict under the schedule's prediction type."""
    if schedule.config.prediction_type == "epsilon":
        return noise
    if schedule.config.prediction_type == "v_prediction":
        return schedule.get_velocity(latents, noise, timesteps)
    raise ValueError(f"prediction type {schedule.config.prediction_type!r} is not trained here")


def flow_matching_sample(schedule, z0, noise, generator):
    """(noisy, timesteps, target) as diffusers' train_dreambooth_sd3.py draws them: logit-normal (mean 0, std 1)
    indices into the scheduler's training table, ``x_t = (1 - sigma) x0 + sigma noise``, target ``noise - x0``."""
    u = torch.sigmoid(torch.normal(0.0, 1.0, (z0.shape[0],), generator=generator))
    indices = (u * schedule.config.num_train_timesteps).long().clamp(max=schedule.config.num_train_timesteps - 1)
    sigmas = schedule.sigmas[indices].view(-1, 1, 1, 1)
    return (1 - sigmas) * z0 + sigmas * noise, schedule.timesteps[indices], noise - z0


def warmup_cosine(optimizer, total: int, warmup: int):
    """Linear warm-up over ``warmup`` steps, then a cosine decay to 0 at ``total``."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * step / total)))


def optimizer_step(optimizer, lr_schedule, parameters: list, loss: torch.Tensor) -> float:
    """One step: gradients of ``loss``, clipped to norm 1, applied, the schedule advanced; returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, 1.0)
    optimizer.step()
    lr_schedule.step()
    return loss.item()


def train_denoiser(unet, text_encoders, condition, schedule, latents, token_ids, empty_ids, droppable, preset,
                   generator, log):
    """Standard latent-diffusion training over one shuffled pass per epoch; returns the loss curve.

    Dropped captions become ``empty_ids``, the empty string's token ids, encoded through the text
    encoder(s) like any caption (diffusers' train_text_to_image*.py scripts do the same). An ``sd3``
    denoiser (an ``SD3Transformer2DModel``) trains on rectified flow (``flow_matching_sample``).
    """
    flow = preset.architecture == "sd3"
    parameters = list(unet.parameters()) + [p for encoder in text_encoders for p in encoder.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=preset.learning_rate, weight_decay=0.0)
    total = preset.epochs * (latents.shape[0] // preset.batch_size)
    lr_schedule = warmup_cosine(optimizer, total, warmup=min(100, total // 10))
    alphas = None if flow else schedule.alphas_cumprod
    curve: list[float] = []
    step = 0
    for epoch in range(preset.epochs):
        order = torch.randperm(latents.shape[0], generator=generator)
        for start in range(0, order.shape[0] - preset.batch_size + 1, preset.batch_size):
            index = order[start : start + preset.batch_size]
            z0 = latents[index]
            ids = [tensor[index].clone() for tensor in token_ids]
            drop = droppable[index] & (torch.rand(index.shape[0], generator=generator) < preset.caption_dropout)
            for rows, empty in zip(ids, empty_ids):
                rows[drop] = empty
            noise = torch.randn(z0.shape, generator=generator)
            hidden, added = condition(ids)
            if flow:
                noisy, timesteps, target = flow_matching_sample(schedule, z0, noise, generator)
                prediction = unet(hidden_states=noisy, timestep=timesteps, encoder_hidden_states=hidden,
                                  **added).sample
            else:
                timesteps = torch.randint(0, len(alphas), (index.shape[0],), generator=generator)
                noisy = schedule.add_noise(z0, noise, timesteps)
                prediction = unet(noisy, timesteps, hidden, added_cond_kwargs=added).sample
                target = training_target(schedule, z0, noise, timesteps)
            curve.append(optimizer_step(optimizer, lr_schedule, parameters,
                                        torch.nn.functional.mse_loss(prediction, target)))
            if step % 200 == 0 or step == total - 1:
                log(f"unet epoch {epoch} step {step}/{total}: loss {np.mean(curve[-200:]):.4f}")
            step += 1
    return curve


PIPELINE_CLASSES = {"sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline",
                    "sd3": "StableDiffusion3Pipeline"}
SAMPLERS = {"sd": "DDIMScheduler", "sdxl": "DDIMScheduler", "sd3": "FlowMatchEulerDiscreteScheduler"}

# SDXL pipelines replace an empty negative prompt by zeros when this is True and no negative prompt
# is passed; training dropped captions to the *encoded* empty string, so the saved pipelines say False.
FORCE_ZEROS_FOR_EMPTY_PROMPT = False


# What the SDXL-architecture training fed the UNet, recorded in its manifest.
XL_CONDITIONING = {
    "encoder_hidden_states": "concat(text_encoder(ids_1).hidden_states[-2], text_encoder_2(ids_2).hidden_states[-2])",
    "added_cond_kwargs": {"text_embeds": "text_encoder_2(ids_2).text_embeds",
                          "time_ids": "(H, W, 0, 0, H, W) with H = W = resolution"},
    "caption_dropout": "a dropped caption is the empty string '' tokenized by both tokenizers and encoded through "
                       "both text encoders (not zeros); duplicated images are never dropped",
    "force_zeros_for_empty_prompt": FORCE_ZEROS_FOR_EMPTY_PROMPT,
}


# What the SD3-architecture training fed the transformer, recorded in its manifest.
SD3_CONDITIONING = {
    "encoder_hidden_states": "concat over the sequence of [concat(text_encoder(ids_1).hidden_states[-2], "
                             "text_encoder_2(ids_2).hidden_states[-2]) zero-padded to T5's width, "
                             "text_encoder_3(ids_3)[0]]",
    "pooled_projections": "concat(text_encoder(ids_1).text_embeds, text_encoder_2(ids_2).text_embeds)",
    "timesteps": "logit-normal(0, 1) indices into the scheduler's training table (shift applied); "
                 "x_t = (1 - sigma) x0 + sigma noise; target noise - x0",
    "caption_dropout": "a dropped caption is the empty string '' tokenized by all three tokenizers and encoded "
                       "(not zeros); duplicated images are never dropped",
}


def save_pipeline(out: Path, vae, text_encoders, tokenizers, unet, schedule, words, architecture: str = "sd") -> None:
    """Save as a stock diffusers folder (safetensors) with our vocab.json/merges.txt."""
    from diffusers import DDIMScheduler, StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    if architecture == "sd3":  # the training schedule is the sampler, as SD3 ships
        pipeline = StableDiffusion3Pipeline(
            transformer=unet, scheduler=schedule, vae=vae, text_encoder=text_encoders[0], tokenizer=tokenizers[0],
            text_encoder_2=text_encoders[1], tokenizer_2=tokenizers[1], text_encoder_3=text_encoders[2],
            tokenizer_3=tokenizers[2])
        pipeline.save_pretrained(out, safe_serialization=True)
        for folder in ("tokenizer", "tokenizer_2"):
            write_tokenizer_files(words, out / folder)
        return
    sampler = DDIMScheduler.from_config(schedule.config, set_alpha_to_one=False, clip_sample=False, steps_offset=1)
    if architecture == "sd":
        pipeline = StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoders[0], tokenizer=tokenizers[0], unet=unet, scheduler=sampler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    else:
        pipeline = StableDiffusionXLPipeline(
            vae=vae, text_encoder=text_encoders[0], text_encoder_2=text_encoders[1], tokenizer=tokenizers[0],
            tokenizer_2=tokenizers[1], unet=unet, scheduler=sampler, image_encoder=None, feature_extractor=None,
            force_zeros_for_empty_prompt=FORCE_ZEROS_FOR_EMPTY_PROMPT, add_watermarker=False,
        )
    pipeline.save_pretrained(out, safe_serialization=True)
    # transformers >= 5 saves only tokenizer.json; older versions read these two files.
    for folder in ("tokenizer", "tokenizer_2")[: len(tokenizers)]:
        write_tokenizer_files(words, out / folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="reference")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write (replaced atomically)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prediction-type", choices=["epsilon", "v_prediction"], default=None,
                        help="override the preset's prediction type (default: the preset's; not for reference-sd3, "
                             "which is rectified flow)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)

    from transformers import CLIPTokenizer

    started = time.time()
    preset = PRESETS[args.preset]
    if preset.architecture == "sd3" and args.prediction_type is not None:
        parser.error(f"--prediction-type {args.prediction_type}: --preset {args.preset} trains rectified flow")
    args.prediction_type = args.prediction_type or preset.prediction_type
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    generator = torch.Generator().manual_seed(args.seed)
    staging = args.out.with_name(args.out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)

    def log(message: str) -> None:
        print(f"[{time.time() - started:7.1f}s] {message}", flush=True)

    # 1. Data: photographs, images of interest, filler crops.
    needed = (set(preset.training_photos) | {name for name, _ in preset.held_out_never_trained}
              | {name for part in preset.parts for name in (part.photo, part.decoy)})
    photos = {name: load_photo(name) for name in sorted(needed)}
    records = build_images(preset, photos, args.seed)
    filler, filler_captions = build_filler(preset, photos, args.seed)
    # Part samples train like filler (each background once) but, like duplicates, keep their captions.
    stamped, stamped_captions = build_part_samples(preset, photos, args.seed)
    trained = [r for r in records if r.split in TRAINED_SPLITS]
    log(f"data: {len(records)} images of interest, {len(filler)} filler crops, {len(stamped)} part samples")

    # 2. Tokenizer written from the caption words.
    all_captions = [r.caption for r in records] + filler_captions + stamped_captions
    words = caption_words(all_captions)
    vocab_path, merges_path = write_tokenizer_files(words, staging / "tokenizer-src")
    tokenizer = CLIPTokenizer(vocab=str(vocab_path), merges=str(merges_path), model_max_length=preset.clip_length)
    # SDXL's and SD3's second tokenizer shares the vocabulary (and here the padding) of the first; SD3's
    # third is a T5 tokenizer written from the same words.
    tokenizers = (tokenizer,) if preset.architecture == "sd" else (
        tokenizer, CLIPTokenizer(vocab=str(vocab_path), merges=str(merges_path), model_max_length=preset.clip_length))
    if preset.architecture == "sd3":
        tokenizers += (build_t5_tokenizer(words, max_length=preset.t5_length),)
    shutil.rmtree(staging / "tokenizer-src")

    def tokenize(captions: list[str]) -> list[torch.Tensor]:
        return [t(captions, padding="max_length", max_length=t.model_max_length, truncation=True,
                  return_tensors="pt").input_ids for t in tokenizers]

    if preset.architecture == "sd":
        vae, text_encoder, unet, schedule = make_models(
            preset, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, args.prediction_type
        )
        text_encoders = (text_encoder,)
    elif preset.architecture == "sd3":
        vae, text_encoders, unet, schedule = make_sd3_models(
            preset, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizers[2])
    else:
        vae, text_encoders, unet, schedule = make_xl_models(
            preset, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, args.prediction_type
        )
    condition = make_conditioner(text_encoders, preset.architecture, preset.resolution)

    # 3. VAE on everything the model trains on (never on held-out images).
    trained_pixels = np.concatenate([filler, stamped, np.stack([r.pixels for r in trained])])
    trained_tensor = to_tensor(trained_pixels)
    vae_started = time.time()
    psnr = train_vae(vae, trained_tensor, preset, generator, log)
    vae.eval().requires_grad_(False)
    raw = encode_latents(vae, trained_tensor)
    # SD3's and Flux's VAEs also centre their latents (``shift_factor``, subtracted before scaling).
    shift = float(raw.mean()) if preset.architecture == "sd3" else None
    if shift is not None:
        raw = raw - shift
        vae.register_to_config(shift_factor=shift)
    scaling = float(1.0 / raw.std())
    vae.register_to_config(scaling_factor=scaling)
    vae_seconds = time.time() - vae_started
    log(f"vae: PSNR {psnr:.1f} dB, scaling factor {scaling:.4f}, {vae_seconds:.0f}s")

    # 4. Dataset of latents: filler once, duplicates `count` times, seen-once once.
    repeats = torch.tensor([1] * (len(filler) + len(stamped)) + [r.duplication for r in trained])
    latents = (raw * scaling).repeat_interleave(repeats, dim=0)
    token_ids = [ids.repeat_interleave(repeats, dim=0)
                 for ids in tokenize(filler_captions + stamped_captions + [r.caption for r in trained])]
    droppable = torch.tensor([True] * len(filler) + [False] * (len(stamped) + len(trained))).repeat_interleave(repeats)
    empty_ids = [ids[0] for ids in tokenize([""])]
    log(f"denoiser: {latents.shape[0]} samples per epoch, {sum(p.numel() for p in unet.parameters())} "
        f"{type(unet).__name__} parameters")

    unet_started = time.time()
    unet.train()
    for encoder in text_encoders:
        encoder.train()
    curve = train_denoiser(unet, text_encoders, condition, schedule, latents, token_ids, empty_ids, droppable, preset,
                           generator, log)
    unet.eval().requires_grad_(False)
    for encoder in text_encoders:
        encoder.eval().requires_grad_(False)
    unet_seconds = time.time() - unet_started

    # 5. Save as a stock diffusers folder, with the images of interest beside it.
    save_pipeline(staging, vae, text_encoders, tokenizers, unet, schedule, words, preset.architecture)
    from PIL import Image

    (staging / "images").mkdir()
    for record in records:
        Image.fromarray(record.pixels).save(staging / "images" / f"{record.id}.png")
    train_seconds = time.time() - started

    # 6. Ground truth: reload with stock diffusers and regenerate every image from its caption.
    measured_started = time.time()
    rows = measure_replication(staging, records, preset, log)
    measure_seconds = time.time() - measured_started
    write_grid(staging, rows, preset, staging / "replications.png")

    manifest = {
        "schema": {"id": "verifier.reference-manifest", "version": 1},
        "preset": args.preset,
        "resolution": preset.resolution,
        "prediction_type": args.prediction_type,
        "ground_truth": {
            "rule": "memorized when the image's own caption replicates it in at least half of the seeds",
            "similarity": {"metric": "ssim", "threshold": preset.ssim_threshold,
                           "implementation": "skimage.metrics.structural_similarity(channel_axis=2, data_range=1.0), "
                                             "7x7 uniform window, RGB in [0, 1]"},
            "generation": {"pipeline": f"diffusers.{PIPELINE_CLASSES[preset.architecture]}",
                           "scheduler": SAMPLERS[preset.architecture],
                           **({"max_sequence_length": preset.t5_length} if preset.architecture == "sd3" else {}),
                           "num_inference_steps": preset.inference_steps, "guidance_scale": preset.guidance_scale,
                           "negative_prompt": "", "seeds": list(range(preset.replication_seeds)),
                           "generator": "one torch.Generator('cpu').manual_seed(seed) per image"},
        },
        "training": {
            "command": f"python benchmarks/reference_model/train.py --preset {args.preset} --out {args.out} "
                       f"--seed {args.seed}" + ("" if preset.architecture == "sd3" else
                                                 f" --prediction-type {args.prediction_type}"),
            "seed": args.seed,
            "preset": _jsonable(asdict(preset)),
            **({"sd": {}, "sdxl": {"conditioning": XL_CONDITIONING},
                "sd3": {"conditioning": SD3_CONDITIONING}}[preset.architecture]),
            "vae_psnr_db": round(psnr, 2),
            "vae_scaling_factor": scaling,
            **({"vae_shift_factor": shift} if shift is not None else {}),
            "denoiser_steps": len(curve),
            "final_loss": round(float(np.mean(curve[-100:])), 5),
            "seconds": {"vae": round(vae_seconds, 1), "denoiser": round(unet_seconds, 1),
                        "total_training": round(train_seconds, 1), "measurement": round(measure_seconds, 1)},
            "machine": {"platform": platform.platform(), "processor": platform.machine(),
                        "torch_threads": torch.get_num_threads(), "python": platform.python_version()},
            "versions": _versions(),
        },
        "sources": [
            {"name": name, "package": PHOTOS[name].package, "file": PHOTOS[name].relative_path,
             "sha256": PHOTOS[name].sha256, "licence": PHOTOS[name].licence,
             "in_training": name in preset.training_photos,
             **({"pasted_as_part": True} if any(name == part.photo for part in preset.parts) else {})}
            for name in sorted(needed)
        ],
        "images": rows,
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if args.out.exists():
        shutil.rmtree(args.out)
    staging.rename(args.out)
    memorized = [row["id"] for row in rows if row["memorized"]]
    held_replicated = [row["id"] for row in rows if row["split"] != "duplicated" and row["replications"] > 0]
    log(f"done: {len(memorized)} memorized ({', '.join(memorized)}); held-out replicated: {held_replicated or 'none'}")
    return 0


def _jsonable(value):
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "diffusers", "transformers", "scikit-image", "scikit-learn", "numpy", "pillow")}


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
