"""Re-check certificates as a third party would: ``verify(target, model=..., images=...)``.

The recipe, per certificate:

0. with a public key, check the Ed25519 signature of the file's exact bytes;
1. read it against the declared schema;
2. re-hash the image (from ``--images`` by sha256, else the recorded path) and the model's files;
3. check the witness file's sha256 and that its negative is the model's own empty prompt;
4. check the certificate's internal arithmetic (means, ratio, rates, the run key), that its seeds
   per guidance scale are what the sequential stopping rule prescribes on its recorded scores, that
   its inversion was checked and stopped where its schedule prescribes on the recorded check
   ratios, that its verdict follows from its own numbers under its config's thresholds, and that
   every prompt of the owner's context was tested and the category follows from the recorded scores;
5. regenerate, with the stock pipeline, every generation the verdict rests on (each replicating
   seed and the closest one; every seed with ``all_generations``; and where the never-seen twin
   control ran, the control's replicating seeds or its closest one) and every replicating generation
   of the owner's prompts, re-measure their similarity, and compare with the recorded scores;
6. re-measure the prediction error under the witness and under the empty prompt on the fixed grid
   and compare with the recorded curves.

Float tolerances (:data:`TOLERANCES`): on the machine that wrote a certificate the numbers come
back equal to about 1e-6; across CPU and GPU, or other library versions, float arithmetic differs
in the last bits and DDIM sampling amplifies it, so regenerated similarities are compared within
0.02 (absolute) and prediction errors within 2% (relative). A regenerated generation that lands on
the other side of the similarity threshold fails the check whatever the tolerance.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from verifier.alignment import FramedSimilarity, Framing, OwnerImage, latent_weights, pixels_of
from verifier.certificate.schema import CertificateFormatError, read_certificate
from verifier.certificate.sheet import sheet_tile, thumbnail
from verifier.certificate.signing import load_public_key, signature_holds
from verifier.certificate.store import SUMMARY_FILE, run_key, witness_metadata
from verifier.conditions import redecide, replayed_generations
from verifier.config import AUTOCAST
from verifier.context import ImageContext
from verifier.control import never_seen_twin
from verifier.error import prediction_error
from verifier.framing import (
    ALIGNED_SEARCH, BOUNDS, aligned_search_runs, framing_record, reproduced_nothing, witness_is_framed, witness_search,
)
from verifier.images import collect_images, file_sha256, prepare_image
from verifier.invert import InversionSchedule
from verifier.memory import row_budget
from verifier.models import Conditioning, autocast_dtype, load_model
from verifier.models.lora import LoraSpec, adapted_fingerprint
from verifier.models.textual_inversion import EmbeddingSpec
from verifier.prompts import replayed_prompts
from verifier.readable import decoded_prompts, statement as readable_statement
from verifier.regions import WindowSSIM, part_record
from verifier.run_folder import certificate_files, check_run_folder, recorded_config, recorded_config_values
from verifier.registry import SIMILARITY_METRICS
from verifier.sampling import seed_sequence
from verifier.screen import candidate_framings, chosen
from verifier.similarity import best_index, replicated
from verifier.taxonomy import REPRODUCED_VERDICTS, classify


TOLERANCES = {"similarity_abs": 0.02, "error_rel": 0.02, "arithmetic_abs": 1e-9, "negative_abs": 1e-4}


@dataclass
class Check:
    """One check on one certificate: what was compared, whether it held, and what differs when not."""
    image_id: str
    name: str
    passed: bool
    detail: str


@dataclass
class VerifyResult:
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(check.passed for check in self.checks)

    def add(self, image_id: str, name: str, passed: bool, detail: str) -> bool:
        self.checks.append(Check(image_id, name, bool(passed), detail))
        return bool(passed)


def _index_images(arguments: list[str | Path]) -> dict[str, Path]:
    """sha256 -> file for every image among ``arguments`` (files, folders, manifests)."""
    return {image.sha256: image.path for image in collect_images(list(arguments))}


def verify(target: str | Path, model: str | Path | None = None, images: list[str | Path] | None = None, *,
           device: str = "auto", all_generations: bool = False, allow_pickle: bool = False,
           model_config: str | Path | None = None, loras: Sequence[LoraSpec] | None = None,
           embeddings: Sequence[EmbeddingSpec] | None = None,
           calibration: str | Path | None = None, public_key: str | Path | None = None,
           progress: Callable[[str], None] | None = None) -> VerifyResult:
    """Re-check every certificate in ``target`` (a run folder or one certificate file).

    ``model`` defaults to each certificate's recorded source, ``loras`` and ``embeddings`` to its recorded LoRA
    adapters and textual-inversion embeddings;
    ``images`` (files, folders, manifests) are matched to certificates by sha256, else the recorded path is used.
    """
    say = progress or (lambda message: None)
    target = Path(target)
    result = VerifyResult()
    key = None
    if public_key is not None:
        key = load_public_key(public_key)
    by_hash = _index_images(images) if images else {}
    loaded_models: dict[str, object] = {}
    for path in certificate_files(target):
        # 0. Signature (when a public key is given): over the file's exact bytes.
        if key is not None:
            result.add(path.stem, "signature", *signature_holds(key, path))
        # 1. Schema.
        try:
            certificate = read_certificate(path)
        except CertificateFormatError as error:
            result.add(path.stem, "schema", False, str(error))
            continue
        image_id = certificate["image"]["id"]
        result.add(image_id, "schema", True, f"valid against schema v{certificate['schema']['version']}")
        folder = path.parent
        # 2. Image and model.
        image_path = _check_image(result, certificate, by_hash, bool(images))
        source = str(model) if model is not None else certificate["model"]["source"]
        specs = tuple(loras) if loras is not None else _recorded_loras(certificate)
        tokens = tuple(embeddings) if embeddings is not None else _recorded_embeddings(certificate)
        missing = [(spec.path, option, given is None)
                   for option, given, wanted in (("--lora PATH[:SCALE]", loras, specs),
                                                 ("--textual-inversion PATH[:TOKEN]", embeddings, tokens))
                   for spec in wanted if not spec.path.is_file()]
        if missing:
            path, option, recorded = missing[0]
            result.add(image_id, "model", False, f"the {'LoRA adapter' if option.startswith('--lora') else 'embedding'}"
                       f" {str(path)!r} " + ("the certificate records " if recorded else "") + f"is missing; pass "
                       f"{option} with a copy of each adapter the certificate records, in order")
            loaded, model_ok = None, False
        else:
            model_key = (source, tuple(spec.argument() for spec in specs), tuple(spec.argument() for spec in tokens))
            if model_key not in loaded_models:
                say(f"loading {source}" + "".join(f" + LoRA {spec.argument()}" for spec in specs)
                    + "".join(f" + embedding {spec.argument()}" for spec in tokens))
                loaded_models[model_key] = load_model(source, device=device, allow_pickle=allow_pickle,
                                                      model_config=model_config, loras=specs, embeddings=tokens)
                loaded_models[model_key].rows_per_call = row_budget(loaded_models[model_key], None).rows
            loaded = loaded_models[model_key]
            model_ok = result.add(image_id, "model", loaded.fingerprint == certificate["model"]["fingerprint"],
                                  f"fingerprint {_short(loaded.fingerprint)} vs recorded "
                                  f"{_short(certificate['model']['fingerprint'])}" + _adapter_differences(
                                      loaded.adapters, certificate["model"]["adapters"]))
        _check_model_record(result, certificate)
        # 3. Witness.
        witness = _check_witness(result, certificate, folder, loaded) if loaded is not None else None
        _check_sheet_file(result, certificate, folder)
        # 4. Internal arithmetic and the verdict.
        _check_arithmetic(result, certificate)
        _check_calibration(result, certificate, calibration)
        _check_verdict(result, certificate)
        _check_prompts_and_category(result, certificate)
        _check_part(result, certificate)
        _check_framing(result, certificate)
        # 5-6. Regenerate and re-measure (only meaningful on the same model, image and witness).
        if witness is None or image_path is None or not model_ok:
            result.add(image_id, "re-measurement", False, "skipped: it needs the recorded model, image and witness")
            continue
        say(f"{image_id}: regenerating and re-measuring")
        loaded.autocast = _recorded_autocast(certificate)
        _check_generations(result, certificate, loaded, witness, image_path, folder, all_generations)
        _check_error(result, certificate, loaded, witness, image_path)
        _check_decoding(result, certificate, loaded, witness)
    # 7. The folder as one unit: its summary, ids and run record (verifier.run_folder).
    if target.is_dir():
        for name, passed, detail in check_run_folder(target):
            result.add("(run)", name, passed, detail)
        if key is not None:
            result.add("(run)", "summary signature", *signature_holds(key, target / SUMMARY_FILE))
    return result


def _short(fingerprint: str) -> str:
    return fingerprint.replace("sha256:", "")[:12]


def _recorded_loras(certificate: dict) -> tuple[LoraSpec, ...]:
    """The LoRA adapters a certificate records, as ``--lora`` would give them (file path, scale)."""
    return tuple(LoraSpec(Path(adapter["path"]), adapter["scale"]) for adapter in certificate["model"]["adapters"]
                 if adapter["kind"] == "lora")


def _recorded_embeddings(certificate: dict) -> tuple[EmbeddingSpec, ...]:
    """The textual-inversion embeddings a certificate records, as ``--textual-inversion`` would give them."""
    return tuple(EmbeddingSpec(Path(adapter["path"]), adapter["token"]) for adapter in certificate["model"]["adapters"]
                 if adapter["kind"] == "textual_inversion")


def _adapter_differences(loaded: list[dict], recorded: list[dict]) -> str:
    """Where the loaded adapters differ from the recorded ones (file sha256, scale, count), for the model check."""
    if len(loaded) != len(recorded):
        return f"; {len(loaded)} adapter(s) loaded, {len(recorded)} recorded"
    text = ""
    for index, (mine, theirs) in enumerate(zip(loaded, recorded)):
        fields = [f"{name} {mine.get(name)!r} vs recorded {theirs.get(name)!r}" for name in ("kind", "sha256", "scale",
                                                                                          "token")
                  if mine.get(name) != theirs.get(name)]
        if fields:
            text += f"; adapter {index} ({Path(theirs['path']).name}): " + ", ".join(fields)
    return text


def _check_model_record(result: VerifyResult, certificate: dict) -> None:
    """The recorded fingerprint is the recorded base's with the recorded adapters (an edited scale or sha256 shows)."""
    model = certificate["model"]
    expected = adapted_fingerprint(model["base_fingerprint"], model["adapters"])
    result.add(certificate["image"]["id"], "model record", expected == model["fingerprint"],
               f"fingerprint = base {_short(model['base_fingerprint'])} with {len(model['adapters'])} adapter(s)"
               if expected == model["fingerprint"] else
               f"recorded fingerprint {_short(model['fingerprint'])} is not the base's with the recorded adapters "
               f"({_short(expected)})")


