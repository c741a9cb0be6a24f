"""``certify --baseline``: certify each image under a fine-tune and under its baseline, and say which is responsible.

The differential run folder ``OUT`` holds two ordinary run folders and the records that join them::

    OUT/fine-tune/      the run under the model under test (the base with its --lora adapters)
    OUT/baseline/       the same images, config and seeds under the baseline
    OUT/differential/   <id>.json per image (verifier.differential) and summary.json

The recipe:

1. Check the inputs, load the model under test once (and a ``--baseline MODEL`` other than its base, if given).
2. Certify every image under the fine-tune (``api.certify``: resumes, sharded or not, as any run).
3. Switch the adapters off (``ModelAdapter.adapters_disabled``: the same weights, no second load) and certify every
   image under the baseline, with the same config, so the same seeds and grid.
4. Under the baseline, sample each fine-tune witness at the fine-tune's seeds and guidance scales (the cross
   sampling), scored as the fine-tune's generations were.
5. Write each image's differential record (``verifier.differential.differential_record``) and the summary, with
   the cost of each half.

Each half is a run folder ``verify`` checks whole; ``verify OUT`` checks both and re-derives and re-measures every
differential record (``verify_differential``).
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
import json
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from safetensors.torch import load_file

from verifier.alignment import FramedSimilarity
from verifier.api import certify
from verifier.certificate.signing import load_private_key, load_public_key, sign_file, signature_holds
from verifier.certificate.store import atomic_write_json, check_output_path, prepare_output_folder
from verifier.config import VerifierConfig
from verifier.differential import CROSS_MEASURE, SCHEMA, DifferentialError, category_counts, differential_record
from verifier.images import collect_images, file_sha256
from verifier.models import Conditioning, ModelAdapter, load_model
from verifier.models.lora import LoraSpec
from verifier.models.textual_inversion import EmbeddingSpec
from verifier.registry import SIMILARITY_METRICS

FINE_TUNE, BASELINE, DIFFERENTIAL = "fine-tune", "baseline", "differential"
SUMMARY = "summary.json"
SAME_BASE = "the base of the model under test, its adapters switched off (diffusers' disable_lora)"


def is_differential_folder(folder: Path) -> bool:
    return (Path(folder) / DIFFERENTIAL / SUMMARY).is_file()


def certify_differential(model: str | Path, images: Sequence[str | Path], out: str | Path,
                         config: VerifierConfig | None = None, *, loras: Sequence[LoraSpec] = (),
                         embeddings: Sequence[EmbeddingSpec] = (), baseline: str | Path | None = None, allow_pickle: bool = False,
                         model_config: str | Path | None = None, sign_key: str | Path | None = None,
                         progress: Callable[[str], None] | None = None,
                         policy=None) -> tuple[list[dict], list[dict]]:
    """Certify ``images`` under ``model`` with ``loras`` and under the baseline (``baseline``, else the same base
    without the adapters); return each image's differential record (also written to ``out/differential``) and its
    fine-tune certificate, in input order."""
    config = config or VerifierConfig()
    say = progress or (lambda message: None)
    out = Path(out)
    started = time.time()
    # 1. Inputs first, then the model under test, then (if another) the baseline.
    if baseline is None and not loras:
        raise DifferentialError("--baseline without a MODEL needs --lora adapters: the baseline is then the same "
                                "base without them; give --lora PATH[:SCALE] or --baseline MODEL")
    if baseline is None and embeddings:  # diffusers switches LoRA layers off, not tokens
        raise DifferentialError("--baseline without a MODEL switches LoRA adapters off, not textual-inversion "
                                "embeddings; name the baseline: --baseline MODEL")
    signer = load_private_key(sign_key) if sign_key is not None else None
    check_output_path(out)
    paths = {image.id: image.path for image in collect_images(list(images), exclude=out)}
    prepare_output_folder(out, clean=False)
    loaded = load_model(model, device=config.device, dtype=config.dtype, allow_pickle=allow_pickle,
                        model_config=model_config, loras=loras, embeddings=embeddings)
    other = None if baseline is None else load_model(baseline, device=config.device, dtype=config.dtype,
                                                     allow_pickle=allow_pickle, model_config=model_config)
    if other is not None and other.family != loaded.family:
        raise DifferentialError(f"--baseline {str(baseline)!r} is a {other.family} model and the model under test "
                                f"a {loaded.family} one: the fine-tune's witness cannot be sampled under it")
    common = dict(sign_key=sign_key, policy=policy)
    # 2. The fine-tune half.
    say(f"the fine-tune half: {out / FINE_TUNE}")
    fine_tune = certify(loaded, list(images), out / FINE_TUNE, config, progress=say, **common)
    # 3-4. The baseline half and the cross sampling, with the adapters off (or on the other model).
    with (contextlib.nullcontext(other) if other is not None else loaded.adapters_disabled()) as base:
        say(f"the baseline half: {out / BASELINE}")
        baseline_certificates = certify(base, list(images), out / BASELINE, config, progress=say, **common)
        description = {"source": str(baseline) if other is not None else base.source,
                       "fingerprint": base.fingerprint,
                       "how": "--baseline MODEL" if other is not None else SAME_BASE}
        # 5. One record per image: reused where it joins the same two certificates, else measured again.
        records = []
        for fine, based in zip(fine_tune, baseline_certificates):
            image_id = fine["image"]["id"]
            references = [(f"{half}/{image_id}.json", file_sha256(out / half / f"{image_id}.json"))
                          for half in (FINE_TUNE, BASELINE)]
            path = out / DIFFERENTIAL / f"{image_id}.json"
            record = _reusable(path, references)
            if record is None:
                say(f"{image_id}: sampling the fine-tune's witness under the baseline")
                cross = cross_sample(base, fine, out / FINE_TUNE, paths[image_id])
                record = differential_record(fine["image"], fine, references[0], based, references[1], cross,
                                             description)
                atomic_write_json(path, record)
                if signer is not None:
                    sign_file(signer, path)
            say(f"{image_id}: {record['finding']['category']} ({record['finding']['reason']})")
            records.append(record)
    atomic_write_json(out / DIFFERENTIAL / SUMMARY,
                      differential_summary(records, fine_tune, baseline_certificates, description, policy,
                                           time.time() - started))
    if signer is not None:
        sign_file(signer, out / DIFFERENTIAL / SUMMARY)
    return records, fine_tune


def _reusable(path: Path, references: list[tuple[str, str]]) -> dict | None:
    """A record already written for these very two certificates (a resumed run), else None."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    joined = [(record.get(half, {}).get("certificate"), record.get(half, {}).get("sha256"))
              for half in ("fine_tune", "baseline")]
    return record if record.get("schema") == SCHEMA and joined == references else None


