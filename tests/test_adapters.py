"""One adapter contract, parametrized over the model families, on tiny random components.

As diffusers tests its pipelines: every family must build its conditioning exactly as its stock
pipeline does, noise and target as its training scheduler does, give per-image results that do
not depend on batch companions, and leave witnesses that the stock pipeline regenerates.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers.images import write_images
from helpers.tiny_models import TEST_DEVICE, build_tiny_pipeline
from verifier.api import certify
from verifier.config import VerifierConfig
from verifier.models import Conditioning, ModelLoadError, load_model

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

FAST = VerifierConfig(inversion_steps=3, framing_steps=3, inversion_noise_draws=2, error_timesteps=3,
                      error_noise_draws=2, generations=2, guidance_scales=(1.0, 2.0), sampling_steps=3, device=TEST_DEVICE)

# name -> (family, prediction type, upcast attention): SD 1.x-like, SD 2.x-v-like, SDXL-like, SD3-like
# (CLIP-L, CLIP-G, T5, MMDiT), Flux-dev-like (CLIP, T5, guidance-distilled transformer, dynamic shift).
VARIANTS = {
    "sd-epsilon": ("sd", "epsilon", False),
    "sd2-v": ("sd", "v_prediction", True),
    "sdxl": ("sdxl", "epsilon", False),
    "sd3": ("sd3", "flow", False),
    "flux": ("flux", "flow", False),
}
PIPELINES = {"sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline", "sd3": "StableDiffusion3Pipeline",
             "flux": "FluxPipeline"}
FLOW_FAMILIES = ("sd3", "flux")


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request, tmp_path_factory):
    family, prediction_type, upcast = VARIANTS[request.param]
    folder = build_tiny_pipeline(tmp_path_factory.mktemp(request.param) / "model", prediction_type=prediction_type,
                                 family=family, upcast_attention=upcast)
    return request.param, folder, load_model(folder, device=TEST_DEVICE)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("images"), count=2)


def _stock(folder, family: str, device: str = "cpu"):
    import diffusers

    pipeline = getattr(diffusers, PIPELINES[family]).from_pretrained(folder, local_files_only=True).to(device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _stock_encoding(pipeline, family: str, prompt: str) -> Conditioning:
    """The conditioning the stock pipeline's own ``encode_prompt`` builds for ``prompt``."""
    if family == "sd":
        embeds, _ = pipeline.encode_prompt(prompt, "cpu", 1, False)
        return Conditioning(prompt_embeds=embeds)
    if family == "flux":
        embeds, pooled, _ = pipeline.encode_prompt(prompt, prompt_2=None, device="cpu", num_images_per_prompt=1)
        return Conditioning(prompt_embeds=embeds, pooled_prompt_embeds=pooled)
    extra = {"prompt_2": None, "prompt_3": None} if family == "sd3" else {}
    embeds, _, pooled, _ = pipeline.encode_prompt(prompt, **extra, device="cpu", num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
    return Conditioning(prompt_embeds=embeds, pooled_prompt_embeds=pooled)


def _assert_same(mine: Conditioning, theirs: Conditioning) -> None:
    # T5's 512 positions run through other kernels with and without autograd (differences ~1e-5); a wrong
    # recipe (another layer, order or padding) differs by O(1).
    assert set(mine.tensors()) == set(theirs.tensors())
    for name, tensor in theirs.tensors().items():
        torch.testing.assert_close(mine.tensors()[name].float().cpu(), tensor.float().cpu(), rtol=1e-4, atol=2e-5,
                                   msg=name)


def test_family_and_native_resolution_come_from_the_model(variant):
    name, _, adapter = variant
    family, prediction_type, upcast = VARIANTS[name]
    record = adapter.describe()
    assert (record["family"], record["pipeline"]) == (family, PIPELINES[family])
    assert record["prediction_type"] == prediction_type and adapter.resolution == 16
    if family in FLOW_FAMILIES:
        shift = {"dynamic": True, "mu": pytest.approx(0.459375), "image_seq_len": 16, "time_shift_type": "exponential"} \
            if family == "flux" else {"dynamic": False, "shift": 3.0}
        assert record["objective"] == {"name": "flow_matching", "prediction_type": "flow", "target": "noise - x0",
                                       "num_train_timesteps": 1000, "shift": shift, "error_form": "native",
                                       "training_timesteps": "logit_normal(mean=0.0, std=1.0)"}
        assert record["conditioning"]["inverted_encoders"] == list(adapter.text_inputs())
        return
    assert record["conditioning"]["upcast_attention"] is upcast
    assert record["objective"] == {"name": "ddpm", "prediction_type": prediction_type, "num_train_timesteps": 1000,
                                   "training_timesteps": "uniform", "error_form": "native"}
    # The UNet's attention layers really compute their scores in float32 where the config asks.
    attention = [m for m in adapter.denoiser().modules() if type(m).__name__ == "Attention"]
    assert attention and all(m.upcast_attention is upcast for m in attention if m.is_cross_attention)


def test_empty_conditioning_is_what_the_stock_pipeline_encodes(variant):
    name, folder, adapter = variant
    family = VARIANTS[name][0]
    _assert_same(adapter.empty_conditioning(), _stock_encoding(_stock(folder, family), family, ""))


def test_soft_tokens_holding_word_embeddings_reproduce_the_prompt(variant):
    """Round trip: soft tokens set to the words' own embeddings give the stock encoding of those words
    (per-token features and, for SDXL, SD3 and Flux, the pooled embedding read at the EOS after them), in
    CLIP (after BOS) and T5 (no BOS: first) alike."""
    name, folder, adapter = variant
    family = VARIANTS[name][0]
    soft = {}
    for key, (tokenizer, table) in adapter.text_inputs().items():
        ids = tokenizer(["cat dog"], return_tensors="pt").input_ids  # CLIP: BOS cat dog EOS; T5: cat dog EOS
        offset = adapter.soft_token_offset(key)
        assert ids.shape[1] == offset + 3
        soft[key] = table(ids.to(table.weight.device))[:, offset : offset + 2].detach()
    _assert_same(adapter.encode_text(soft), _stock_encoding(_stock(folder, family), family, "cat dog"))


def test_objective_matches_the_training_scheduler(variant):
    """Noising and target against diffusers' DDPMScheduler built from the model's scheduler config, as the
    training scripts build it (flow matching: see the next test)."""
    from diffusers import DDPMScheduler

    name, folder, adapter = variant
    if VARIANTS[name][0] in FLOW_FAMILIES:
        return _check_flow_objective(folder, adapter)
    training = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    generator = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(3, 4, 8, 8, generator=generator), torch.randn(3, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([10, 500, 990])
    objective, device = adapter.objective, adapter.device
    on_device = [tensor.to(device) for tensor in (z0, noise, timesteps)]
    torch.testing.assert_close(objective.noisy(*on_device).cpu(), training.add_noise(z0, noise, timesteps))
    wanted = noise if training.config.prediction_type == "epsilon" else training.get_velocity(z0, noise, timesteps)
    torch.testing.assert_close(objective.target(*on_device).cpu(), wanted)
    assert objective.num_train_timesteps == training.config.num_train_timesteps


def _check_flow_objective(folder, adapter) -> None:
    """Flow matching as diffusers' SD3/Flux training scripts compute it: timesteps from the scheduler's table
    (shifted: statically as built, dynamically as the pipeline's ``set_timesteps(mu=...)``), sigma = t / 1000,
    ``x_t = (1 - sigma) x0 + sigma noise`` (the scheduler's ``scale_noise``), target ``noise - x0``, and the x0
    form as the scripts' ``precondition_outputs``."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    training = FlowMatchEulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler")
    objective = adapter.objective
    if training.config.use_dynamic_shifting:
        training.set_timesteps(1000, mu=objective.shift_record["mu"])
    torch.testing.assert_close(objective.table.cpu(), training.timesteps.float())
    timesteps = objective.sample_timesteps(torch.Generator().manual_seed(0), 3)
    assert all(float(t) in objective.table.tolist() for t in timesteps)
    assert all(t in objective.table.tolist() for t in objective.grid(10))
    generator = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(3, 4, 8, 8, generator=generator), torch.randn(3, 4, 8, 8, generator=generator)
    scaled = torch.cat([training.scale_noise(z0[i : i + 1], timesteps[i : i + 1], noise[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(objective.noisy(z0, noise, timesteps), scaled)
    torch.testing.assert_close(objective.target(z0, noise, timesteps), noise - z0)
    prediction = noise - z0 + 0.1 * torch.randn(3, 4, 8, 8, generator=generator)
    sigma = (timesteps / 1000).view(-1, 1, 1, 1)
    x0_form = ((prediction * -sigma + objective.noisy(z0, noise, timesteps)) - z0).pow(2).flatten(1).mean(1)
    adapter.configure_objective("x0", "logit_normal")
    try:
        torch.testing.assert_close(adapter.objective.loss(prediction, z0, noise, timesteps), x0_form)
    finally:
        adapter.configure_objective("native", "logit_normal")


@pytest.mark.parametrize("space_name", ["token_embeddings", "shared_token_embeddings", "hidden_states"])
def test_results_do_not_depend_on_batch_companions(variant, space_name):
    from verifier.error import prediction_error
    from verifier.invert import InversionSchedule, invert
    from verifier.registry import INVERSION_SPACES

    name, _, adapter = variant
    rng = np.random.default_rng(0)
    pixels = [rng.random((16, 16, 3), dtype=np.float32) for _ in range(2)]
    z0 = adapter.encode_images(pixels)
    torch.testing.assert_close(adapter.encode_images(pixels[1:]), z0[1:], rtol=1e-5, atol=1e-6)
    if space_name == "shared_token_embeddings" and VARIANTS[name][0] in FLOW_FAMILIES:
        # CLIP and T5 have different vocabularies: no least-squares map between their tables, and it says so.
        with pytest.raises(ValueError, match="needs text encoders with one vocabulary.*use 'token_embeddings'"):
            INVERSION_SPACES.get(space_name)(adapter, 4)
        return
    space = INVERSION_SPACES.get(space_name)(adapter, 4)
    encoders = len(adapter.text_inputs())
    assert len(space.initial(1)) == {"token_embeddings": encoders, "shared_token_embeddings": 1,
                                     "hidden_states": len(adapter.empty_conditioning().tensors())}[space_name]
    # Steps 2, then checks every 2 while the error falls, up to 6: an image's schedule is its own, too.
    schedule = InversionSchedule(steps=2, max_steps=6, window=2, min_drop=0.0, error_timesteps=3, error_noise_draws=2)
    empty = prediction_error(adapter, z0, adapter.empty_conditioning().expand(2), timesteps=3, noise_draws=2).mean(1)
    together = invert(adapter, space, z0, ["a" * 64, "b" * 64], schedule=schedule, empty_errors=empty,
                      learning_rate=0.1, noise_draws=2, seed=0)
    alone = invert(adapter, space, z0[1:], ["b" * 64], schedule=schedule, empty_errors=empty[1:], learning_rate=0.1,
                   noise_draws=2, seed=0)
    assert alone.steps[0] == together.steps[1]
    for key in together.variables:
        # Adam divides by the root of tiny second moments, so float-order noise of a batched matmul can
        # move a variable by ~1e-4; mixing images up would move it by the step size (0.1 x its scale).
        torch.testing.assert_close(alone.variables[key][0], together.variables[key][1], rtol=1e-3,
                                   atol=1e-3 * space.scales[key])
    errors_together = prediction_error(adapter, z0, together.conditioning, timesteps=3, noise_draws=2)
    errors_alone = prediction_error(adapter, z0[1:], alone.conditioning, timesteps=3, noise_draws=2)
    torch.testing.assert_close(errors_alone[0], errors_together[1], rtol=1e-4, atol=1e-7)


def test_rows_per_call_and_gradient_checkpointing_change_no_result(variant):
    """Inversion split into calls of 3 rows (gradients accumulated) with the denoiser's activations recomputed,
    the error grid and the generations split into calls, give what single calls give."""
    from verifier.error import prediction_error
    from verifier.invert import InversionSchedule, invert
    from verifier.spaces import TokenEmbeddingSpace

    _, _, adapter = variant
    rng = np.random.default_rng(1)
    z0 = adapter.encode_images([rng.random((16, 16, 3), dtype=np.float32) for _ in range(2)])
    space = TokenEmbeddingSpace(adapter, 4)
    schedule = InversionSchedule(steps=3, max_steps=3, window=3, min_drop=0.0, error_timesteps=3, error_noise_draws=2)
    empty = prediction_error(adapter, z0, adapter.empty_conditioning().expand(2), timesteps=3, noise_draws=2).mean(1)

    def run(rows: int | None, checkpointing: bool):
        adapter.rows_per_call = rows
        if checkpointing:
            adapter.denoiser().enable_gradient_checkpointing()
        try:
            inversion = invert(adapter, space, z0, ["a" * 64, "b" * 64], schedule=schedule, empty_errors=empty,
                               learning_rate=0.1, noise_draws=2, seed=0)
            images = adapter.generate(inversion.conditioning, adapter.empty_conditioning(), [0, 1], 2.0, 2, 16)
            return inversion, images
        finally:
            adapter.rows_per_call = None
            adapter.denoiser().disable_gradient_checkpointing()

    (whole, whole_images), (split, split_images) = run(None, False), run(3, True)
    for key in whole.variables:
        torch.testing.assert_close(split.variables[key], whole.variables[key], rtol=1e-3,
                                   atol=1e-3 * space.scales[key])
    torch.testing.assert_close(split.errors, whole.errors, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(split_images, whole_images, atol=1e-4)


def test_witness_regenerates_through_the_stock_pipeline(variant, images, tmp_path):
    """The closest generation, regenerated from the witness file with stock diffusers only."""
    from PIL import Image
    from safetensors.torch import load_file

    name, folder, adapter = variant
    family = VARIANTS[name][0]
    certificate = certify(adapter, images[:1], tmp_path / "out", FAST)[0]
    witness = certificate["witness"]
    expected = ["prompt_embeds"] + (["pooled_prompt_embeds"] if family != "sd" else [])
    assert witness["tensors"] == sorted(expected)
    assert witness["negative_tensors"] == [f"negative_{n}" for n in sorted(expected)]
    assert certificate["model"]["family"] == family
    tensors = load_file(tmp_path / "out" / witness["file"])
    keywords = {key: tensors[key] for key in witness["tensors"] + witness["negative_tensors"]}
    keywords |= {key: tuple(value) for key, value in witness["pipeline_kwargs"].items()}
    image = _stock(folder, family, TEST_DEVICE)(
        **keywords, **{witness["guidance_keyword"]: witness["closest_guidance_scale"]},
        num_inference_steps=witness["num_inference_steps"],
        height=witness["height"], width=witness["width"],
        generator=torch.Generator("cpu").manual_seed(witness["closest_seed"]), output_type="np").images[0]
    closest = np.asarray(Image.open(tmp_path / "out" / witness["closest_generation"]), dtype=np.float32) / 255
    assert np.abs(image - closest).max() <= 1 / 255 + 1e-6


def test_an_unknown_pipeline_class_is_named(tmp_path):
    import json
    import shutil

    folder = build_tiny_pipeline(tmp_path / "model")
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "KandinskyPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match=r"names the pipeline 'KandinskyPipeline', which verifier does not "
                                             r"support; supported: FluxPipeline \(flux\), StableDiffusionPipeline "
                                             r"\(sd\), StableDiffusion3Pipeline \(sd3\), StableDiffusionXLPipeline "
                                             r"\(sdxl\)"):
        load_model(folder, device="cpu")
    shutil.rmtree(folder / "text_encoder")
    index["_class_name"] = "StableDiffusionPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match=r"lacks the component folder text_encoder/"):
        load_model(folder, device="cpu")


def test_a_flow_family_with_a_ddpm_scheduler_is_named(tmp_path):
    import json

    folder = build_tiny_pipeline(tmp_path / "model", family="sd3")
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    config["_class_name"] = "DDIMScheduler"
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    index = json.loads((folder / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "DDIMScheduler"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="scheduler DDIMScheduler is not a flow-matching scheduler"):
        load_model(folder, device="cpu")


def test_sdxl_folder_without_its_second_encoder_is_named(tmp_path):
    import shutil

    folder = build_tiny_pipeline(tmp_path / "model", family="sdxl")
    shutil.rmtree(folder / "text_encoder_2")
    with pytest.raises(ModelLoadError, match=r"lacks the component folder text_encoder_2/"):
        load_model(folder, device="cpu")


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_certificate_and_verify_agree(tmp_path, images, family):
    """A run of each multi-encoder family is re-checked by ``verify`` like any other: pooled embeddings, sizes,
    flow-matching grids (float timesteps) and Flux's distilled guidance included."""
    from verifier.verify import verify

    folder = build_tiny_pipeline(tmp_path / "model", family=family)
    out = tmp_path / "out"
    certify(folder, images, out, replace(FAST, batch_size=2))
    result = verify(out, model=folder, images=images, device=TEST_DEVICE, all_generations=True)
    failures = [check for check in result.checks if not check.passed]
    assert not failures, failures


def test_sd3_without_t5_uses_zeros_as_the_pipeline_does(tmp_path):
    """An SD3 folder saved without text_encoder_3 (the pipeline's documented memory saving): the T5 part of the
    conditioning is zeros, exactly as the stock pipeline builds it, and only the two CLIPs are inverted."""
    import json
    import shutil

    folder = build_tiny_pipeline(tmp_path / "model", family="sd3")
    index = json.loads((folder / "model_index.json").read_text())
    index["text_encoder_3"] = index["tokenizer_3"] = [None, None]
    (folder / "model_index.json").write_text(json.dumps(index))
    shutil.rmtree(folder / "text_encoder_3")
    shutil.rmtree(folder / "tokenizer_3")
    adapter = load_model(folder, device="cpu")
    assert list(adapter.text_inputs()) == ["tokens", "tokens_2"]
    empty = adapter.empty_conditioning()
    assert empty.prompt_embeds.shape == (1, 77 + 256, 64) and not empty.prompt_embeds[:, 77:].any()
    from diffusers import StableDiffusion3Pipeline

    stock = StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None,
                                                     local_files_only=True)  # as diffusers documents it
    _assert_same(empty, _stock_encoding(stock, "sd3", ""))
    assert "zeros" in adapter.describe()["conditioning"]["prompt_embeds"]


def test_a_guidance_distilled_flux_takes_guidance_as_input_and_schnell_gets_true_cfg(tmp_path):
    """Flux-dev-like: guidance scales are values of the guidance embedding; Flux-schnell-like (no embedding,
    timestep-distilled): real classifier-free guidance against the empty prompt, and flagged as few-step."""
    dev = load_model(build_tiny_pipeline(tmp_path / "dev", family="flux"), device="cpu")
    schnell = load_model(build_tiny_pipeline(tmp_path / "schnell", family="flux", prediction_type="schnell"),
                         device="cpu")
    # T5 prompts: 512 tokens for dev, 256 for schnell (as Black Forest Labs runs them).
    assert (dev.empty_conditioning().prompt_embeds.shape[1], schnell.empty_conditioning().prompt_embeds.shape[1]) == \
        (512, 256)
    assert dev.guidance_kwargs(3.0) == {"guidance_scale": 3.0}
    assert schnell.guidance_kwargs(3.0) == {"true_cfg_scale": 3.0}
    assert dev.describe()["distillation"]["few_step"] is False
    record = schnell.describe()["distillation"]
    assert record["few_step"] is True and "guidance_embeds" in record["evidence"][0]
    assert "not_memorized says nothing about the teacher" in record["scope"]
    # With true CFG the negative changes the image; with the distilled embedding it is unused.
    for adapter, negative_matters in ((schnell, True), (dev, False)):
        empty = adapter.empty_conditioning()
        witness = empty.map(lambda tensor: tensor + 1.0)
        one = adapter.generate(witness, empty, [0], 3.0, 2, 16)
        other = adapter.generate(witness, empty.map(lambda tensor: tensor * 0.5), [0], 3.0, 2, 16)
        assert bool(np.abs(one - other).max() > 1e-4) is negative_matters


def test_a_dynamic_shift_follows_the_run_resolution(tmp_path):
    """Flux's shift is computed from the image's token count: at 32 px (8 x 8 packed tokens) mu is the pipeline's."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    adapter = load_model(build_tiny_pipeline(tmp_path / "model", family="flux"), device="cpu")
    adapter.configure_objective("native", "uniform", 32)
    config = adapter.pipeline.scheduler.config
    assert adapter.objective.shift_record["image_seq_len"] == 64
    assert adapter.objective.mu == pytest.approx(calculate_shift(64, config.base_image_seq_len, config.max_image_seq_len,
                                                                 config.base_shift, config.max_shift))
    assert adapter.objective.describe()["training_timesteps"] == "uniform"


def test_few_step_evidence_is_read_from_configs_and_names(tmp_path):
    from diffusers import EulerAncestralDiscreteScheduler, LCMScheduler

    from verifier.models.distillation import few_step_evidence

    adapter = load_model(build_tiny_pipeline(tmp_path / "model"), device="cpu")
    pipeline = adapter.pipeline
    assert few_step_evidence(pipeline, "runwayml/stable-diffusion-v1-5") == []
    assert "weaker evidence" in few_step_evidence(pipeline, "stabilityai/stable-diffusion-3.5-large-turbo")[0]
    assert few_step_evidence(pipeline, "models/returbo") == []  # a word, not a substring
    original = pipeline.scheduler
    try:
        pipeline.scheduler = LCMScheduler.from_config(original.config)
        assert few_step_evidence(pipeline, "x") == ["scheduler LCMScheduler (consistency distillation)"]
        pipeline.scheduler = EulerAncestralDiscreteScheduler.from_config(original.config, timestep_spacing="trailing")
        assert "SDXL-Turbo" in few_step_evidence(pipeline, "x")[0]
    finally:
        pipeline.scheduler = original


def test_sd2_v_model_is_certified_at_its_native_768_px(tmp_path, images):
    """An SD 2.x-v-like model (v-prediction, attention upcast, latents 96 x 96, VAE factor 8) runs at 768 px."""
    folder = build_tiny_pipeline(tmp_path / "model", prediction_type="v_prediction", upcast_attention=True,
                                 latent_size=96, vae_levels=4)
    adapter = load_model(folder, device=TEST_DEVICE)
    assert adapter.resolution == 768
    # The framing search is not this test's subject (its 25 cuts at 768 px cost minutes on the CPU; cuts above
    # the search side: tests/test_aligned_search.py).
    config = replace(FAST, inversion_steps=1, inversion_noise_draws=1, error_timesteps=2, error_noise_draws=1,
                     generations=1, guidance_scales=(2.0,), sampling_steps=2, framing_search=False)
    certificate = certify(adapter, images[:1], tmp_path / "out", config)[0]
    assert certificate["image"]["preprocessing"]["resolution"] == certificate["witness"]["height"] == 768
    assert certificate["model"]["prediction_type"] == "v_prediction"
    assert certificate["model"]["conditioning"]["upcast_attention"] is True
    from PIL import Image

    assert Image.open(tmp_path / "out" / certificate["witness"]["closest_generation"]).size == (768, 768)


def test_the_stages_reach_a_model_only_through_its_adapter():
    """No stage touches a pipeline component: a new family joins by writing an adapter, not by editing them."""
    import ast
    from pathlib import Path

    import verifier

    # ("scheduler" is also a field of the run's record, so it is caught through "pipeline" instead.)
    components = {"unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer",
                  "tokenizer_2", "tokenizer_3", "vae", "pipeline"}
    stages = ("api.py", "invert.py", "error.py", "control.py", "conditions.py", "spaces.py", "verify.py",
              "calibration.py")
    package = Path(verifier.__file__).parent
    for stage in stages:
        tree = ast.parse((package / stage).read_text())
        touched = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)} & components
        assert not touched, f"{stage} reaches into the pipeline: {sorted(touched)}"


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_the_recorded_cost_is_the_denoiser_rows_the_run_spent(tmp_path, images, family):
    """Every denoiser row a certification runs is in its certificate's cost, and no row twice: counted at the
    denoiser itself, for classifier-free guidance (two rows per step above scale 1) and for Flux-dev's guidance
    embedding (one), through every search that ran (the framing searches reuse no cost they did not spend)."""
    adapter = load_model(build_tiny_pipeline(tmp_path / "model", family=family), device=TEST_DEVICE)
    rows = []

    def count(module, args, kwargs):
        batch = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
        rows.append(batch.shape[0])

    handle = adapter.denoiser().register_forward_pre_hook(count, with_kwargs=True)
    try:
        (certificate,) = certify(adapter, images[:1], tmp_path / "out",
                                 # A fixed row budget: the memory probe's rows are the run's, not an image's.
                                 replace(FAST, gradient_checkpointing=False, denoiser_batch=64))
    finally:
        handle.remove()
    budget, framing = certificate["budget"], certificate["framing"]
    searches = [framing[key] for key in ("denoiser_evaluations", "aligned_denoiser_evaluations")
                if framing[key] is not None]
    assert framing["searched"] and searches  # the tiny model reproduces nothing: the framing searches ran
    recorded = budget["denoiser_evaluations_spent"]["total"] + budget["prompt_denoiser_evaluations"] + sum(
        (cost or {"total": 0})["total"] for cost in [budget["control_denoiser_evaluations"],
                                                     budget["part_control_denoiser_evaluations"]]
        + [search["witness"] for search in searches] + [search["control"] for search in searches])
    assert sum(rows) == recorded
    guided = dict(zip(FAST.guidance_scales, (1, 1) if family == "flux" else (1, 2)))
    assert budget["denoiser_evaluations"]["sampling_forward"] == sum(
        FAST.generations * FAST.sampling_steps * per_step for per_step in guided.values())
