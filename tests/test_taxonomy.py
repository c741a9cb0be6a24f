"""Intended or unintended (issue 10): the owner's context, prompts tested like the witness, the
classification and the release-gate policy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from verifier.cli import main
from verifier.context import ImageContext
from verifier.images import ImageInputError, collect_images
from verifier.policy import Policy, PolicyError
from verifier.reference_models import reference_model_path
from verifier.taxonomy import classify

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

FIXTURE = reference_model_path("fixture-16px")
REPO = Path(__file__).resolve().parents[1]
DEFAULT_POLICY = REPO / "configs" / "policies" / "default.toml"
NAMED, PRIVATE, UNSAID, HELD_OUT = "dup00-astronaut-x400", "dup02-coffee-x400", "dup01-chelsea-x400", "held-flower-whole"


# --- context in the manifests -------------------------------------------------------------------

def _png(folder: Path, name: str) -> None:
    shutil.copy(FIXTURE / "images" / f"{HELD_OUT}.png", folder / name)


def test_context_columns_from_csv_and_jsonl(tmp_path):
    _png(tmp_path, "a.png"), _png(tmp_path, "b.png"), _png(tmp_path, "c.png")
    (tmp_path / "list.csv").write_text(
        "path,id,entity,explicit_prompts,implicit_prompts,public\n"
        'a.png,mona,Mona Lisa,"the Mona Lisa | Mona Lisa by Leonardo",a woman smiling in front of a landscape,yes\n'
        "b.png,plain,,,,\n")
    (tmp_path / "list.jsonl").write_text(json.dumps(
        {"path": "c.png", "explicit_prompts": ["a photo of my garden"], "public": False}) + "\n")
    images = {image.id: image for image in collect_images([tmp_path / "list.csv", tmp_path / "list.jsonl"])}
    assert images["mona"].context == ImageContext(
        entity="Mona Lisa", explicit_prompts=("the Mona Lisa", "Mona Lisa by Leonardo"),
        implicit_prompts=("a woman smiling in front of a landscape",), public=True)
    assert images["plain"].context is None, "empty context cells are no context"
    assert images["c"].context == ImageContext(explicit_prompts=("a photo of my garden",), public=False)
    assert images["mona"].context.prompts()[0] == ("explicit", "the Mona Lisa")


@pytest.mark.parametrize(("manifest", "message"), [
    ("path,explicit_prompt\na.png,x\n", "unknown column 'explicit_prompt' (did you mean 'explicit_prompts'?)"),
    ("path,caption\na.png,x\n", "unknown column 'caption'; allowed: path, id, entity"),
    ("path,public\na.png,maybe\n", "'public' must be true or false"),
    ("path,explicit_prompts,implicit_prompts\na.png,a cat,a cat\n", "listed as both explicit"),
    ("path\na.png,extra\n", "more cells than the header"),
    ("path,explicit_prompts\na.png," + "|".join(f"p{i}" for i in range(33)) + "\n", "at most 32 per image"),
])
def test_bad_context_is_a_clear_usage_error(tmp_path, manifest, message):
    _png(tmp_path, "a.png")
    (tmp_path / "list.csv").write_text(manifest)
    with pytest.raises(ImageInputError, match="line 2") as caught:
        collect_images([tmp_path / "list.csv"])
    assert message in str(caught.value)


def test_bad_jsonl_context_types(tmp_path):
    _png(tmp_path, "a.png")
    (tmp_path / "list.jsonl").write_text(json.dumps({"path": "a.png", "implicit_prompts": [3]}) + "\n")
    with pytest.raises(ImageInputError, match="every prompt in 'implicit_prompts' must be a string"):
        collect_images([tmp_path / "list.jsonl"])


# --- the classification ---------------------------------------------------------------------------

def _prompt(kind: str, replications: int, reaches: bool = False) -> dict:
    return {"kind": kind, "prompt": f"{kind} prompt", "replications": replications, "generations": 32,
            "reproduces": replications > 0, "reaches_min_rate": reaches}


CONTEXT = {"entity": "x", "explicit_prompts": [], "implicit_prompts": [], "public": True}


@pytest.mark.parametrize(("verdict", "context", "prompts", "category", "level", "evidence"), [
    ("not_memorized", CONTEXT, [_prompt("explicit", 0)], None, None, []),
    ("inconclusive", None, [], None, None, []),
    ("memorized", None, [], "unintended", "memorized", []),
    ("rarely_reproduced", CONTEXT, [], "unintended", "rarely_reproduced", []),
    ("memorized", CONTEXT, [_prompt("explicit", 0), _prompt("implicit", 0)], "unintended", "memorized", []),
    ("memorized", CONTEXT, [_prompt("implicit", 3), _prompt("explicit", 9, True)], "explicit_intended", "memorized",
     [1]),
    ("rarely_reproduced", CONTEXT, [_prompt("explicit", 0), _prompt("implicit", 2)], "implicit_intended",
     "rarely_reproduced", [1]),
    # The witness missed it, an expected prompt reproduces it at the minimum rate: intended, level memorized.
    ("not_memorized", CONTEXT, [_prompt("explicit", 20, True)], "explicit_intended", "memorized", [0]),
])
def test_each_category_follows_the_rule(verdict, context, prompts, category, level, evidence):
    result = classify(verdict, context, prompts)
    assert (result["category"], result["level"], result["evidence"]) == (category, level, evidence)
    assert result["reason"]


# --- the policy -----------------------------------------------------------------------------------

def _certificate(category, level, public, part_found: bool = False) -> dict:
    return {"classification": {"category": category, "level": level},
            "context": None if public is None else {"public": public}, "part_replication": {"found": part_found}}


def test_the_default_policy_fails_unintended_and_passes_intended_public_works():
    policy = Policy.read(DEFAULT_POLICY)
    assert policy.judge(_certificate("unintended", "rarely_reproduced", True))["fails"]
    assert policy.judge(_certificate("unintended", "memorized", None))["fails"]
    assert not policy.judge(_certificate("explicit_intended", "memorized", True))["fails"]
    assert not policy.judge(_certificate("implicit_intended", "memorized", True))["fails"]
    private = policy.judge(_certificate("explicit_intended", "memorized", False))
    assert private["fails"] and private["category"] == "unintended" and "not marked public" in private["reason"]
    assert not policy.judge(_certificate(None, None, True))["fails"]
    part = policy.judge(_certificate(None, None, None, part_found=True))
    assert part["fails"] and "a part is replicated" in part["reason"]


def test_a_replicated_part_fails_only_where_the_policy_says_so(tmp_path):
    (tmp_path / "p.toml").write_text("[fail]\nunintended = ['memorized']\n[parts]\nfail = false\n")
    lenient = Policy.read(tmp_path / "p.toml")
    assert not lenient.judge(_certificate(None, None, None, part_found=True))["fails"]
    assert Policy.from_record(lenient.record()).fail_on_part is False
    (tmp_path / "q.toml").write_text("[fail]\n")  # no [parts] table: parts do not fail
    assert not Policy.read(tmp_path / "q.toml").judge(_certificate(None, None, None, part_found=True))["fails"]


@pytest.mark.parametrize(("text", "message"), [
    ("[fail]\nunintend = ['memorized']\n", "unknown key 'unintend' (did you mean 'unintended'?)"),
    ("[fail]\nunintended = ['memorised']\n", "expected a list of levels from memorized, rarely_reproduced"),
    ("description = 'x'\n", "needs a [fail] table"),
    ("[fail]\n[intended]\npublic_only = 'yes'\n", "public_only = 'yes' is not allowed"),
    ("[fail]\n[gate]\n", "unknown key 'gate'"),
    ("[fail]\n[parts]\nfail = 'yes'\n", "[parts] fail = 'yes' is not allowed"),
    ("[fail]\n[parts]\nfails = true\n", "unknown key 'fails' (did you mean 'fail'?)"),
    ("[fail\n", "is not valid UTF-8 TOML"),
])
def test_bad_policy_is_refused_with_the_key_and_what_is_allowed(tmp_path, text, message):
    (tmp_path / "p.toml").write_text(text)
    with pytest.raises(PolicyError) as caught:
        Policy.read(tmp_path / "p.toml")
    assert message in str(caught.value)


# --- end to end on the fixture --------------------------------------------------------------------

@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    """The fixture's images with constructed context, certified under the default policy through the CLI.

    NAMED: its training caption as an explicit prompt, public: explicit_intended. PRIVATE: context without
    prompts, not public: unintended. UNSAID: no context: unintended by default. HELD_OUT: its caption as an
    explicit prompt, never trained: no category.
    """
    folder = tmp_path_factory.mktemp("gated")
    manifest = json.loads((FIXTURE / "manifest.json").read_text())
    caption = {image["id"]: image["caption"] for image in manifest["images"]}
    rows = [{"path": str(FIXTURE / "images" / f"{NAMED}.png"), "entity": "astronaut portrait",
             "explicit_prompts": [caption[NAMED]], "public": True},
            {"path": str(FIXTURE / "images" / f"{PRIVATE}.png"), "public": False},
            {"path": str(FIXTURE / "images" / f"{UNSAID}.png")},
            {"path": str(FIXTURE / "images" / f"{HELD_OUT}.png"), "explicit_prompts": [caption[HELD_OUT]]}]
    listing = folder / "protected.jsonl"
    listing.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = folder / "certs"
    result = CliRunner().invoke(main, ["certify", str(FIXTURE), str(listing), "--out", str(out), "--device", "cpu",
                                       "--policy", str(DEFAULT_POLICY)])
    return listing, out, result


def test_categories_come_out_as_constructed_and_the_policy_sets_the_exit_code(gated):
    _, out, result = gated
    assert result.exit_code == 1, result.output  # PRIVATE and UNSAID are unintended memorization
    certificates = {name: json.loads((out / f"{name}.json").read_text()) for name in (NAMED, PRIVATE, UNSAID, HELD_OUT)}
    assert {name: c["classification"]["category"] for name, c in certificates.items()} == {
        NAMED: "explicit_intended", PRIVATE: "unintended", UNSAID: "unintended", HELD_OUT: None}
    named = certificates[NAMED]
    assert named["verdict"] == "memorized" and named["context"]["public"] is True
    prompt = named["prompts"][0]
    assert prompt["kind"] == "explicit" and prompt["reproduces"] and prompt["generations"] == 32
    assert prompt["error_ratio"] < 0.5, "the training caption lowers the error like the witness"
    assert named["classification"]["evidence"] == [0]
    held = certificates[HELD_OUT]["prompts"][0]
    assert held["replications"] == 0 and held["error_ratio"] > 0.5
    assert certificates[UNSAID]["context"] is None and certificates[UNSAID]["prompts"] == []
    assert certificates[UNSAID]["budget"]["prompt_denoiser_evaluations"] == len(
        certificates[UNSAID]["readable_prompt"]["prompts"]) * (40 + 16 * 25 * 3), "no owner prompt: decoding only"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["categories"] == {"explicit_intended": 1, "implicit_intended": 0, "unintended": 2, "none": 1}
    assert summary["gate_failed"] is True and summary["policy"]["sha256"] == Policy.read(DEFAULT_POLICY).sha256
    assert [image["gate"]["fails"] for image in summary["images"]] == [False, True, True, False]
    assert "fail the gate" in result.output and "explicit_intended" in result.output


def test_verify_rechecks_prompts_category_and_gate(gated, tmp_path):
    from verifier.verify import verify

    _, out, _ = gated
    checked = verify(out, images=[FIXTURE / "images"])
    assert checked.passed, [c for c in checked.checks if not c.passed]
    assert any(c.name.startswith("prompt 1 generations") and c.passed for c in checked.checks)
    # Tamper: call the unintended reproduction intended, in the certificate and the summary alike.
    copy = tmp_path / "certs"
    shutil.copytree(out, copy)
    path = copy / f"{PRIVATE}.json"
    certificate = json.loads(path.read_text())
    certificate["classification"]["category"] = "explicit_intended"
    path.write_text(json.dumps(certificate))
    summary = json.loads((copy / "summary.json").read_text())
    summary["images"][1]["category"] = "explicit_intended"
    summary["categories"] = {"explicit_intended": 2, "implicit_intended": 0, "unintended": 1, "none": 1}
    (copy / "summary.json").write_text(json.dumps(summary))
    failed = {c.name for c in verify(copy, images=[FIXTURE / "images"]).checks if not c.passed}
    assert "prompts and category" in failed and "summary" in failed
    # Tamper: drop the prompt that made the named image intended.
    shutil.copy(out / f"{PRIVATE}.json", path)
    named = json.loads((copy / f"{NAMED}.json").read_text())
    named["prompts"] = []
    (copy / f"{NAMED}.json").write_text(json.dumps(named))
    failed = {(c.image_id, c.name) for c in verify(copy, images=[FIXTURE / "images"]).checks if not c.passed}
    assert (NAMED, "prompts and category") in failed and (NAMED, "arithmetic") not in failed


def test_a_permissive_policy_passes_and_context_is_part_of_the_resume_key(gated, tmp_path):
    listing, out, _ = gated
    permissive = tmp_path / "permissive.toml"
    permissive.write_text("[fail]\nunintended = []\n")
    run = tmp_path / "certs"
    shutil.copytree(out, run)
    result = CliRunner().invoke(main, ["certify", str(FIXTURE), str(listing), "--out", str(run), "--device", "cpu",
                                       "--policy", str(permissive)])
    assert result.exit_code == 0, result.output
    assert "resuming: 4 images already certified" in result.output
    # Another context for one image: that image is redone, the others are reused.
    rows = [json.loads(line) for line in listing.read_text().splitlines()]
    rows[1]["public"] = True
    changed = tmp_path / "changed.jsonl"
    changed.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = CliRunner().invoke(main, ["certify", str(FIXTURE), str(changed), "--out", str(run), "--device", "cpu",
                                       "--policy", str(permissive)])
    assert "resuming: 3 images already certified" in result.output, result.output
    assert json.loads((run / f"{PRIVATE}.json").read_text())["context"]["public"] is True


def test_policy_and_fail_on_together_are_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["certify", str(FIXTURE), str(FIXTURE / "images" / f"{NAMED}.png"), "--out",
                                       str(tmp_path / "o"), "--policy", str(DEFAULT_POLICY), "--fail-on", "never"])
    assert result.exit_code == 2 and "give one" in result.output
    result = CliRunner().invoke(main, ["certify", str(FIXTURE), str(FIXTURE / "images" / f"{NAMED}.png"), "--out",
                                       str(tmp_path / "o"), "--policy", str(tmp_path / "missing.toml")])
    assert result.exit_code == 2 and "cannot be read" in result.output


# --- readable evidence: the witness decoded into text ---------------------------------------------

def test_decoding_soft_tokens_that_are_vocabulary_rows_gives_back_their_text():
    import torch

    from verifier.models import load_model
    from verifier.readable import decoded_prompts

    model = load_model(FIXTURE, device="cpu")
    (name, (tokenizer, table)), = model.text_inputs().items()
    ids = tokenizer("astronaut portrait", add_special_tokens=False).input_ids
    rows = table.weight.detach()[ids].clone()
    assert decoded_prompts(model, {name: rows}) == [tokenizer.decode(ids).strip()]
    # A soft token sitting on EOS decodes to an ordinary token, never to a special one.
    eos = table.weight.detach()[[tokenizer.eos_token_id]].clone()
    decoded = decoded_prompts(model, {name: eos})
    assert decoded and decoded[0] and tokenizer.eos_token not in decoded[0]
    assert decoded_prompts(model, {"prompt_embeds": torch.zeros(1, 4)}) == [], "hidden states have no tokens"


def _decoded(replications: int) -> dict:
    return {"prompt": "cat photo", "replications": replications, "generations": 32, "lower_bound": 0.0,
            "reproduces": replications > 0}


@pytest.mark.parametrize(("verdict", "space", "prompts", "searched", "says"), [
    ("not_memorized", "token_embeddings", [], True, "not searched: the witness did not reproduce"),
    ("memorized", "token_embeddings", [], False, "decode_witness is off"),
    ("memorized", "hidden_states", [], True, "has no tokens to decode"),
    ("memorized", "token_embeddings", [_decoded(0)], True, "no readable prompt found"),
    ("rarely_reproduced", "token_embeddings", [_decoded(3)], True, "'cat photo' replicated the image in 3 of 32"),
])
def test_the_readable_statement_says_plainly_what_was_found(verdict, space, prompts, searched, says):
    from verifier.readable import statement

    assert says in statement(verdict, space, prompts, searched)


def test_a_reproduced_image_gets_its_decoded_witness_tested_and_verify_redecodes_it(gated, tmp_path):
    from verifier.verify import verify

    _, out, _ = gated
    named = json.loads((out / f"{NAMED}.json").read_text())
    readable = named["readable_prompt"]
    assert readable["prompts"] and all(p["kind"] == "decoded" and p["generations"] == 32 for p in readable["prompts"])
    assert readable["statement"].startswith(("the readable prompt", "no readable prompt found"))
    held = json.loads((out / f"{HELD_OUT}.json").read_text())["readable_prompt"]
    assert held["prompts"] == [] and held["statement"].startswith("not searched")
    assert named["budget"]["prompt_denoiser_evaluations"] == (1 + len(readable["prompts"])) * (40 + 16 * 25 * 3)
    copy = tmp_path / "certs"
    shutil.copytree(out, copy)
    named["readable_prompt"]["prompts"][0]["prompt"] = "a prompt the witness does not decode to"
    (copy / f"{NAMED}.json").write_text(json.dumps(named))
    failed = {(c.image_id, c.name) for c in verify(copy, images=[FIXTURE / "images"]).checks if not c.passed}
    assert (NAMED, "decoded witness") in failed