def cross_sample(base: ModelAdapter, fine_tune: dict, folder: Path, image_path: Path) -> dict:
    """The fine-tune's witness sampled under ``base`` at each of its guidance scales and seeds, scored against the
    target its own generations were scored against (verify's ``witness_image``) with its metric."""
    from verifier.verify import _config_for_metric, witness_image

    record, config = fine_tune["witness"], fine_tune["config"]
    tensors = {name: tensor.to(torch.float32) for name, tensor in load_file(str(folder / record["file"])).items()}
    witness = Conditioning.from_tensors({name: tensors[name] for name in record["tensors"]})
    negative = base.empty_conditioning().to("cpu")  # the baseline's own empty prompt, as its pipeline encodes ""
    metric = FramedSimilarity(SIMILARITY_METRICS.get(config["similarity"])(_config_for_metric(config)))
    _, target = witness_image(fine_tune, image_path)
    rows, evaluations = [], 0
    for scale_record in fine_tune["conditions"]["probability"]["per_scale"]:
        scale = scale_record["guidance_scale"]
        seeds = record["seeds"][:len(scale_record["scores"])]
        images = base.generate(witness.to(base.device), negative.to(base.device), seeds, scale,
                               record["num_inference_steps"], record["height"])[0]
        scores = metric(images, target)
        rows.append({"guidance_scale": scale, "seeds": seeds,
                     "scores": [None if not np.isfinite(value) else float(value) for value in scores]})
        evaluations += len(seeds) * record["num_inference_steps"] * base.cfg_rows(scale)
    return {"measure": CROSS_MEASURE, "per_scale": rows, "denoiser_evaluations": evaluations}


