"""Seeded tiny pipelines of each supported family for plumbing and contract tests (random weights).

As diffusers' ``get_dummy_components``, but offline: the tokenizers are written by the project.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

FAMILIES = ("sd", "sdxl", "sd3", "flux")
# Where the adapter contract runs: the CPU here and in CI; benchmarks/gpu_check.py runs it on cuda.
TEST_DEVICE = os.environ.get("VERIFIER_TEST_DEVICE", "cpu")


def _tokenizer(folder: Path, pad_token: str | None = None):
    from tokenizer_files import write_tokenizer_files
    from transformers import CLIPTokenizer

    vocab, merges = write_tokenizer_files(["a", "photo", "of", "cat", "dog"], folder)
    extra = {"pad_token": pad_token} if pad_token else {}
    return CLIPTokenizer(vocab=str(vocab), merges=str(merges), model_max_length=77, **extra)


def _clip_config(tokenizer, hidden: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, projection_dim=hidden,
        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def _vae(levels: int = 2, latent_channels: int = 4, **flow):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                         down_block_types=("DownEncoderBlock2D",) * levels,
                         up_block_types=("UpDecoderBlock2D",) * levels,
                         block_out_channels=(8,) + (16,) * (levels - 1), layers_per_block=1, norm_num_groups=8,
                         sample_size=16, mid_block_add_attention=False, **flow)


def _t5(hidden: int, max_length: int):
    """A project-written T5 tokenizer and a 2-layer T5 encoder of width ``hidden``."""
    from tokenizer_files import build_t5_tokenizer
    from transformers import T5Config, T5EncoderModel

    tokenizer = build_t5_tokenizer(["a", "photo", "of", "cat", "dog"], max_length=max_length)
    config = T5Config(vocab_size=len(tokenizer), d_model=hidden, d_kv=8, d_ff=2 * hidden, num_layers=2, num_heads=2,
                      relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)
    return tokenizer, T5EncoderModel(config)


# VAE latent statistics of SD3's and Flux's VAE configs, so the shift is exercised.
FLOW_VAE = {"shift_factor": 0.0609, "scaling_factor": 1.5035, "use_quant_conv": False, "use_post_quant_conv": False}


def build_tiny_pipeline(folder: Path, prediction_type: str = "epsilon", seed: int = 0, family: str = "sd",
                        upcast_attention: bool = False, latent_size: int = 8, vae_levels: int = 2) -> Path:
    """Save a random 16-px pipeline of ``family`` (VAE x2, 2-layer CLIPs, 2-level UNet or 1-layer transformer) as
    a diffusers folder.

    ``sd`` is SD 1.x-like (one CLIP, padding with EOS, DDIM) or, with ``upcast_attention`` and
    v-prediction, SD 2.x-like (padding with "!", as SD 2's tokenizer does); ``sdxl`` has two CLIP
    encoders (16 and 32 wide, the second with a projection, padding with "!"), a UNet with ``text_time`` added
    conditioning and an Euler scheduler, as SDXL base; ``sd3`` has CLIP-L- and CLIP-G-like encoders (16 and
    32 wide, both with projections), a T5 encoder (64 wide), an ``SD3Transformer2DModel`` and a flow-matching
    scheduler with shift 3; ``flux`` a CLIP, a T5 (32 wide), a ``FluxTransformer2DModel`` with the guidance
    embedding (as Flux-dev; ``guidance_embeds=False`` with ``prediction_type="schnell"``) and a dynamically
    shifting scheduler. The native resolution is ``latent_size`` x
    ``2 ** (vae_levels - 1)`` (16 px by default; 96 and 4 give SD 2.x-v's 768 px).
    """
    from diffusers import DDIMScheduler, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    schedule = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    prediction_type=prediction_type, steps_offset=1)
    unet_shape = dict(sample_size=latent_size, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
                      down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                      up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=8, norm_num_groups=8,
                      upcast_attention=upcast_attention)
    if family == "sd":
        from diffusers import StableDiffusionPipeline

        tokenizer = _tokenizer(folder / "tokenizer-src", pad_token="!" if upcast_attention else None)
        text_encoder = CLIPTextModel(_clip_config(tokenizer, 16))
        vae = _vae(vae_levels)
        unet = UNet2DConditionModel(cross_attention_dim=16, **unet_shape)
        scheduler = DDIMScheduler(clip_sample=False, set_alpha_to_one=False, **schedule)
        pipeline = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                           scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                           requires_safety_checker=False)
    elif family == "sdxl":
        from diffusers import StableDiffusionXLPipeline

        tokenizer = _tokenizer(folder / "tokenizer-src")
        tokenizer_2 = _tokenizer(folder / "tokenizer-src", pad_token="!")
        text_encoder = CLIPTextModel(_clip_config(tokenizer, 16))
        # Two widths, as SDXL's 768 and 1280: diffusers' single-file loader tells the encoders apart by width.
        text_encoder_2 = CLIPTextModelWithProjection(_clip_config(tokenizer_2, 32))
        vae = _vae(vae_levels)
        unet = UNet2DConditionModel(cross_attention_dim=16 + 32, addition_embed_type="text_time",
                                    addition_time_embed_dim=4, projection_class_embeddings_input_dim=32 + 6 * 4,
                                    **unet_shape)
        scheduler = EulerDiscreteScheduler(timestep_spacing="leading", **schedule)
        pipeline = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                             tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet,
                                             scheduler=scheduler)
    elif family == "sd3":
        from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
        from transformers import CLIPTextModelWithProjection

        tokenizer = _tokenizer(folder / "tokenizer-src")
        tokenizer_2 = _tokenizer(folder / "tokenizer-src", pad_token="!")
        tokenizer_3, text_encoder_3 = _t5(64, 256)
        transformer = SD3Transformer2DModel(sample_size=latent_size, patch_size=2, in_channels=4, out_channels=4,
                                            num_layers=1, attention_head_dim=8, num_attention_heads=2,
                                            joint_attention_dim=64, caption_projection_dim=16,
                                            pooled_projection_dim=16 + 32, pos_embed_max_size=latent_size)
        pipeline = StableDiffusion3Pipeline(
            transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_vae(vae_levels, **FLOW_VAE),
            text_encoder=CLIPTextModelWithProjection(_clip_config(tokenizer, 16)), tokenizer=tokenizer,
            text_encoder_2=CLIPTextModelWithProjection(_clip_config(tokenizer_2, 32)), tokenizer_2=tokenizer_2,
            text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3)
    elif family == "flux":
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

        tokenizer = _tokenizer(folder / "tokenizer-src")
        tokenizer_2, text_encoder_2 = _t5(32, 512)
        vae = _vae(vae_levels, latent_channels=4, **FLOW_VAE)
        vae.register_to_config(sample_size=latent_size * 2 ** (vae_levels - 1))
        transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                             attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                             pooled_projection_dim=16, axes_dims_rope=[4, 4, 8],
                                             guidance_embeds=prediction_type != "schnell")
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                    max_shift=1.15)
        pipeline = FluxPipeline(transformer=transformer, scheduler=scheduler, vae=vae,
                                text_encoder=CLIPTextModel(_clip_config(tokenizer, 16)), tokenizer=tokenizer,
                                text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2)
    else:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    pipeline.save_pretrained(folder, safe_serialization=True)
    shutil.rmtree(folder / "tokenizer-src")
    return folder