def _check_image(result: VerifyResult, certificate: dict, by_hash: dict[str, Path], images_given: bool) -> Path | None:
    image_id, wanted = certificate["image"]["id"], certificate["image"]["sha256"]
    if images_given:
        found = by_hash.get(wanted)
        result.add(image_id, "image", found is not None,
                   f"{found} has the recorded sha256" if found else
                   f"no image given with the recorded sha256 {wanted[:12]}")
        return found
    path = Path(certificate["image"]["path"])
    if not path.is_file():
        result.add(image_id, "image", False, f"recorded path {str(path)!r} is missing; pass --images")
        return None
    actual = file_sha256(path)
    result.add(image_id, "image", actual == wanted, f"sha256 {actual[:12]} vs recorded {wanted[:12]} ({path})")
    return path if actual == wanted else None


def _recorded_autocast(certificate: dict):
    """The precision the certificate's numbers were measured in, replayed by the re-measurement (a value that is
    not a valid one is named by the arithmetic check; the replay then runs without autocast)."""
    name = certificate.get("config", {}).get("autocast", "off")
    return autocast_dtype(name) if name in AUTOCAST else None


def _check_witness(result: VerifyResult, certificate: dict, folder: Path, loaded) -> dict | None:
    image_id, record = certificate["image"]["id"], certificate["witness"]
    path = folder / record["file"]
    if not path.is_file():
        result.add(image_id, "witness", False, f"{record['file']} is missing")
        return None
    actual = file_sha256(path)
    if not result.add(image_id, "witness", actual == record["sha256"],
                      f"sha256 {actual[:12]} vs recorded {record['sha256'][:12]}"):
        return None
    with safe_open(str(path), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        metadata = witness_metadata(handle.metadata())
    recorded_image, recorded_seeds = metadata.get("image_sha256"), metadata.get("seeds")
    result.add(image_id, "witness metadata",
               recorded_image == certificate["image"]["sha256"] and recorded_seeds == record["seeds"],
               "the witness names this image's sha256 and the certificate's seeds" if recorded_image ==
               certificate["image"]["sha256"] and recorded_seeds == record["seeds"] else
               "the witness file belongs to another image or run")
    missing = [name for name in record["tensors"] + record["negative_tensors"] if name not in tensors]
    if not result.add(image_id, "witness tensors", not missing,
                      f"the file lacks {', '.join(missing)}" if missing else
                      f"the file holds {', '.join(record['tensors'] + record['negative_tensors'])}"):
        return None
    empty = loaded.empty_conditioning().to("cpu").tensors()
    _, negative = _conditionings(tensors, record)
    close = set(negative.tensors()) == set(empty) and all(
        tensor.shape == empty[name].shape and float((tensor - empty[name]).abs().max()) <= TOLERANCES["negative_abs"]
        for name, tensor in negative.tensors().items())
    result.add(image_id, "witness negative", close,
               "the negative is the model's encoded empty prompt" if close else
               "the negative is not this model's encoded empty prompt")
    wanted_kwargs = {key: list(value) for key, value in loaded.generation_kwargs(record["height"],
                                                                                  record["width"]).items()}
    result.add(image_id, "pipeline keywords", record["pipeline_kwargs"] == wanted_kwargs,
               f"recorded {record['pipeline_kwargs']} vs this model's {wanted_kwargs}")
    control = certificate["control_witness"]
    if control is not None:
        control_path = folder / control["file"]
        control_sha = file_sha256(control_path) if control_path.is_file() else "missing"
        result.add(image_id, "control witness", control_sha == control["sha256"],
                   f"sha256 {control_sha[:12]} vs recorded {control['sha256'][:12]}")
    return {name: tensor.to(torch.float32) for name, tensor in tensors.items()}


def _conditionings(tensors: dict, record: dict):
    """(witness, negative) conditionings from a witness file's tensors, as the certificate names them."""
    witness = Conditioning.from_tensors({name: tensors[name] for name in record["tensors"]})
    negative = Conditioning.from_tensors({name.removeprefix("negative_"): tensors[name]
                                          for name in record["negative_tensors"]})
    return witness, negative


def _close(a: float | None, b: float | None, tolerance: float) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= tolerance


def _check_arithmetic(result: VerifyResult, certificate: dict) -> None:
    """Numbers that follow from other recorded numbers, and the run key, must agree exactly."""
    image_id = certificate["image"]["id"]
    error = certificate["prediction_error"]
    problems = []
    inverted, empty = error["inverted"], error["empty"]
    if None not in inverted and None not in empty and inverted and empty:
        mean_inverted, mean_empty = sum(inverted) / len(inverted), sum(empty) / len(empty)
        tolerance = 1e-6 * max(1.0, abs(mean_inverted), abs(mean_empty))
        if not _close(error["inverted_mean"], mean_inverted, tolerance) or not _close(error["empty_mean"], mean_empty,
                                                                                      tolerance):
            problems.append("the recorded means are not the means of the recorded curves")
        elif mean_empty > 0 and not _close(error["ratio"], mean_inverted / mean_empty, 1e-6):
            problems.append(f"the error ratio {error['ratio']} is not inverted_mean / empty_mean "
                            f"({mean_inverted / mean_empty:.6f})")
    if certificate["conditions"]["existence"]["value"] != error["ratio"]:
        problems.append("the existence value is not the recorded error ratio")
    config, failure = recorded_config(certificate)
    if failure is not None:
        problems.append(f"the recorded config is not a valid config: {failure}")
    if config is not None:
        weights = certificate["conditions"]["similarity"]["weights"]
        weights_sha = weights["sha256"] if weights else None
        config_values = recorded_config_values(certificate, config)
        expected = run_key(certificate["model"]["fingerprint"], config_values, certificate["image"]["sha256"],
                           certificate["environment"].get("verifier"), weights_sha, certificate["context"])
        if expected != certificate["run_key"]:
            problems.append("the run key does not match the recorded model, config, image, context and verifier "
                            "version")
        used = max(scale["generations"] for scale in certificate["conditions"]["probability"]["per_scale"])
        if certificate["witness"]["seeds"] != seed_sequence(config.seed, used):
            problems.append(f"the seeds are not the first {used} of the run seed's sequence")
    result.add(image_id, "arithmetic", not problems, "; ".join(problems) or "means, ratio, config and run key agree")
    if config is not None:
        _check_sampling_rule(result, certificate)
        _check_inversion_rule(result, certificate)


def _check_sampling_rule(result: VerifyResult, certificate: dict) -> None:
    """The seeds per guidance scale are what the sequential rule prescribes on the recorded scores."""
    image_id = certificate["image"]["id"]
    recorded = {s["guidance_scale"]: s["generations"] for s in certificate["conditions"]["probability"]["per_scale"]}
    prescribed = replayed_generations(certificate)

    def described(counts: dict[float, int]) -> str:
        return ", ".join(f"{count} at guidance {scale:g}" for scale, count in sorted(counts.items()))

    result.add(image_id, "sequential sampling", recorded == prescribed,
               f"seeds per scale ({described(recorded)}) follow the stopping rule" if recorded == prescribed else
               f"seeds per scale ({described(recorded)}) are not what the stopping rule prescribes on the recorded "
               f"scores ({described(prescribed)})")


def _check_inversion_rule(result: VerifyResult, certificate: dict) -> None:
    """The inversion was checked and stopped where its schedule prescribes on the recorded check ratios, and
    its last check is the witness's ratio."""
    image_id, record = certificate["image"]["id"], certificate["prediction_error"]
    config, _ = recorded_config(certificate)
    if config is None:
        result.add(image_id, "inversion schedule", False, "the recorded config is not a valid config")
        return
    schedule = InversionSchedule.of(config, fixed=witness_is_framed(certificate["framing"]["witness"]))
    checks = record["inversion_checks"]
    recorded = [check["step"] for check in checks]
    ratios = [math.nan if check["ratio"] is None else check["ratio"] for check in checks]
    prescribed = schedule.replayed_checks(ratios)
    problems = []
    if recorded != prescribed:
        problems.append(f"checks at steps {recorded} are not what the schedule prescribes on their ratios ({prescribed})")
    if not recorded or recorded[-1] != record["inversion_steps"]:
        problems.append(f"inversion_steps {record['inversion_steps']} is not the last check's step")
    elif not _close(checks[-1]["ratio"], record["ratio"], 1e-6):
        problems.append(f"the last check's ratio {checks[-1]['ratio']!r} is not the recorded ratio {record['ratio']!r}")
    result.add(image_id, "inversion schedule", not problems,
               "; ".join(problems) or f"{record['inversion_steps']} steps, checks at {recorded}, as the schedule "
               "prescribes")


def _check_calibration(result: VerifyResult, certificate: dict, calibration_file: str | Path | None) -> None:
    """A calibrated certificate names its calibration by sha256; the file, where at hand, must match."""
    record = certificate["calibration"]
    if record is None:
        return
    path = Path(calibration_file) if calibration_file else Path(record["file"])
    if not path.is_file():
        result.add(certificate["image"]["id"], "calibration", False,
                   f"calibration file {str(path)!r} is missing; pass --calibration")
        return
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    ok = actual == record["sha256"]
    if ok:
        data = json.loads(path.read_text(encoding="utf-8"))
        ok = all(data.get(key) == record[key] for key in ("error_ratio_threshold", "similarity_threshold", "rank",
                                                          "images", "false_alarm_rate"))
    result.add(certificate["image"]["id"], "calibration", ok,
               f"sha256 {actual[:12]} vs recorded {record['sha256'][:12]}; thresholds as recorded" if ok else
               f"sha256 {actual[:12]} vs recorded {record['sha256'][:12]}: not the calibration the verdict used")


def _check_verdict(result: VerifyResult, certificate: dict) -> None:
    """The verdict, its reason and the three conditions, every field of them (margins, bounds, the best scale,
    look confidences, threshold sources, the control's p-value), are what follows from the recorded numbers."""
    decision = redecide(certificate)
    found = differences({"verdict": certificate["verdict"], "verdict_reason": certificate["verdict_reason"],
                         "conditions": certificate["conditions"]},
                        {"verdict": decision.verdict, "verdict_reason": decision.reason,
                         "conditions": decision.conditions})
    result.add(certificate["image"]["id"], "verdict", not found,
               described(found) or f"{certificate['verdict']} follows from the recorded numbers")


def _check_prompts_and_category(result: VerifyResult, certificate: dict) -> None:
    """Every prompt of the context was tested at the run's scales and seeds; counts, bounds and the category
    follow from the recorded scores."""
    image_id = certificate["image"]["id"]
    context, prompts, config = certificate["context"], certificate["prompts"], certificate["config"]
    listing_problems = []
    listed = ImageContext(explicit_prompts=tuple(context["explicit_prompts"]),
                          implicit_prompts=tuple(context["implicit_prompts"])).prompts() if context else []
    tested = [(prompt["kind"], prompt["prompt"]) for prompt in prompts]
    if tested != listed:
        listing_problems.append(f"the prompts tested {tested!r} are not the context's {listed!r}")
    for prompt in prompts:
        scales = [scale["guidance_scale"] for scale in prompt["per_scale"]]
        sizes = {len(scale["scores"]) for scale in prompt["per_scale"]}
        if scales != list(config["guidance_scales"]) or sizes != {config["generations"]}:
            listing_problems.append(f"prompt {prompt['prompt']!r} was not tested with {config['generations']} "
                                    f"seeds at each of the guidance scales {config['guidance_scales']}")
    replayed = replayed_prompts(certificate, prompts)
    decoded = certificate["readable_prompt"]["prompts"]
    replayed_decoded = replayed_prompts(certificate, decoded)
    differences_found = differences({"prompts": prompts, "decoded": decoded},
                                    {"prompts": replayed, "decoded": replayed_decoded})
    if any(prompt["kind"] != "decoded" for prompt in decoded) or any(p["kind"] == "decoded" for p in prompts):
        differences_found.append("decoded prompts and the owner's are mixed up")
    statement = readable_statement(certificate["verdict"], config["inversion_space"],
                                   replayed_decoded, config.get("decode_witness", True))
    differences_found += differences({"readable_prompt.statement": certificate["readable_prompt"]["statement"],
                                      "classification": certificate["classification"]},
                                     {"readable_prompt.statement": statement,
                                      "classification": classify(certificate["verdict"], context, replayed)})
    result.add(image_id, "prompts and category", not (listing_problems or differences_found),
               described(listing_problems + differences_found) or
               f"{len(prompts)} owner prompt(s) tested; category {certificate['classification']['category']!r} "
               "follows from the recorded scores")


def differences(recorded, derived, path: str = "") -> list[str]:
    """Every field where a recorded record differs from the one that follows from its numbers, by path (floats
    equal to 1e-9 relative: both sides are computed by the same code from the same recorded values)."""
    if isinstance(recorded, dict) and isinstance(derived, dict):
        found = []
        for key in [*recorded, *(key for key in derived if key not in recorded)]:
            where = f"{path}.{key}" if path else key
            if key not in derived:
                found.append(f"{where} is recorded but does not follow")
            elif key not in recorded:
                found.append(f"{where} follows but is not recorded")
            else:
                found += differences(recorded[key], derived[key], where)
        return found
    if isinstance(recorded, list) and isinstance(derived, list):
        if len(recorded) != len(derived):
            return [f"{path or 'the record'} has {len(recorded)} entries recorded, {len(derived)} follow"]
        return [difference for index, (mine, theirs) in enumerate(zip(recorded, derived))
                for difference in differences(mine, theirs, f"{path}[{index}]")]
    if _equal(recorded, derived):
        return []
    return [f"{path} {recorded!r} recorded, {derived!r} follows"]


def described(found: list[str], shown: int = 3) -> str:
    """The first differences, and how many more there are."""
    return "; ".join(found[:shown]) + (f" (and {len(found) - shown} more)" if len(found) > shown else "")


def _equal(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) or (math.isnan(a) and math.isnan(b))
    return a == b


def _check_generations(result: VerifyResult, certificate: dict, loaded, witness: dict, image_path: Path,
                       folder: Path, all_generations: bool) -> None:
    """Regenerate the generations the verdict rests on (and the control's, where it ran) and re-score them."""
    image_id = certificate["image"]["id"]
    record, config = certificate["witness"], certificate["config"]
    metric = SIMILARITY_METRICS.get(config["similarity"])(_config_for_metric(config))
    recorded_weights = certificate["conditions"]["similarity"]["weights"]
    if (metric.weights or {}).get("sha256") != (recorded_weights or {}).get("sha256"):
        result.add(image_id, "similarity weights", False, "the similarity weights' sha256 differs from the recorded one")
        return
    threshold = certificate["conditions"]["similarity"]["threshold"]
    # A framing-search witness was scored against the owner's image framed best for each generation; an aligned
    # one against the owner's image cut at its framing; the part windows against the same pixels.
    framed = witness_is_framed(certificate["framing"]["witness"])
    metric = FramedSimilarity(metric)
    _, target = witness_image(certificate, image_path)
    if target is None:
        result.add(image_id, "aligned framing", False, "the recorded aligned framing leaves no overlap on the image")
        return
    pixels = target.pixels if framed else target
    seeds = record["seeds"]
    for scale_record in certificate["conditions"]["probability"]["per_scale"]:
        scale = scale_record["guidance_scale"]
        recorded = np.array([np.nan if v is None else v for v in scale_record["scores"]])
        hits = replicated(metric, recorded, threshold)
        wanted = [seed for seed, hit in zip(seeds, hits) if hit or all_generations]
        if scale == record["closest_guidance_scale"] and record["closest_seed"] not in wanted:
            wanted.append(record["closest_seed"])
        part_seeds = _part_seeds(certificate, scale, seeds)
        wanted += [seed for seed in part_seeds if seed not in wanted]
        if not wanted:
            continue
        images = _regenerate(result, image_id, f"generations at guidance {scale:g}", loaded, metric, threshold,
                             witness, target, scale, wanted, seeds, recorded, record)
        if part_seeds:
            _check_part_windows(result, certificate, scale, pixels, seeds, wanted, images)
        if scale == record["closest_guidance_scale"]:
            closest = images[wanted.index(record["closest_seed"])]
            _check_closest_png(result, image_id, folder / record["closest_generation"], closest)
            if framed:
                _check_closest_framing(result, certificate, metric.framings(closest[None], target)[0].record(target.side))
        _check_sheet_tiles(result, image_id, folder, record, record["guidance_scales"].index(scale),
                           [seeds.index(seed) for seed in wanted], images)
    _regenerate_prompts(result, certificate, loaded, metric, threshold, witness, target, all_generations)
    _regenerate_part_twin(result, certificate, loaded, pixels, folder, seeds, all_generations)
    control = certificate["conditions"]["existence"]["control"]
    control_file = folder / certificate["control_witness"]["file"] if certificate["control_witness"] else None
    if control is not None and control_file is not None and control_file.is_file():
        tensors = {name: tensor.float() for name, tensor in load_file(str(control_file)).items()}
        recorded = np.array([np.nan if v is None else v for v in control["scores"]])
        hits = replicated(metric, recorded, threshold)
        # The control's replications (if any), else its closest seed: what the Fisher test rests on.
        wanted = [seed for seed, hit in zip(seeds, hits) if hit or all_generations] or [
            seeds[best_index(metric, recorded)]]
        _regenerate(result, image_id, "control generations", loaded, metric, threshold, tensors,
                    never_seen_twin(target), control["guidance_scale"], wanted, seeds, recorded, record)


def _regenerate_part_twin(result: VerifyResult, certificate: dict, loaded, target, folder: Path, seeds: list[int],
                          all_generations: bool) -> None:
    """The part control's twin generations that replicated its best window (else its best one), regenerated from
    the twin's witness file, window scores compared with the recorded ones."""
    control = certificate["part_replication"]["control"]
    if control is None:
        return
    image_id, path = certificate["image"]["id"], folder / control["witness"]["file"]
    if not _check_file(result, image_id, "part control witness", path, control["witness"]["sha256"]):
        return
    metric = WindowSSIM(certificate["image"]["preprocessing"]["resolution"])
    column = np.array(control["scores"], dtype=np.float64)[:, control["window"]]  # null -> nan
    hits = np.nan_to_num(column, nan=-np.inf) >= metric.threshold
    wanted = [seed for seed, hit in zip(seeds, hits) if hit or all_generations] or [seeds[int(np.nanargmax(column))]]
    tensors = {name: tensor.float() for name, tensor in load_file(str(path)).items()}
    witness_condition, negative = _conditionings(tensors, certificate["witness"])
    record = certificate["witness"]
    images = loaded.generate(witness_condition.to(loaded.device), negative.to(loaded.device), wanted,
                             control["guidance_scale"], record["num_inference_steps"], record["height"])[0]
    _check_window_scores(result, image_id, "part control generations", metric(images, never_seen_twin(target)),
                         control["scores"], wanted, seeds)


def _check_file(result: VerifyResult, image_id: str, name: str, path: Path, recorded_sha256: str) -> bool:
    """A file the certificate names exists and has the recorded sha256."""
    actual = file_sha256(path) if path.is_file() else None
    return result.add(image_id, name, actual == recorded_sha256, f"{path.name} is missing" if actual is None else
                      f"sha256 {actual[:12]} vs recorded {recorded_sha256[:12]}")


def _check_window_scores(result: VerifyResult, image_id: str, name: str, regenerated, recorded: list,
                         wanted: list[int], seeds: list[int]) -> None:
    """Regenerated images' window scores (one row per ``wanted`` seed) against the recorded rows (one per seed)."""
    rows = np.array([recorded[seeds.index(seed)] for seed in wanted], dtype=np.float64)  # null -> nan
    regenerated = np.asarray(regenerated, dtype=np.float64)
    unscored = int((np.isnan(regenerated) != np.isnan(rows)).sum())  # a window scored on one side only
    largest = float(np.nanmax(np.abs(regenerated - rows), initial=0.0))
    result.add(image_id, name, largest <= TOLERANCES["similarity_abs"] and not unscored,
               f"{len(wanted)} regenerated generation(s): largest window-score difference {largest:.2g} "
               f"(tolerance {TOLERANCES['similarity_abs']:g})"
               + (f"; {unscored} window(s) scored on one side only" if unscored else ""))


def _part_seeds(certificate: dict, scale: float, seeds: list[int]) -> list[int]:
    """The seeds whose generations replicated the best window at ``scale``, where a part was found."""
    part = certificate["part_replication"]
    if not part["found"] or part["best"]["guidance_scale"] != scale:
        return []
    rows = next(s["scores"] for s in part["per_scale"] if s["guidance_scale"] == scale)
    window = part["best"]["window"]
    return [seed for seed, row in zip(seeds, rows[:part["seeds_compared"]])
            if row[window] is not None and row[window] >= part["threshold"]]


def _check_part_windows(result: VerifyResult, certificate: dict, scale: float, target, seeds: list[int],
                        wanted: list[int], images) -> None:
    """The regenerated images' window scores match the recorded ones (the part finding's replications)."""
    part = certificate["part_replication"]
    rows = next(s["scores"] for s in part["per_scale"] if s["guidance_scale"] == scale)
    regenerated = WindowSSIM(certificate["image"]["preprocessing"]["resolution"])(images, target)
    _check_window_scores(result, certificate["image"]["id"], f"part windows at guidance {scale:g}", regenerated, rows,
                         wanted, seeds)


def _regenerate_prompts(result: VerifyResult, certificate: dict, loaded, metric, threshold: float, witness: dict,
                        target, all_generations: bool) -> None:
    """Regenerate each owner prompt's and decoded witness's replicating generations (every one with
    ``all_generations``) from its text."""
    record = certificate["witness"]
    seeds = record["seeds"][:certificate["config"]["generations"]]
    tested = certificate["prompts"] + certificate["readable_prompt"]["prompts"]
    for number, prompt in enumerate(tested):
        label = f"prompt {number + 1}" if prompt["kind"] != "decoded" else "decoded witness"
        for scale_record in prompt["per_scale"]:
            recorded = np.array([np.nan if v is None else v for v in scale_record["scores"]])
            hits = replicated(metric, recorded, threshold)
            wanted = [seed for seed, hit in zip(seeds, hits) if hit or all_generations]
            if wanted:
                _regenerate(result, certificate["image"]["id"],
                            f"{label} generations at guidance {scale_record['guidance_scale']:g}", loaded,
                            metric, threshold, witness, target, scale_record["guidance_scale"], wanted, seeds, recorded,
                            record, condition=loaded.prompt_conditioning([prompt["prompt"]]).to("cpu"))


def _regenerate(result: VerifyResult, image_id: str, name: str, loaded, metric, threshold: float, witness: dict,
                target, scale: float, wanted: list[int], seeds: list[int], recorded, record: dict, condition=None):
    """Regenerate ``wanted`` seeds from ``witness`` (or ``condition``, an owner prompt's) with the stock pipeline,
    compare their scores; return the images."""
    witness_condition, negative = _conditionings(witness, record)
    condition = witness_condition if condition is None else condition
    images = loaded.generate(condition.to(loaded.device), negative.to(loaded.device), wanted, scale,
                             record["num_inference_steps"], record["height"])[0]
    scores = metric(images, target)
    differences, largest = [], 0.0
    for seed, score in zip(wanted, scores):
        before = recorded[seeds.index(seed)]
        largest = max(largest, abs(float(score) - float(before)))
        same_side = bool(replicated(metric, np.array([score]), threshold)[0]) == bool(
            replicated(metric, np.array([before]), threshold)[0])
        if not (abs(score - before) <= TOLERANCES["similarity_abs"] and same_side):
            differences.append(f"seed {seed}: {score:.4f} regenerated vs {before:.4f} recorded")
    result.add(image_id, name, not differences,
               "; ".join(differences[:3]) or f"{len(wanted)} regenerated generation(s) match the recorded "
               f"similarity (largest difference {largest:.2g}, tolerance {TOLERANCES['similarity_abs']:g})")
    return images


def _check_closest_framing(result: VerifyResult, certificate: dict, regenerated: dict) -> None:
    """The framing the regenerated closest generation matches is the recorded one."""
    recorded = certificate["framing"]["closest_framing"]
    same = recorded is not None and recorded["mirror"] == regenerated["mirror"] and all(
        _close(a, b, 1e-6) for a, b in zip([recorded["scale"], *recorded["shift"]],
                                           [regenerated["scale"], *regenerated["shift"]]))
    result.add(certificate["image"]["id"], "closest framing", same,
               f"the closest generation matches the owner's image framed as recorded ({regenerated})" if same else
               f"the closest generation matches the framing {regenerated}, not the recorded {recorded}")


def _screen_problems(framing: dict, framed: dict | None, framing_steps: int) -> list[str]:
    """The screen ran exactly where the framing search did, over the rule's candidates, and measured and chose
    (the image's and, where recorded, its twin's) as the rule prescribes on the recorded ratios."""
    record = framing["screen"]
    if (record is None) != (framed is None):
        return [f"the screen {'ran' if record is not None else 'did not run'}, but the framing search "
                f"{'did not' if framed is None else 'did'}"]
    if record is None:
        return []
    side, problems = 1000, []  # framings compared as fractions of the side
    expected = [framing.record(side) for framing in
                candidate_framings(BOUNDS, side, framing["mirror_enabled"], framing["scales_enabled"])]
    if record["steps"] != framing_steps:
        problems.append(f"the screen's candidates were inverted for {record['steps']} steps, not the config's "
                        f"framing_steps {framing_steps}")
    for name, screened in (("image", record), ("twin", record["twin"])):
        if screened is None:
            continue
        candidates = screened["candidates"]
        placed = [{key: candidate[key] for key in ("scale", "shift", "mirror")} for candidate in candidates]
        # Every candidate on the rule's grid, in its order (a framing leaving too little of the image is skipped).
        positions = [next((k for k, grid in enumerate(expected) if _same_framing(one, grid)), None) for one in placed]
        if not placed or None in positions or positions != sorted(set(positions)):
            problems.append(f"the {name}'s screen's candidates are not the rule's grid")
            continue
        if not _same_framing(placed[chosen(candidates)], screened["chosen"]):
            problems.append(f"the {name}'s screen chose {screened['chosen']}, but its ratios choose "
                            f"{placed[chosen(candidates)]}")
    return problems


def _same_framing(one: dict, other: dict) -> bool:
    return (one["mirror"] == other["mirror"] and _close(one["scale"], other["scale"], 1e-6)
            and all(_close(a, b, 1e-6) for a, b in zip(one["shift"], other["shift"])))


def _check_framing(result: VerifyResult, certificate: dict) -> None:
    """The framing record follows from its searches: the framing search ran exactly where the first witness
    replicated nothing (its screen with it, as the rule chooses), the aligned one exactly where the framing
    search replicated nothing too, the witness is the search ``framing.witness_search`` names, and the verdict
    is the witness's."""
    framing, similarity = certificate["framing"], certificate["conditions"]["similarity"]
    first, framed = framing["first_search"], framing["framing_search"]
    aligned, aligned_framing = framing["aligned_search"], framing["aligned_framing"]
    problems = []
    should_search = framing["enabled"] and reproduced_nothing(first["verdict"], first["replications"])
    if framing["searched"] != should_search or (framed is None) == framing["searched"]:
        problems.append(f"searched is {framing['searched']}, but the first search ({first['verdict']}, "
                        f"{first['replications']} replications) {'calls' if should_search else 'does not call'} for it")
    if (aligned is not None) != aligned_search_runs(framed) or (aligned is None) != (aligned_framing is None):
        problems.append(f"the aligned search {'ran' if aligned is not None else 'did not run'} (framing "
                        f"{aligned_framing}), but the framing search's replications say it "
                        f"{'should not' if aligned is not None else 'should'}")
    elif aligned_framing is not None and not BOUNDS.contains(aligned_framing["scale"], aligned_framing["shift"], 1.0,
                                                             aligned_framing["mirror"]):
        problems.append(f"the aligned framing {aligned_framing} lies outside the search's bounds")
    problems += _screen_problems(framing, framed, certificate["config"]["framing_steps"])
    chosen_search = witness_search(framed, aligned)
    if framing["witness"] != chosen_search:
        problems.append(f"the witness is the {framing['witness']}'s, but the searches' replications make it the "
                        f"{chosen_search}'s")
    elif chosen_search == "aligned search" and framing["closest_framing"] != aligned_framing:
        problems.append("the closest framing of an aligned witness is not its aligned framing")
    chosen = {"owner's framing": first, "framing search": framed, "aligned search": aligned}[chosen_search]
    if chosen["verdict"] != certificate["verdict"] or chosen["replications"] != similarity["replications"] or \
            chosen["generations"] != similarity["generations"]:
        problems.append(f"the certificate's verdict and replications ({certificate['verdict']}, "
                        f"{similarity['replications']}/{similarity['generations']}) are not its witness's search's "
                        f"({chosen['verdict']}, {chosen['replications']}/{chosen['generations']})")
    if not problems:
        replayed = framing_record(searched=framing["searched"], enabled=framing["enabled"],
                                  mirror_enabled=framing["mirror_enabled"],
                                  scales_enabled=framing["scales_enabled"], first=first, framed=framed,
                                  aligned=aligned, aligned_framing=aligned_framing,
                                  closest_framing=framing["closest_framing"],
                                  evaluations=framing["denoiser_evaluations"],
                                  aligned_evaluations=framing["aligned_denoiser_evaluations"],
                                  screen=framing["screen"])
        if replayed != framing:
            changed = sorted(key for key in replayed if replayed[key] != framing[key])
            problems.append(f"the framing record's {', '.join(changed)} differ from what its searches give")
    result.add(certificate["image"]["id"], "framing", not problems,
               "; ".join(problems) or f"{framing['statement']}")


def _check_closest_png(result: VerifyResult, image_id: str, path: Path, regenerated) -> None:
    if not path.is_file():
        result.add(image_id, "closest generation", False, f"{path.name} is missing")
        return
    stored = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    difference = float(np.abs(stored - regenerated).mean()) if stored.shape == regenerated.shape else math.inf
    result.add(image_id, "closest generation", difference <= TOLERANCES["similarity_abs"],
               f"mean pixel difference {difference:.4f} between {path.name} and the regenerated image")


def _check_part(result: VerifyResult, certificate: dict) -> None:
    """The part finding follows from the recorded window scores (and the twin's): the windows are the resolution's,
    the best window, the candidacy, the Fisher test and the finding are recomputed and must agree."""
    part = certificate["part_replication"]
    metric = WindowSSIM(certificate["image"]["preprocessing"]["resolution"])
    if [list(window) for window in metric.windows] != part["windows"] or metric.threshold != part["threshold"]:
        result.add(certificate["image"]["id"], "part replication", False,
                   "the recorded windows or threshold are not the ones verifier uses at this resolution")
        return
    scores = {s["guidance_scale"]: np.array(s["scores"], dtype=np.float64) for s in part["per_scale"]}  # null -> nan
    control = None if part["control"] is None else {
        "guidance_scale": part["control"]["guidance_scale"],
        "scores": np.array(part["control"]["scores"], dtype=np.float64)}
    replayed = part_record(certificate["verdict"], scores, metric, part["seeds_compared"],
                           certificate["config"]["confidence"], control)
    if replayed["control"] is not None:
        replayed["control"]["witness"] = part["control"]["witness"]
    fields = ("best", "candidate", "found", "statement", "control")
    differs = [name for name in fields if replayed[name] != part[name]]
    if replayed["candidate"] and part["control"] is None:
        differs.append("control (a candidate without the control)")
    result.add(certificate["image"]["id"], "part replication", not differs,
               f"recomputed from the window scores: {', '.join(differs)} differ" if differs else
               f"recomputed from the window scores: {'a part found' if part['found'] else 'no part found'}")


def _check_sheet_file(result: VerifyResult, certificate: dict, folder: Path) -> None:
    """The contact sheet is the file the certificate names (its tiles are checked against regenerated images)."""
    record = certificate["witness"]["generations_sheet"]
    _check_file(result, certificate["image"]["id"], "generations sheet file", folder / record["file"], record["sha256"])


def _check_sheet_tiles(result: VerifyResult, image_id: str, folder: Path, record: dict, row: int,
                       columns: list[int], regenerated) -> None:
    """The contact sheet the report shows holds the regenerated generations at their scale's row and seeds'
    columns (the file's sha256 is checked with the other files)."""
    sheet_record = record["generations_sheet"]
    path, tile = folder / sheet_record["file"], sheet_record["tile"]
    if not path.is_file():
        result.add(image_id, "generations sheet", False, f"{path.name} is missing")
        return
    sheet = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    differences = [float(np.abs(sheet_tile(sheet, row, column, tile) - thumbnail(image, tile)).mean()) / 255
                   if sheet.shape[0] >= (row + 1) * tile and sheet.shape[1] >= (column + 1) * tile else math.inf
                   for column, image in zip(columns, regenerated)]
    result.add(image_id, f"generations sheet row {row + 1}", max(differences) <= TOLERANCES["similarity_abs"],
               f"largest mean pixel difference {max(differences):.4f} between {len(columns)} tile(s) of {path.name} "
               "and the regenerated images")


def _config_for_metric(config: dict):
    return SimpleNamespace(lpips_weights=config.get("lpips_weights"), sscd_weights=config.get("sscd_weights"))


def witness_image(certificate: dict, image_path: Path):
    """What the witness's search measured the owner's image as: (pixels its error was measured on, the target
    its generations were scored against). The owner's framing: the prepared pixels twice; the framing search:
    the owner's image cut at the screen's chosen framing (``verifier.screen``) and the owner's image framed best
    (an ``OwnerImage``); the aligned search: the owner's image cut at ``aligned_framing`` (an ``alignment.Cut``),
    twice (None, None where that framing leaves no overlap)."""
    resolution, witness = certificate["witness"]["height"], certificate["framing"]["witness"]
    if witness == ALIGNED_SEARCH:
        owner = OwnerImage.open(image_path, BOUNDS, resolution)
        recorded = certificate["framing"]["aligned_framing"]
        cut = owner.cut(Framing(recorded["scale"], recorded["shift"][0] * owner.side,
                                recorded["shift"][1] * owner.side, recorded["mirror"]), resolution)
        return cut, cut
    if not witness_is_framed(witness):
        pixels = prepare_image(image_path, resolution)
        return pixels, pixels
    owner = OwnerImage.open(image_path, BOUNDS, resolution)
    chosen = certificate["framing"]["screen"]["chosen"]
    return owner.cut(Framing(chosen["scale"], chosen["shift"][0] * owner.side, chosen["shift"][1] * owner.side,
                             chosen["mirror"]), resolution), owner


def _check_error(result: VerifyResult, certificate: dict, loaded, witness: dict, image_path: Path) -> None:
    image_id = certificate["image"]["id"]
    record = certificate["prediction_error"]
    settings = certificate["config"]
    loaded.configure_objective(settings.get("error_form", "native"), settings.get("flow_timestep_density", "logit_normal"),
                               certificate["witness"]["height"])
    if loaded.objective.grid(len(record["timesteps"])) != record["timesteps"]:
        result.add(image_id, "prediction error", False, "the recorded timestep grid is not this model's fixed grid")
        return
    pixels, _ = witness_image(certificate, image_path)
    if pixels is None:
        result.add(image_id, "prediction error", False, "the recorded aligned framing leaves no overlap on the image")
        return
    z0 = loaded.encode_images([pixels_of(pixels)])
    weights = latent_weights([pixels], z0)  # an aligned cut's error counts its covered part only
    measured = {}
    for name, conditioning in zip(("inverted", "empty"), _conditionings(witness, certificate["witness"])):
        measured[name] = [float(v) for v in prediction_error(
            loaded, z0, conditioning.to(loaded.device), timesteps=len(record["timesteps"]),
            noise_draws=record["noise_draws"], weights=weights)[0]]
    differences, largest = [], 0.0
    for name in ("inverted", "empty"):
        for t, mine, theirs in zip(record["timesteps"], measured[name], record[name]):
            if theirs is not None:
                largest = max(largest, abs(mine - theirs) / max(abs(theirs), 1e-8))
            if theirs is None or abs(mine - theirs) > TOLERANCES["error_rel"] * max(abs(theirs), 1e-8):
                differences.append(f"{name} error at t={t}: {mine:.6g} re-measured vs {theirs!r} recorded")
    result.add(image_id, "prediction error", not differences,
               "; ".join(differences[:3]) or f"{2 * len(record['timesteps'])} grid errors re-measured within "
               f"{100 * TOLERANCES['error_rel']:g}% (largest relative difference {largest:.2g})")


def _check_decoding(result: VerifyResult, certificate: dict, loaded, witness: dict) -> None:
    """The decoded texts are what the witness file's variables decode to (where a decoding was made)."""
    if certificate["verdict"] not in REPRODUCED_VERDICTS or not certificate["config"].get("decode_witness", True):
        return
    variables = {name.removeprefix("variables."): tensor for name, tensor in witness.items()
                 if name.startswith("variables.")}
    decoded = decoded_prompts(loaded, variables)
    recorded = [prompt["prompt"] for prompt in certificate["readable_prompt"]["prompts"]]
    result.add(certificate["image"]["id"], "decoded witness", decoded == recorded,
               f"the witness's variables decode to {decoded!r}" + ("" if decoded == recorded else
                                                                   f", the certificate lists {recorded!r}"))