def certificate_evaluations(certificate: dict) -> int:
    """Every denoiser evaluation one certificate records spending: its witness, control, part control, prompts, and
    the framing and aligned searches with their controls."""
    budget = certificate["budget"]
    total = budget["denoiser_evaluations_spent"]["total"] + (budget["prompt_denoiser_evaluations"] or 0)
    for key in ("control_denoiser_evaluations", "part_control_denoiser_evaluations"):
        total += (budget[key] or {}).get("total", 0)
    for key in ("framing_denoiser_evaluations", "aligned_denoiser_evaluations"):
        for part in (budget[key] or {}).values():
            total += (part or {}).get("total", 0)
    return total


def differential_summary(records: list[dict], fine_tune: list[dict], baseline: list[dict], description: dict,
                         policy, seconds: float) -> dict:
    """The differential run at a glance: its categories, each image's, the gate where a policy judges them, and the
    cost of each half in denoiser evaluations."""
    gates = [None if policy is None else policy.judge_differential(record) for record in records]
    cost = {"fine_tune": sum(map(certificate_evaluations, fine_tune)),
            "baseline": sum(map(certificate_evaluations, baseline)),
            "cross": sum(record["cross"]["denoiser_evaluations"] for record in records)}
    return {"schema": dict(SCHEMA) | {"file": "summary"},
            "fine_tune_model": fine_tune[0]["model"]["fingerprint"] if fine_tune else None,
            "baseline_model": description, "counts": category_counts(records),
            "images": [{"id": record["image"]["id"], "category": record["finding"]["category"],
                        "fine_tune": record["fine_tune"]["verdict"], "baseline": record["baseline"]["verdict"],
                        "gate": gate} for record, gate in zip(records, gates)],
            "policy": None if policy is None else policy.record(),
            "gate_failed": None if policy is None else any(gate["fails"] for gate in gates),
            "denoiser_evaluations": cost | {"total": sum(cost.values())},
            "seconds": round(seconds, 2)}


