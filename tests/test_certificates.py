"""Certificates a third party can trust: the published schema, `verifier verify` and its tamper corpus,
and a resumed run that trusts nothing it cannot check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from helpers.signing import write_keypair
from verifier.certificate.schema import json_schema, read_certificate
from verifier.cli import main
from verifier.config import VerifierConfig
from verifier.reference_models import reference_model_path
from verifier.verify import verify

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

FIXTURE = reference_model_path("fixture-16px")
MEMORIZED, HELD_OUT, OTHER = "dup00-astronaut-x400", "held-flower-whole", "dup02-coffee-x400"
SCHEMA_FOLDER = Path(__file__).resolve().parents[1] / "verifier" / "certificate"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One certified run on the fixture: a memorized image, a never-trained one and another memorized one."""
    from verifier.api import certify

    out = tmp_path_factory.mktemp("run") / "certs"
    files = [FIXTURE / "images" / f"{name}.png" for name in (MEMORIZED, HELD_OUT, OTHER)]
    certificates = certify(FIXTURE, files, out, VerifierConfig(device="cpu"))
    assert [c["verdict"] for c in certificates] == ["memorized", "not_memorized", "memorized"]
    return out


def _edit(path: Path, change) -> None:
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value, indent=2))


# --- the schema ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["certificate", "summary"])
def test_published_schema_files_are_the_code_definition(kind):
    published = json.loads((SCHEMA_FOLDER / f"{kind}.schema.json").read_text())
    assert published == json_schema(kind), "regenerate with: verifier schema KIND > verifier/certificate/KIND.schema.json"
    result = CliRunner().invoke(main, ["schema", kind])
    assert result.exit_code == 0 and json.loads(result.output) == published


def test_every_written_certificate_and_summary_validates_against_the_published_schema(run):
    from jsonschema import Draft202012Validator

    certificate_schema = json.loads((SCHEMA_FOLDER / "certificate.schema.json").read_text())
    summary_schema = json.loads((SCHEMA_FOLDER / "summary.schema.json").read_text())
    Draft202012Validator.check_schema(certificate_schema)
    written = [p for p in run.glob("*.json") if p.name not in ("summary.json", "run.json")]
    assert len(written) == 3
    for path in written:
        text = path.read_text()
        assert "NaN" not in text and "Infinity" not in text
        Draft202012Validator(certificate_schema).validate(json.loads(text))
        assert read_certificate(path)["image"]["id"] == path.stem
    Draft202012Validator(summary_schema).validate(json.loads((run / "summary.json").read_text()))


def test_schema_rejects_what_the_code_never_writes(run):
    from jsonschema import Draft202012Validator, ValidationError

    schema = json.loads((SCHEMA_FOLDER / "certificate.schema.json").read_text())
    certificate = json.loads((run / f"{MEMORIZED}.json").read_text())
    for change in (lambda c: c.update(verdict="probably_fine"), lambda c: c.update(extra_field=1),
                   lambda c: c["image"].update(sha256="not-a-hash"), lambda c: c.pop("witness")):
        broken = json.loads(json.dumps(certificate))
        change(broken)
        with pytest.raises(ValidationError):
            Draft202012Validator(schema).validate(broken)


def test_reader_names_an_older_schema_version(run, tmp_path):
    from verifier.certificate.schema import SCHEMA_VERSION, CertificateFormatError

    path = tmp_path / "old.json"
    shutil.copy(run / f"{MEMORIZED}.json", path)
    _edit(path, lambda c: c["schema"].update(version=1))
    with pytest.raises(CertificateFormatError, match=f"has schema version 1; this verifier reads version {SCHEMA_VERSION}"):
        read_certificate(path)


# --- verify: an intact run passes, every tampering is caught and named ---------------------------------

