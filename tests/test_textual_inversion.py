"""Textual-inversion embeddings on the model under test (``--textual-inversion PATH[:TOKEN]``,
``verifier.models.textual_inversion``): loaded with diffusers' own ``load_textual_inversion`` on SD and SDXL, a prompt
naming the token encoded as the stock pipeline encodes it, recorded and re-checked by ``verify``, and every file or
token that does not fit refused by name before an image is certified."""

from __future__ import annotations

import html
import json

import pytest
import torch
from click.testing import CliRunner

from helpers.embeddings import write_tiny_embedding
from helpers.images import write_images
from helpers.tiny_models import TEST_DEVICE, build_tiny_pipeline
from verifier.cli import main
from verifier.models import ModelLoadError, load_model
from verifier.models.textual_inversion import EmbeddingSpec
from verifier.verify import verify

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

FAST = {"inversion_steps": 3, "framing_steps": 3, "inversion_noise_draws": 2, "error_timesteps": 3,
        "error_noise_draws": 2, "generations": 2, "sampling_steps": 3, "framing_search": False,
        "guidance_scales": [1.0, 2.0]}
PROMPT = "a photo of <tiny-style>"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ti-models")
    return {family: build_tiny_pipeline(folder / family, family=family) for family in ("sd", "sdxl")}