def verify_differential(target: str | Path, *, images: list[str | Path] | None = None, device: str = "auto",
                        all_generations: bool = False, allow_pickle: bool = False,
                        model_config: str | Path | None = None, public_key: str | Path | None = None,
                        progress: Callable[[str], None] | None = None, **fine_tune_model):
    """Re-check a differential run folder: each half as ``verify`` checks a run folder (``fine_tune_model``: its
    ``model`` / ``loras`` overrides, for the fine-tune half), then every differential record: the two certificates it
    joins (by sha256), the whole record re-derived from them and its cross scores, the cross sampling regenerated
    under the baseline and re-scored, and the summary rebuilt from the records."""
    from verifier.policy import Policy
    from verifier.verify import TOLERANCES, VerifyResult, described, differences, verify

    say = progress or (lambda message: None)
    target = Path(target)
    result = VerifyResult()
    common = dict(images=images, device=device, all_generations=all_generations, allow_pickle=allow_pickle,
                  public_key=public_key, progress=say)
    # 1. Each half, whole.
    for half, overrides in ((FINE_TUNE, fine_tune_model), (BASELINE, {})):
        say(f"the {half} half: {target / half}")
        checked = verify(target / half, model_config=model_config if half == FINE_TUNE else None, **common,
                         **overrides)
        result.checks += [replace(check, image_id=f"{half}/{check.image_id}") for check in checked.checks]
    by_hash = {image.sha256: image.path for image in collect_images(list(images))} if images else {}
    # 2. Every record.
    records, halves, base = [], {FINE_TUNE: [], BASELINE: []}, None
    for path in sorted((target / DIFFERENTIAL).glob("*.json")):
        if path.name == SUMMARY:
            continue
        name = f"{DIFFERENTIAL}/{path.stem}"
        if public_key is not None:
            result.add(name, "signature", *signature_holds(load_public_key(public_key), path))
        record = json.loads(path.read_text())
        if not result.add(name, "differential schema", record.get("schema") == SCHEMA,
                          f"schema {record.get('schema')} (this verifier reads {SCHEMA})"):
            continue
        certificates = {}
        for half, key in ((FINE_TUNE, "fine_tune"), (BASELINE, "baseline")):
            file = target / record[key]["certificate"]
            actual = file_sha256(file) if file.is_file() else "missing"
            result.add(name, f"{half} certificate", actual == record[key]["sha256"],
                       f"{record[key]['certificate']}: sha256 {actual[:12]} vs recorded {record[key]['sha256'][:12]}")
            if file.is_file():  # a record joined to another certificate than its own also fails to follow from it
                certificates[half] = json.loads(file.read_text())
        if len(certificates) < 2:
            records.append(record)  # nothing to derive it from (failed above); the summary is checked against it
            continue
        fine, based = certificates[FINE_TUNE], certificates[BASELINE]
        halves[FINE_TUNE].append(fine)
        halves[BASELINE].append(based)
        recorded_cross = {key: value for key, value in record["cross"].items() if key != "counts"}
        derived = differential_record(
            fine["image"], fine, (record["fine_tune"]["certificate"], record["fine_tune"]["sha256"]), based,
            (record["baseline"]["certificate"], record["baseline"]["sha256"]), recorded_cross,
            record["baseline_model"])
        found = differences(record, derived)
        result.add(name, "differential finding", not found,
                   f"{record['finding']['category']}: the record follows from its two certificates and cross scores"
                   if not found else f"differs from what its certificates and scores give: {described(found)}")
        result.add(name, "baseline model", record["baseline_model"]["fingerprint"] == based["model"]["fingerprint"],
                   "the baseline's fingerprint is its certificate's")
        # 3. The cross sampling, regenerated under the baseline (its recorded source; no adapters).
        image_path = by_hash.get(fine["image"]["sha256"], Path(fine["image"]["path"]))
        if not image_path.is_file() or file_sha256(image_path) != fine["image"]["sha256"]:
            result.add(name, "cross generations", False, "skipped: the image is not at its recorded path; pass --images")
        else:
            if base is None:
                say(f"loading the baseline {based['model']['source']}")
                base = load_model(based["model"]["source"], device=device, allow_pickle=allow_pickle)
            if base.fingerprint != based["model"]["fingerprint"]:
                result.add(name, "cross generations", False, "skipped: the baseline model is not the recorded one")
            else:
                say(f"{path.stem}: regenerating the fine-tune's witness under the baseline")
                again = cross_sample(base, fine, target / FINE_TUNE, image_path)
                largest, problems = 0.0, []
                for before, after in zip(record["cross"]["per_scale"], again["per_scale"]):
                    for seed, old, new in zip(before["seeds"], before["scores"], after["scores"]):
                        if old is None or new is None:  # a NaN score: both or neither
                            gap = 0.0 if old is new else np.inf
                        else:
                            gap = abs(old - new)
                        largest = max(largest, gap)
                        if gap > TOLERANCES["similarity_abs"]:
                            problems.append(f"guidance {before['guidance_scale']:g} seed {seed}: {new} vs {old}")
                result.add(name, "cross generations", not problems,
                           "; ".join(problems[:3]) or f"every cross generation re-scored alike (largest difference "
                           f"{largest:.2g}, tolerance {TOLERANCES['similarity_abs']:g})")
        records.append(derived)  # the summary must follow from what the certificates give, not from a record
    # 4. The summary, rebuilt from the records as they follow from their certificates.
    summary = json.loads((target / DIFFERENTIAL / SUMMARY).read_text())
    listed = {entry.get("id"): position for position, entry in enumerate(summary.get("images", []))}
    records.sort(key=lambda record: listed.get(record["image"]["id"], len(listed)))  # the run's input order
    policy = None if summary.get("policy") is None else Policy.from_record(summary["policy"])
    rebuilt = differential_summary(records, halves[FINE_TUNE], halves[BASELINE], summary.get("baseline_model"),
                                   policy, summary.get("seconds", 0))
    if public_key is not None:
        result.add("(differential)", "summary signature",
                   *signature_holds(load_public_key(public_key), target / DIFFERENTIAL / SUMMARY))
    found = differences(summary, rebuilt)
    result.add("(differential)", "summary", not found,
               f"{summary['counts']} follows from the {len(records)} records" if not found else
               f"differs from what the records give: {described(found)}")
    return result