def test_verify_passes_an_untouched_run_through_the_cli(run):
    result = CliRunner().invoke(main, ["verify", str(run), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    for check in ("schema", "image", "model", "witness", "verdict", "sequential sampling", "inversion schedule",
                  "generations at guidance 3", "prediction error", "summary"):
        assert f" {check} " in result.output
    assert "FAIL" not in result.output


def _only(folder: Path, keep: str) -> Path:
    """The one certificate under test (verify takes a single file too)."""
    return folder / f"{keep}.json"


def _fail(result, name: str, contains: str) -> None:
    failing = [c for c in result.checks if not c.passed]
    assert not result.passed
    assert any(c.name == name and contains in c.detail for c in failing), [(c.name, c.detail) for c in failing]


def _rewrite_witness(path: Path, change) -> str:
    import hashlib

    from safetensors import safe_open
    from safetensors.torch import save

    with safe_open(str(path), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        metadata = handle.metadata()
    change(tensors)
    data = save(tensors, metadata=metadata)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def test_tamper_edited_verdict(copy):
    _edit(copy / f"{MEMORIZED}.json", lambda c: c.update(verdict="not_memorized"))
    _fail(verify(_only(copy, MEMORIZED), device="cpu"), "verdict",
          "verdict 'not_memorized' recorded, 'memorized' follows")
    _fail(verify(copy, device="cpu"), "summary", "summary says memorized, its certificate not_memorized")


def test_tamper_edited_error_ratio(copy):
    def lower(c):
        c["prediction_error"]["ratio"] = 0.1
        c["conditions"]["existence"].update(value=0.1, margin=0.4)
    _edit(copy / f"{HELD_OUT}.json", lower)
    _fail(verify(_only(copy, HELD_OUT), device="cpu"), "arithmetic", "is not inverted_mean / empty_mean")


def test_tamper_edited_error_curve_consistently(copy):
    """Curve, means and ratio edited together: only re-measuring the error finds it."""
    def scale(c):
        error = c["prediction_error"]
        error["inverted"] = [v * 0.5 for v in error["inverted"]]
        error["inverted_mean"] = sum(error["inverted"]) / len(error["inverted"])
        error["ratio"] = error["inverted_mean"] / error["empty_mean"]
        c["conditions"]["existence"].update(value=error["ratio"], margin=0.5 - error["ratio"])
    _edit(copy / f"{HELD_OUT}.json", scale)
    result = verify(_only(copy, HELD_OUT), device="cpu")
    _fail(result, "prediction error", "inverted error at t=")


def test_tamper_edited_similarity_score(copy):
    def raise_score(c):
        scale = next(s for s in c["conditions"]["probability"]["per_scale"] if s["replications"] > 0)
        index = next(i for i, v in enumerate(scale["scores"]) if v >= 0.7)
        scale["scores"][index] = min(1.0, scale["scores"][index] + 0.1)
        c["conditions"]["similarity"]["value"] = max(
            v for s in c["conditions"]["probability"]["per_scale"] for v in s["scores"])
        c["conditions"]["similarity"]["margin"] = c["conditions"]["similarity"]["value"] - 0.7
    _edit(copy / f"{MEMORIZED}.json", raise_score)
    _fail(verify(_only(copy, MEMORIZED), device="cpu"), "generations at guidance 3", "regenerated vs")


def test_tamper_sampling_past_a_settled_rate(copy):
    """Seeds added after the rate was settled (to wash out or pile up replications) break the stopping rule,
    even with the seeds, counts and bounds made consistent."""
    def more_seeds(c):
        scale = c["conditions"]["probability"]["per_scale"][0]
        scale["scores"] = scale["scores"] * 2
        scale["generations"] *= 2
        scale["replications"] *= 2
        scale["look"] = 1
        seed = c["config"]["seed"]
        c["witness"]["seeds"] = [seed * 1_000_003 + index for index in range(scale["generations"])]
    _edit(copy / f"{MEMORIZED}.json", more_seeds)
    _fail(verify(_only(copy, MEMORIZED), device="cpu"), "sequential sampling",
          "are not what the stopping rule prescribes on the recorded scores (16 at guidance 1, 16 at guidance 3)")


def test_tamper_inversion_stopped_early(copy):
    """A certificate claiming its inversion levelled off where its own check ratios still fell is caught."""
    def still_falling(c):
        record = c["prediction_error"]
        last = record["inversion_checks"][-1]
        record["inversion_checks"][-2]["ratio"] = last["ratio"] * 2  # the last window halved the error
    _edit(copy / f"{HELD_OUT}.json", still_falling)
    _fail(verify(_only(copy, HELD_OUT), device="cpu"), "inversion schedule", "are not what the schedule prescribes")
    _edit(copy / f"{MEMORIZED}.json", lambda c: c["prediction_error"].update(inversion_steps=1000))
    _fail(verify(_only(copy, MEMORIZED), device="cpu"), "inversion schedule", "is not the last check's step")


def test_tamper_edited_witness(copy):
    path = copy / f"{MEMORIZED}.witness.safetensors"
    new_sha = _rewrite_witness(path, lambda t: t["prompt_embeds"].mul_(0.0))
    _fail(verify(_only(copy, MEMORIZED), device="cpu"), "witness", "vs recorded")
    _edit(copy / f"{MEMORIZED}.json", lambda c: c["witness"].update(sha256=new_sha))  # the hash updated too
    result = verify(_only(copy, MEMORIZED), device="cpu")
    _fail(result, "generations at guidance 3", "regenerated vs")
    _fail(result, "prediction error", "re-measured vs")


def test_tamper_swapped_witness(copy):
    shutil.copy(copy / f"{OTHER}.witness.safetensors", copy / f"{MEMORIZED}.witness.safetensors")
    _fail(verify(_only(copy, MEMORIZED), device="cpu"), "witness", "vs recorded")
    from verifier.images import file_sha256

    swapped_sha = file_sha256(copy / f"{MEMORIZED}.witness.safetensors")
    _edit(copy / f"{MEMORIZED}.json", lambda c: c["witness"].update(sha256=swapped_sha))
    _fail(verify(_only(copy, MEMORIZED), device="cpu"), "witness metadata", "belongs to another image or run")


def test_tamper_another_image(copy):
    _fail(verify(_only(copy, MEMORIZED), images=[FIXTURE / "images" / "once00-astronaut.png"], device="cpu"),
          "image", "no image given with the recorded sha256")
    _edit(copy / f"{MEMORIZED}.json",
          lambda c: c["image"].update(path=str(FIXTURE / "images" / "once00-astronaut.png")))
    _fail(verify(_only(copy, MEMORIZED), device="cpu"), "image", "vs recorded")


def test_tamper_another_model(copy, tmp_path):
    from helpers.tiny_models import build_tiny_pipeline

    other = build_tiny_pipeline(tmp_path / "other-model")
    _fail(verify(_only(copy, MEMORIZED), model=other, device="cpu"), "model", "vs recorded")


def test_tamper_another_config(copy):
    _edit(copy / f"{MEMORIZED}.json", lambda c: c["config"].update(inversion_steps=600))
    _fail(verify(_only(copy, MEMORIZED), device="cpu"), "arithmetic", "the run key does not match")
    _edit(copy / f"{HELD_OUT}.json", lambda c: c["config"].update(existence_max_error_ratio=0.99))
    result = verify(_only(copy, HELD_OUT), device="cpu")
    _fail(result, "verdict", "existence.threshold 0.5 recorded, 0.99 follows")


def test_tamper_fails_the_cli_with_exit_1(copy):
    _edit(copy / f"{MEMORIZED}.json", lambda c: c.update(verdict="rarely_reproduced"))
    result = CliRunner().invoke(main, ["verify", str(_only(copy, MEMORIZED)), "--device", "cpu"])
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and "verdict 'rarely_reproduced' recorded" in result.output


# --- resume trusts nothing it cannot check --------------------------------------------------------

def _resume(out: Path) -> list[str]:
    from verifier.api import certify

    messages: list[str] = []
    files = [FIXTURE / "images" / f"{name}.png" for name in (MEMORIZED, HELD_OUT, OTHER)]
    certify(FIXTURE, files, out, VerifierConfig(device="cpu"), progress=messages.append)
    return messages


@pytest.mark.parametrize(("damage", "reason"), [
    (lambda out: _edit(out / f"{MEMORIZED}.json", lambda c: c.update(verdict="not_memorized")),
     "its verdict does not follow from its own numbers"),
    (lambda out: (out / f"{MEMORIZED}.witness.safetensors").unlink(), "its witness file is missing"),
    (lambda out: shutil.copy(out / f"{OTHER}.witness.safetensors", out / f"{MEMORIZED}.witness.safetensors"),
     "does not have the recorded sha256"),
    (lambda out: _edit(out / f"{MEMORIZED}.json", lambda c: c.update(unknown=1)), "does not match schema"),
    (lambda out: (out / f"{MEMORIZED}.json").write_text("{half"), "cannot be read as JSON"),
])
def test_resume_redoes_a_damaged_certificate(copy, damage, reason):
    damage(copy)
    messages = _resume(copy)
    assert any(m.startswith(f"{MEMORIZED}: redoing:") and reason in m for m in messages), messages
    assert any(m.startswith(f"{MEMORIZED}: memorized") for m in messages)
    assert not any(m.startswith(f"{HELD_OUT}:") for m in messages), "intact certificates are reused"
    assert verify(_only(copy, MEMORIZED), device="cpu").passed


# --- a broken measurement never becomes a clean verdict ---------------------------------------------

def test_nan_weights_give_inconclusive_with_the_reason_and_strict_json(tmp_path):
    """A model whose denoiser outputs NaN: every error is NaN; no verdict may be clean, no NaN in JSON."""
    from safetensors.torch import load_file, save_file

    from verifier.api import certify

    model = tmp_path / "nan-model"
    shutil.copytree(FIXTURE, model, ignore=shutil.ignore_patterns("images", "*.png", "manifest.json"))
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    name = next(n for n in tensors if n.endswith("conv_out.bias"))
    tensors[name] = tensors[name] * float("nan")
    save_file(tensors, weights)
    out = tmp_path / "out"
    certificate = certify(model, [FIXTURE / "images" / f"{MEMORIZED}.png"], out,
                          VerifierConfig(device="cpu", inversion_steps=2, framing_steps=2, generations=2))[0]
    assert certificate["verdict"] == "inconclusive"
    assert "not finite" in certificate["verdict_reason"] or "diverged" in certificate["verdict_reason"]
    text = (out / f"{MEMORIZED}.json").read_text()
    json.loads(text, parse_constant=lambda token: pytest.fail(f"{token} written into JSON"))
    assert certificate["prediction_error"]["ratio"] is None


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_decide_never_turns_a_non_finite_measurement_into_a_clean_verdict(value):
    from verifier.conditions import decide
    from verifier.similarity import SSIM

    for ratio, scores in ((value, np.full(16, 0.9)), (0.2, np.array([value] + [0.9] * 15)), (value, np.zeros(16))):
        decision = decide(error_ratio=ratio, scores_by_scale={3.0: scores}, metric=SSIM(), threshold=0.7,
                          max_error_ratio=0.5, min_rate=0.25, confidence=0.95,
                          looks=[16])
        assert decision.verdict == "inconclusive", decision.reason
        assert "measurement failed" in decision.reason
        assert "not finite" in decision.reason or f"error ratio is {value}" in decision.reason


# --- signatures ------------------------------------------------------------------------------------

def test_signed_certificates_catch_edits_below_the_float_tolerance(tmp_path):
    from verifier.api import certify

    private, public = write_keypair(tmp_path)
    out = tmp_path / "signed"
    # Signatures are about bytes, not framings: the framing search (most of a clean verdict's cost) is left out.
    result = CliRunner().invoke(main, ["certify", str(FIXTURE), str(FIXTURE / "images" / f"{HELD_OUT}.png"),
                                       "--out", str(out), "--device", "cpu", "--sign-key", str(private),
                                       "--no-framing-search"])
    assert result.exit_code == 0, result.output
    assert (out / f"{HELD_OUT}.json.sig").is_file() and (out / "summary.json.sig").is_file()
    assert verify(out, device="cpu", public_key=public).passed
    # An edit within the re-measurement tolerance: only the signature can tell.
    def nudge(c):
        scale = c["conditions"]["probability"]["per_scale"][0]
        scale["scores"][0] = scale["scores"][0] + 0.005
    _edit(out / f"{HELD_OUT}.json", nudge)
    unsigned = verify(out, device="cpu")
    assert all(c.passed for c in unsigned.checks if c.name.startswith("generations")), "inside the tolerance"
    _fail(verify(out, device="cpu", public_key=public), "signature", "does not sign the file's bytes")
    (tmp_path / "other").mkdir()
    _, other_public = write_keypair(tmp_path / "other")
    _fail(verify(out, device="cpu", public_key=other_public), "summary signature", "does not sign")
    (out / f"{HELD_OUT}.json.sig").unlink()
    _fail(verify(out, device="cpu", public_key=public), "signature", ".sig is missing")
    # Without a key, nothing is signed.
    plain = certify(FIXTURE, [FIXTURE / "images" / f"{HELD_OUT}.png"], tmp_path / "plain",
                    VerifierConfig(device="cpu", framing_search=False))
    assert plain and not list((tmp_path / "plain").glob("*.sig"))


def test_a_key_that_is_not_ed25519_is_a_usage_error(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "ec.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    result = CliRunner().invoke(main, ["certify", str(FIXTURE), str(FIXTURE / "images" / f"{HELD_OUT}.png"),
                                       "--out", str(tmp_path / "out"), "--device", "cpu", "--sign-key", str(path)])
    assert result.exit_code == 2 and "verifier signs with Ed25519 keys" in result.output


def test_run_key_covers_versions_and_weights_by_hash_not_path():
    from verifier.certificate.store import run_key

    at_a = VerifierConfig(similarity="lpips", lpips_weights="/a/alexnet.pth").fingerprint_dict()
    at_b = VerifierConfig(similarity="lpips", lpips_weights="/b/alexnet.pth").fingerprint_dict()
    assert at_a == at_b, "moving the weights file must not invalidate finished certificates"
    image, model = "a" * 64, "sha256:" + "b" * 64
    base = run_key(model, at_a, image, "0.1.0", "c" * 64)
    assert base == run_key(model, at_b, image, "0.1.0", "c" * 64)
    assert base != run_key(model, at_a, image, "0.1.0", "d" * 64), "other weights bytes, other key"
    assert base != run_key(model, at_a, image, "0.2.0", "c" * 64), "another verifier version, other key"


def test_tamper_a_stronger_claim_without_its_seeds(copy):
    """A not_memorized certificate whose claim is raised to a target its 16 seeds per scale never reached is caught:
    the stopping rule asks for more seeds than were recorded (replayed as far as they go: 32), and the recorded
    numbers no longer give not_memorized."""
    def stronger(c):
        c["config"]["replication_bound"] = 0.1
        c["conditions"]["probability"]["replication_bound"] = 0.1
    _edit(copy / f"{HELD_OUT}.json", stronger)
    result = verify(_only(copy, HELD_OUT), device="cpu")
    _fail(result, "sequential sampling", "(32 at guidance 1, 32 at guidance 3)")
    _fail(result, "verdict", "inconclusive")


# --- verify compares whole records: every derived field, not a hand-picked list ------------------------------

def _set(path: str, value):
    """An edit of one field by its dotted path (``a.b[0].c``)."""
    import re

    keys = [int(k) if k.isdigit() else k for k in re.findall(r"[^.\[\]]+", path)]

    def change(certificate):
        target = certificate
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value(target[keys[-1]]) if callable(value) else value
    return change


DERIVED_FIELDS = {  # field -> (edit, the check that must name it)
    "verdict_reason": (_set("verdict_reason", lambda reason: reason.replace("the witness", "the witness strongly")), "verdict"),
    "conditions.existence.margin": (_set("conditions.existence.margin", lambda v: v + 0.1), "verdict"),
    "conditions.similarity.margin": (_set("conditions.similarity.margin", lambda v: v - 0.05), "verdict"),
    "conditions.probability.best_guidance_scale": (_set("conditions.probability.best_guidance_scale", 1.0), "verdict"),
    "conditions.probability.rate": (_set("conditions.probability.rate", 0.5), "verdict"),
    "conditions.probability.upper_bound": (_set("conditions.probability.upper_bound", 0.9), "verdict"),
    "conditions.probability.look_confidences": (
        _set("conditions.probability.look_confidences", lambda v: [0.99] + v[1:]), "verdict"),
    "conditions.probability.per_scale[1].confidence": (
        _set("conditions.probability.per_scale[1].confidence", 0.999), "verdict"),
    "conditions.existence.threshold_source": (
        _set("conditions.existence.threshold_source", "calibration 0123456789ab on 300 non-members"), "verdict"),
    "conditions.similarity.threshold_source": (
        _set("conditions.similarity.threshold_source", "a stricter metric"), "verdict"),
    "classification.reason": (_set("classification.reason", "the owner published it"), "prompts and category"),
}


@pytest.fixture(scope="module")
def unrelated_image(tmp_path_factory):
    """An image no certificate names: given to ``verify``, it skips the re-measurement (no recorded image is at
    hand), so only the arithmetic stage can catch an edit."""
    from PIL import Image

    path = tmp_path_factory.mktemp("unrelated") / "grey.png"
    Image.new("RGB", (16, 16), (128, 128, 128)).save(path)
    return path


@pytest.mark.parametrize("field", sorted(DERIVED_FIELDS))
def test_tamper_any_derived_field_is_named(copy, unrelated_image, field):
    change, check = DERIVED_FIELDS[field]
    _edit(copy / f"{MEMORIZED}.json", change)
    result = verify(_only(copy, MEMORIZED), images=[unrelated_image], device="cpu")
    _fail(result, check, field)
    assert {c.name for c in result.checks if not c.passed} == {check, "image", "re-measurement"}


def test_whitespace_and_key_order_do_not_matter(copy):
    path = copy / f"{MEMORIZED}.json"

    def reorder(value):
        if isinstance(value, dict):
            return {key: reorder(value[key]) for key in reversed(list(value))}
        return [reorder(item) for item in value] if isinstance(value, list) else value
    path.write_text(json.dumps(reorder(json.loads(path.read_text())), indent=7, separators=(" ,  ", " :\t")))
    result = verify(_only(copy, MEMORIZED), device="cpu")
    assert result.passed, [(c.name, c.detail) for c in result.checks if not c.passed]


def test_differences_names_every_field_and_tolerates_float_noise():
    from verifier.verify import differences

    recorded = {"a": 1.0, "b": {"c": [1, 2.0, "x"], "d": None}, "e": True}
    assert differences(recorded, {"a": 1.0 + 1e-12, "b": {"c": [1, 2.0, "x"], "d": None}, "e": True}) == []
    found = differences(recorded, {"a": 1.1, "b": {"c": [1, 2.0, "y"], "f": 0}, "e": 1})
    assert found == ["a 1.0 recorded, 1.1 follows", "b.c[2] 'x' recorded, 'y' follows",
                     "b.d is recorded but does not follow", "b.f follows but is not recorded",
                     "e True recorded, 1 follows"]
    assert differences([1, 2], [1]) == ["the record has 2 entries recorded, 1 follow"]
