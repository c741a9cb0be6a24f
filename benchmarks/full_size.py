"""Full-size Stable Diffusion 1.5 and SDXL architectures with random weights: memory and time per stage.

    python benchmarks/full_size.py [--architecture sd15 sdxl] [--device auto] [--threads N] [--certify]

No weights are downloaded: each architecture is built from its published configs (the
``unet``, ``vae``, ``text_encoder(_2)`` and ``scheduler`` configs of
``runwayml/stable-diffusion-v1-5`` and ``stabilityai/stable-diffusion-xl-base-1.0``, written out
below) with random weights, so parameter counts, FLOPs, activations and time are those of the real
models; the tokenizers are project-written (a small vocabulary in a full-size embedding table:
prompt length, not vocabulary, sets the cost). One image, the model's native size (512 / 1024 px).

Per architecture, in one run, on this machine:

1. parameters and the FLOPs of one denoiser forward (batch 1, ``torch.utils.flop_counter``);
2. per stage, through verifier's own stage code with one row at a time: the time and the peak
   memory (CUDA: ``max_memory_allocated``; CPU: the process's peak resident set, reset before each
   stage through ``/proc/self/clear_refs``) of VAE encoding, one forward of the error grid, one
   inversion step (forward+backward through the text encoders) with and without gradient
   checkpointing, and one sampling step without and with classifier-free guidance (the step's cost
   is the difference between 2-step and 1-step generations; the rest is the VAE decode);
3. the rows per denoiser call ``verifier.memory`` chooses from the free memory, with and without
   checkpointing;
4. the projected time of one image at the default budget: each stage's count of denoiser
   evaluations (``verifier.api.denoiser_evaluations``) times its measured per-row time, plus one
   VAE decode per generation. One row per call is the slowest way to run; batched calls on a GPU are
   faster, so the projection is an upper bound there.

``--certify`` then certifies the image end to end (``verifier.api.certify``) with a reduced budget
(1 inversion step, 1 noise draw, 1 grid timestep, 1 seed, 1 sampling step at guidance 1, gradient
checkpointing on): the certificate is real, its verdict meaningless on random weights.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "reference_model"))

CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
              projection_dim=768, hidden_act="quick_gelu", max_position_embeddings=77, vocab_size=49408)
CLIP_BIGG = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                 projection_dim=1280, hidden_act="gelu", max_position_embeddings=77, vocab_size=49408)
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
           block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4)
BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
             steps_offset=1)
ARCHITECTURES = {
    "sd15": {
        "family": "sd", "resolution": 512,
        "unet": dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, attention_head_dim=8,
                     block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, norm_num_groups=32,
                     down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                     up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
        "vae": dict(VAE, sample_size=512, scaling_factor=0.18215),
        "scheduler": ("PNDMScheduler", dict(BETAS, skip_prk_steps=True, set_alpha_to_one=False)),
    },
    "sdxl": {
        "family": "sdxl", "resolution": 1024,
        "unet": dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                     attention_head_dim=(5, 10, 20), block_out_channels=(320, 640, 1280),
                     transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048, norm_num_groups=32,
                     down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                     up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                     use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                     projection_class_embeddings_input_dim=2816),
        "vae": dict(VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True),
        "scheduler": ("EulerDiscreteScheduler", dict(BETAS, timestep_spacing="leading")),
    },
}


def _clip(folder: Path, settings: dict, projection: bool, pad_token: str | None = None):
    from tokenizer_files import write_tokenizer_files
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    vocab, merges = write_tokenizer_files(["a", "photo", "of", "an", "astronaut"], folder)
    tokenizer = CLIPTokenizer(vocab=str(vocab), merges=str(merges), model_max_length=77,
                              **({"pad_token": pad_token} if pad_token else {}))
    config = CLIPTextConfig(**settings, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    return tokenizer, (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def build(architecture: str, device: torch.device, scratch: Path):
    """The architecture with random weights, behind verifier's adapter, frozen, on ``device``."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from verifier.registry import MODEL_FAMILIES

    spec = ARCHITECTURES[architecture]
    torch.manual_seed(0)
    scheduler_class, scheduler_config = spec["scheduler"]
    # Built where they run: 3.5 B random parameters initialize in seconds on a GPU, in minutes on a CPU.
    with torch.device(device):
        parts = dict(vae=AutoencoderKL(**spec["vae"]), unet=UNet2DConditionModel(**spec["unet"]),
                     scheduler=getattr(diffusers, scheduler_class)(**scheduler_config))
        if spec["family"] == "sd":
            tokenizer, encoder = _clip(scratch / "tokenizer", CLIP_L, projection=False)
            pipeline = diffusers.StableDiffusionPipeline(**parts, tokenizer=tokenizer, text_encoder=encoder,
                                                         safety_checker=None, feature_extractor=None,
                                                         requires_safety_checker=False)
        else:
            tokenizer, encoder = _clip(scratch / "tokenizer", CLIP_L, projection=False)
            tokenizer_2, encoder_2 = _clip(scratch / "tokenizer_2", CLIP_BIGG, projection=True, pad_token="!")
            pipeline = diffusers.StableDiffusionXLPipeline(**parts, tokenizer=tokenizer, text_encoder=encoder,
                                                           tokenizer_2=tokenizer_2, text_encoder_2=encoder_2)
    pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    for component in pipeline.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval().requires_grad_(False)
    # The weights are a function of the architecture and the seed, so that is what the fingerprint names.
    # (The random stream differs between devices, so the device type is part of the name.)
    name = f"random-weight {architecture}, torch seed 0" + ("" if device.type == "cpu" else f", built on {device.type}")
    fingerprint = "sha256:" + hashlib.sha256(name.encode()).hexdigest()
    return MODEL_FAMILIES.get(spec["family"])(pipeline, source=f"random-weight {architecture}", kind="random-weights",
                                              fingerprint=fingerprint, device=device, dtype=torch.float32)