def _stock_conditioning(model, family: str, embedding, token: str) -> dict[str, torch.Tensor]:
    """What the stock pipeline encodes PROMPT to after loading the embedding as diffusers documents it."""
    import diffusers
    from safetensors.torch import load_file

    pipeline_class = diffusers.StableDiffusionXLPipeline if family == "sdxl" else diffusers.StableDiffusionPipeline
    pipe = pipeline_class.from_pretrained(model, local_files_only=True)
    if family == "sdxl":
        state = load_file(str(embedding))
        pipe.load_textual_inversion(state["clip_l"], token=token, text_encoder=pipe.text_encoder,
                                    tokenizer=pipe.tokenizer)
        pipe.load_textual_inversion(state["clip_g"], token=token, text_encoder=pipe.text_encoder_2,
                                    tokenizer=pipe.tokenizer_2)
        embeds, _, pooled, _ = pipe.encode_prompt(PROMPT, device="cpu", num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
    pipe.load_textual_inversion(str(embedding), token=token)
    return {"prompt_embeds": pipe.encode_prompt(PROMPT, "cpu", 1, False)[0]}


@pytest.mark.parametrize("family, layout, vectors", [("sd", "diffusers", 1), ("sd", "diffusers", 3),
                                                     ("sdxl", "sdxl", 2)])
def test_an_embedding_is_loaded_and_encoded_as_stock_diffusers_does(models, family, layout, vectors, tmp_path):
    """A prompt naming the token (of one or several vectors) is encoded as the stock pipeline encodes it after
    load_textual_inversion; the base encodes it otherwise; the record names file, layout, token and vectors, and the
    fingerprint covers it."""
    model = models[family]
    embedding = write_tiny_embedding(model, tmp_path / "tiny-style.safetensors", vectors=vectors, layout=layout)
    loaded = load_model(model, device=TEST_DEVICE, embeddings=[EmbeddingSpec(embedding, "<tiny-style>")])
    base = load_model(model, device=TEST_DEVICE)
    ours = loaded.prompt_conditioning([PROMPT]).to("cpu").tensors()
    stock = _stock_conditioning(model, family, embedding, "<tiny-style>")
    assert set(ours) == set(stock)
    for name, tensor in stock.items():
        assert torch.allclose(ours[name], tensor.float(), atol=1e-6), name
    assert not torch.allclose(base.prompt_conditioning([PROMPT]).tensors()["prompt_embeds"], ours["prompt_embeds"])
    [record] = loaded.adapters
    assert (record["kind"], record["layout"], record["token"], record["vectors"]) == (
        "textual_inversion", layout, "<tiny-style>", vectors)
    assert record["text_encoders"] == (["text_encoder", "text_encoder_2"] if family == "sdxl" else ["text_encoder"])
    assert loaded.base_fingerprint == base.fingerprint != loaded.fingerprint
    other_token = load_model(model, device=TEST_DEVICE, embeddings=[EmbeddingSpec(embedding, "<other>")])
    assert other_token.fingerprint != loaded.fingerprint


def test_a1111_files_take_their_token_from_the_file(models, tmp_path):
    """An A1111 .safetensors names no token: its file name is the trigger word; its .pt names one but is a pickle."""
    model = models["sd"]
    named = write_tiny_embedding(model, tmp_path / "charturner.safetensors", layout="a1111")
    [record] = load_model(model, device=TEST_DEVICE, embeddings=[EmbeddingSpec(named)]).adapters
    assert (record["layout"], record["token"]) == ("a1111", "charturner")
    pickled = write_tiny_embedding(model, tmp_path / "style.pt", token="<pt-style>", layout="a1111-pt")
    with pytest.raises(ModelLoadError, match=r"is a pickle file \(\.pt\).*--allow-pickle"):
        load_model(model, device=TEST_DEVICE, embeddings=[EmbeddingSpec(pickled)])
    [record] = load_model(model, device=TEST_DEVICE, allow_pickle=True, embeddings=[EmbeddingSpec(pickled)]).adapters
    assert (record["layout"], record["token"]) == ("a1111", "<pt-style>")


def _word_in_vocabulary(model) -> str:
    return next(word for word in load_model(model, device=TEST_DEVICE).pipeline.tokenizer.get_vocab() if word.isalpha())


def test_every_embedding_that_does_not_fit_is_refused_by_name(models, tmp_path):

    sd, sdxl = models["sd"], models["sdxl"]
    taken = _word_in_vocabulary(sd)
    narrow = write_tiny_embedding(sd, tmp_path / "narrow.safetensors", width=7)
    sdxl_file = write_tiny_embedding(sdxl, tmp_path / "xl.safetensors", layout="sdxl")
    sd_file = write_tiny_embedding(sd, tmp_path / "sd.safetensors")
    sd3 = build_tiny_pipeline(tmp_path / "sd3", family="sd3")
    not_safetensors = tmp_path / "fake.safetensors"
    not_safetensors.write_bytes(b"PK\x03\x04 not a safetensors file")
    cases = [
        (sd, EmbeddingSpec(sd_file, taken), f"the token '{taken}' is already in tokenizer's vocabulary"),
        (sd, EmbeddingSpec(narrow), "was made for another model: its vectors for text_encoder have 7 values"),
        (sd, EmbeddingSpec(sdxl_file), "is an SDXL embedding (clip_l and clip_g vectors); MODEL is a sd model"),
        (sdxl, EmbeddingSpec(sd_file), "an SDXL embedding holds clip_l and clip_g vectors"),
        (sd3, EmbeddingSpec(sd_file), "textual-inversion embeddings are loaded for sd and sdxl models"),
        (sd, EmbeddingSpec(not_safetensors), "is not a safetensors file: it is a zip archive"),
        (sd, EmbeddingSpec(tmp_path / "gone.safetensors"), "does not exist"),
    ]
    for model, spec, message in cases:
        with pytest.raises(ModelLoadError) as error:
            load_model(model, device=TEST_DEVICE, embeddings=[spec])
        assert message in str(error.value) and str(spec.path) in str(error.value), str(error.value)


def test_a_bad_token_is_a_usage_error_and_a_taken_one_stops_certify_before_any_image(models, tmp_path):
    model = models["sd"]
    images = write_images(tmp_path / "images", count=1)
    embedding = write_tiny_embedding(model, tmp_path / "style.safetensors")
    result = CliRunner().invoke(main, ["certify", str(model), *map(str, images), "--out", str(tmp_path / "out"),
                                       "--textual-inversion", f"{embedding}:two words"])
    assert result.exit_code == 2 and "the token 'two words' is not allowed" in result.output, result.output
    taken = _word_in_vocabulary(model)
    result = CliRunner().invoke(main, ["certify", str(model), *map(str, images), "--out", str(tmp_path / "out"),
                                       "--device", TEST_DEVICE, "--textual-inversion", f"{embedding}:{taken}"])
    assert result.exit_code == 3 and "already in tokenizer's vocabulary" in result.output, result.output
    assert not list((tmp_path / "out").glob("*.json"))


def test_certify_records_the_embedding_and_verify_reloads_it(models, tmp_path):
    model = models["sd"]
    images = write_images(tmp_path / "images", count=1)
    embedding = write_tiny_embedding(model, tmp_path / "style.safetensors")
    config = tmp_path / "fast.json"
    config.write_text(json.dumps(FAST))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["certify", str(model), *map(str, images), "--out", str(out), "--config",
                                       str(config), "--device", TEST_DEVICE, "--textual-inversion",
                                       f"{embedding}:<tiny-style>"])
    assert result.exit_code in (0, 1), result.output
    certificate = json.loads((out / f"{images[0].stem}.json").read_text())
    [record] = certificate["model"]["adapters"]
    assert (record["kind"], record["token"], record["path"]) == ("textual_inversion", "<tiny-style>", str(embedding))
    assert html.escape("embedding style.safetensors as <tiny-style>") in (out / "report.html").read_text()
    checked = verify(out, images=images, device=TEST_DEVICE)
    assert checked.passed, [c for c in checked.checks if not c.passed]
    renamed = verify(out, images=images, device=TEST_DEVICE, embeddings=[EmbeddingSpec(embedding, "<renamed>")])
    [model_check] = [c for c in renamed.checks if c.name == "model"]
    assert not model_check.passed and "token '<renamed>' vs recorded '<tiny-style>'" in model_check.detail
    embedding.rename(tmp_path / "moved.safetensors")
    missing = verify(out, images=images, device=TEST_DEVICE)
    [model_check] = [c for c in missing.checks if c.name == "model"]
    assert not model_check.passed and "the embedding" in model_check.detail and "--textual-inversion" in \
        model_check.detail