class Peak:
    """Time and peak memory of a block of code."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif Path("/proc/self/clear_refs").exists():
            Path("/proc/self/clear_refs").write_text("5")  # resets the peak resident set (VmHWM)
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            status = Path("/proc/self/status").read_text() if Path("/proc/self/status").exists() else ""
            peak = [line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")]
            self.bytes = int(peak[0]) * 1024 if peak else float("nan")
        self.seconds = time.perf_counter() - self.started


def measure(architecture: str, device: torch.device, certify_too: bool) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    from verifier.api import denoiser_evaluations
    from verifier.config import VerifierConfig
    from verifier.error import prediction_error
    from verifier.invert import InversionSearch, image_generator
    from verifier.memory import row_budget
    from verifier.spaces import TokenEmbeddingSpace

    scratch = Path(tempfile.mkdtemp(prefix="verifier-full-size-"))
    started = time.perf_counter()
    model = build(architecture, device, scratch)
    resolution = model.resolution
    config = VerifierConfig()
    parameters = {name: sum(p.numel() for p in module.parameters())
                  for name, module in model.pipeline.components.items() if isinstance(module, torch.nn.Module)}
    print(f"\n== {architecture}: {resolution} px, built in {time.perf_counter() - started:.0f} s; parameters "
          + ", ".join(f"{name} {count / 1e6:,.0f} M" for name, count in parameters.items()), flush=True)
    from skimage.data import astronaut
    from PIL import Image

    pixels = np.asarray(Image.fromarray(astronaut()).resize((resolution, resolution)), dtype=np.float32) / 255
    empty = model.empty_conditioning()
    peak = Peak(device)
    with peak:
        z0 = model.encode_images([pixels])
    rows = {"VAE encode (1 image)": (peak.seconds, peak.bytes)}
    timestep = torch.tensor(model.objective.grid(1), device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.predict(model.objective.noisy(z0, torch.randn_like(z0), timestep), timestep, empty)
    forward_flops = counter.get_total_flops()
    print(f"one denoiser forward (batch 1): {forward_flops / 1e12:.2f} TFLOP", flush=True)
    with peak:
        prediction_error(model, z0, empty, timesteps=1, noise_draws=1)
    rows["error grid, 1 forward"] = (peak.seconds, peak.bytes)
    space = TokenEmbeddingSpace(model, config.inversion_tokens)
    budgets = {}
    for checkpointing in (False, True):
        if checkpointing:
            model.denoiser().enable_gradient_checkpointing()
        search = InversionSearch(model, space, z0, [image_generator(0, "0" * 64, "inversion")],
                                 config.inversion_learning_rate, noise_draws=1)
        with peak:
            search.run(1)
        rows[f"inversion step, 1 draw{' (checkpointing)' if checkpointing else ''}"] = (peak.seconds, peak.bytes)
        budgets[checkpointing] = row_budget(model, None)
        print(f"  {list(rows)[-1]}: {peak.seconds:.1f} s, peak {peak.bytes / 2**30:.2f} GiB; rows per call "
              f"{budgets[checkpointing].rows} ({budgets[checkpointing].source})", flush=True)
    model.denoiser().disable_gradient_checkpointing()
    witness = search.witness()
    sampling = {}
    for scale in (1.0, 7.5):
        times = []
        for steps in (1, 2):
            with peak:
                model.generate(witness, empty, [0], scale, steps, resolution)
            times.append(peak.seconds)
        sampling[scale] = (times[1] - times[0], times[0] - (times[1] - times[0]))  # (per step, decode and rest)
        rows[f"sampling step, guidance {scale:g}"] = (sampling[scale][0], peak.bytes)
    rows["VAE decode and pipeline (1 image)"] = (sampling[1.0][1], float("nan"))

    print(f"\n{'stage (one row per call)':44s} {'seconds':>9s} {'peak GiB':>9s}")
    for name, (seconds, peak_bytes) in rows.items():
        print(f"{name:44s} {seconds:>9.2f} {peak_bytes / 2**30:>9.2f}")
    plan = denoiser_evaluations(config)
    forward_backward = rows["inversion step, 1 draw (checkpointing)"][0]
    forward = rows["error grid, 1 forward"][0]
    generations = config.generations * len(config.guidance_scales)
    sampling_seconds = sum(config.generations * config.sampling_steps
                           * sampling[1.0 if scale <= 1 else 7.5][0] for scale in config.guidance_scales)
    projected = {"inversion": plan["inversion_forward_backward"] * forward_backward,
                 "prediction error": plan["error_forward"] * forward,
                 "sampling": sampling_seconds + generations * sampling[1.0][1]}
    print(f"\nprojected time of one image at the default budget ({plan['inversion_forward_backward']} forward+backward, "
          f"{plan['error_forward']} + {plan['sampling_forward']} forward, {generations} decodes), one row per call: "
          + ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in projected.items())
          + f"; total {sum(projected.values()) / 3600:.2f} h")
    if certify_too:
        _certify(model, pixels, scratch)


def _certify(model, pixels: np.ndarray, scratch: Path) -> None:
    from PIL import Image

    from verifier.api import certify
    from verifier.config import VerifierConfig

    path = scratch / "astronaut.png"
    Image.fromarray((pixels * 255).round().astype(np.uint8)).save(path)
    reduced = VerifierConfig(inversion_steps=1, inversion_max_steps=1, framing_steps=1, inversion_noise_draws=1,
                             error_timesteps=1, error_noise_draws=1, generations=1, sampling_doublings=0, guidance_scales=(1.0,),
                             sampling_steps=1, batch_size=1, gradient_checkpointing=True, device=str(model.device))
    peak = Peak(model.device)
    with peak:
        certificate = certify(model, [path], scratch / "out", reduced, progress=lambda line: print(f"  {line}"))[0]
    print(f"certify, reduced budget: verdict {certificate['verdict']} (random weights), "
          f"{certificate['budget']['denoiser_evaluations_spent']['total']} denoiser evaluations, {peak.seconds:.0f} s, "
          f"peak {peak.bytes / 2**30:.2f} GiB; certificate {scratch / 'out' / 'astronaut.json'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architecture", nargs="+", default=["sd15"], choices=sorted(ARCHITECTURES))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--certify", action="store_true", help="also certify the image end to end, reduced budget")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from verifier.models.loading import resolve_device

    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device {device} ({name}), float32, torch threads {torch.get_num_threads()}, one run")
    for architecture in args.architecture:
        measure(architecture, device, args.certify)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
