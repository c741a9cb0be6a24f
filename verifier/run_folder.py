"""A run folder is one unit: what ``verify DIR`` checks of the folder as a whole (issue 25).

A certificate is checked on its own by ``verifier.verify``; these checks hold the folder together, so that
no certificate can be dropped from, added to or swapped in a run without ``verify`` naming it:

- **summary**: every entry's verdict, category and gate result are its certificate's, the certificate
  is the one the summary indexes (the sha256 of its canonical JSON: spacing and key order do not
  matter, an edited value does), and the counts, categories and gate are recomputed
  from the entries;
- **run folder: certificates**: the certificates in the folder and the summary's entries are the same
  set, both ways;
- **run folder: ids**: each certificate's id is its file name's and follows the id rules (Unicode NFC,
  the characters and byte length verifier writes), so a look-alike spelling cannot stand for an id;
- **run folder: one certificate per image**: no input file (path and sha256) is certified twice under
  two ids;
- **run folder: files**: no witness, control, generation or signature file is left of an image the summary
  does not list (what deleting a certificate and its summary entry leaves behind);
- **run folder: run.json**: the folder's record of its run names the model fingerprint, the config
  values and the verifier version every certificate records.
"""

from __future__ import annotations

import json
from pathlib import Path

from verifier.certificate.schema import CERTIFICATE_SCHEMA_ID, CertificateFormatError, read_certificate, validated
from verifier.certificate.store import RUN_FILE, SUMMARY_FILE, canonical_sha256, run_config_values, write_run_record
from verifier.config import ConfigError, VerifierConfig
from verifier.images import RESERVED_STEMS, is_valid_id
from verifier.policy import Policy

Finding = tuple[str, bool, str]  # (check name, passed, detail)

# The files ``certify`` writes for an image ``<id>`` besides ``<id>.json`` (verifier.api, verifier.certificate.signing).
IMAGE_FILE_SUFFIXES = (".witness.safetensors", ".control.safetensors", ".part-control.safetensors", ".closest.png",
                       ".generations.png", ".json.sig")


def certificate_files(target: Path) -> list[Path]:
    """The certificates in a run folder (``<id>.json`` with a certificate schema tag), or the one file given."""
    if target.is_file():
        return [target]
    if not target.is_dir():
        raise CertificateFormatError(f"CERTIFICATES {str(target)!r} does not exist")
    found = []
    for path in sorted(target.glob("*.json")):
        try:
            tag = json.loads(path.read_text(encoding="utf-8")).get("schema", {})
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            continue
        if isinstance(tag, dict) and tag.get("id") == CERTIFICATE_SCHEMA_ID:
            found.append(path)
    if not found:
        raise CertificateFormatError(f"CERTIFICATES {str(target)!r} holds no verifier certificate (<id>.json)")
    return found


def recorded_config(certificate: dict) -> tuple[VerifierConfig | None, Exception | None]:
    """The certificate's config as a ``VerifierConfig``, or why it is not a valid one."""
    try:
        return VerifierConfig(**{key: tuple(value) if isinstance(value, list) else value
                                 for key, value in certificate["config"].items()}), None
    except (ConfigError, TypeError) as failure:
        return None, failure


def recorded_config_values(certificate: dict, config: VerifierConfig) -> dict:
    """The config values the certificate's run key and its run's ``run.json`` record."""
    weights = certificate["conditions"]["similarity"]["weights"]
    return run_config_values(config, weights["sha256"] if weights else None,
                             (certificate["calibration"] or {}).get("sha256"))


def check_run_folder(folder: Path) -> list[Finding]:
    """Every folder-level check of a run folder, in order (see the module docstring)."""
    certificates: dict[Path, dict | None] = {}
    for path in certificate_files(folder):
        try:
            certificates[path] = read_certificate(path)
        except CertificateFormatError:
            certificates[path] = None  # the per-certificate schema check names it
    readable = {path: c for path, c in certificates.items() if c is not None}
    # The summary is written once every image of a run is certified: a folder without one is a run that was
    # stopped (or whose summary was deleted), not a sealed unit.
    summary, problem = _read(folder / SUMMARY_FILE, "summary", missing=(
        "the summary is written when a run finishes: certify the same images into this folder again to finish "
        "the run (finished images are not redone)"))
    findings = [("summary", False, problem)] if summary is None else [_summary(folder, summary)]
    if summary is not None:
        findings += [_listed(folder, summary, certificates), _left_files(folder, summary)]
    findings += [_ids(readable), _one_certificate_per_image(readable), _run_record(folder, readable)]
    return findings


def _read(path: Path, kind: str, missing: str = "") -> tuple[dict | None, str]:
    """The file's JSON, or None and why not (``missing`` added to the reason when there is no file)."""
    if not path.is_file():
        return None, f"{path.name} is missing" + (f"; {missing}" if missing else "")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
        return (validated(kind, value) if kind == "summary" else value), ""
    except (CertificateFormatError, json.JSONDecodeError, UnicodeDecodeError, OSError) as error:
        return None, f"{path.name}: {error}"


def _summary(folder: Path, summary: dict) -> Finding:
    """The summary's entries against their certificate files, and its totals against its entries."""
    policy = None if summary["policy"] is None else Policy.from_record(summary["policy"])
    differences = []
    for entry in summary["images"]:
        certificate_path = folder / entry["certificate"]
        try:
            certificate = json.loads(certificate_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            differences.append(f"{entry['certificate']} is missing or unreadable")
            continue
        if canonical_sha256(certificate) != entry["certificate_sha256"]:
            differences.append(f"{entry['certificate']} is not the certificate the summary indexes (its sha256 "
                               "differs)")
        image_sha256 = certificate.get("image", {}).get("sha256")
        if certificate.get("verdict") != entry["verdict"] or image_sha256 != entry["sha256"]:
            differences.append(f"{entry['id']}: summary says {entry['verdict']}, its certificate "
                               f"{certificate.get('verdict')}")
        category = (certificate.get("classification") or {}).get("category")
        if category != entry["category"]:
            differences.append(f"{entry['id']}: summary says category {entry['category']}, its certificate {category}")
        if policy is not None:
            try:
                judged = policy.judge(certificate)
            except (KeyError, TypeError, AttributeError):
                judged = "no gate result: the certificate's classification or context is malformed"
            if judged != entry["gate"]:
                differences.append(f"{entry['id']}: the summary's gate result {entry['gate']} is not what its policy "
                                   f"gives ({judged})")
    counts = {verdict: sum(1 for e in summary["images"] if e["verdict"] == verdict) for verdict in summary["counts"]}
    if counts != summary["counts"]:
        differences.append(f"counts {summary['counts']} do not match its image list {counts}")
    categories = {name: sum(1 for e in summary["images"] if (e["category"] or "none") == name)
                  for name in summary["categories"]}
    if categories != summary["categories"]:
        differences.append(f"categories {summary['categories']} do not match its image list {categories}")
    if policy is not None and summary["gate_failed"] != any(e["gate"]["fails"] for e in summary["images"]):
        differences.append(f"gate_failed {summary['gate_failed']} does not match its images' gate results")
    return ("summary", not differences, "; ".join(differences[:3]) or
            f"{len(summary['images'])} images, verdicts and counts agree with the certificates")


def _listed(folder: Path, summary: dict, certificates: dict[Path, dict | None]) -> Finding:
    """The folder's certificate files and the summary's entries are the same set."""
    in_folder = {path.name for path in certificates}
    in_summary = [entry["certificate"] for entry in summary["images"]]
    unlisted = sorted(in_folder - set(in_summary))
    absent = sorted(set(in_summary) - in_folder)
    twice = sorted({name for name in in_summary if in_summary.count(name) > 1})
    problems = ([f"not in the summary: {', '.join(unlisted)}"] if unlisted else []) + \
               ([f"in the summary but not a certificate in the folder: {', '.join(absent)}"] if absent else []) + \
               ([f"listed twice in the summary: {', '.join(twice)}"] if twice else [])
    return ("run folder: certificates", not problems,
            "; ".join(problems) or f"the {len(in_folder)} certificates are the summary's {len(in_summary)} entries")


def _left_files(folder: Path, summary: dict) -> Finding:
    owned = {entry["id"] for entry in summary["images"]} | set(RESERVED_STEMS)  # summary.json.sig is the run's
    left = sorted(path.name for path in folder.iterdir() for suffix in IMAGE_FILE_SUFFIXES
                  if path.name.endswith(suffix) and path.name[:-len(suffix)] not in owned)
    return ("run folder: files", not left, f"files of images the summary does not list: {', '.join(left[:4])}"
            if left else "every image file belongs to an image the summary lists")


def _ids(certificates: dict[Path, dict]) -> Finding:
    problems = []
    for path, certificate in certificates.items():
        image_id = certificate["image"]["id"]
        if f"{image_id}.json" != path.name:
            problems.append(f"{path.name} holds the certificate of id {image_id!r}")
        elif not is_valid_id(image_id):
            problems.append(f"{image_id!r} is not an id verifier writes (ids are NFC-normalized, of letters, digits, "
                            "'-', '_' and '.', at most 120 bytes)")
    return ("run folder: ids", not problems, "; ".join(problems[:3]) or "every certificate's id is its file name's")


def _one_certificate_per_image(certificates: dict[Path, dict]) -> Finding:
    seen: dict[tuple[str, str], str] = {}
    problems = []
    for certificate in certificates.values():
        image = certificate["image"]
        key = (image["sha256"], image["path"])
        if key in seen:
            problems.append(f"{image['path']!r} is certified twice, as {seen[key]!r} and {image['id']!r}")
        seen.setdefault(key, image["id"])
    return ("run folder: one certificate per image", not problems,
            "; ".join(problems[:3]) or f"{len(seen)} input files, each certified once")


def _run_record(folder: Path, certificates: dict[Path, dict]) -> Finding:
    """``run.json`` names the model, config values and verifier version every certificate records."""
    record, problem = _read(folder / RUN_FILE, "run")
    if record is None:
        return "run folder: run.json", False, problem
    if not isinstance(record, dict) or record.get("schema", {}).get("id") != "verifier.run":
        return "run folder: run.json", False, f"{RUN_FILE} is not a verifier run record"
    problems = []
    for certificate in certificates.values():
        image_id = certificate["image"]["id"]
        config, _ = recorded_config(certificate)  # an invalid config is the arithmetic check's to name
        if certificate["model"]["fingerprint"] != record.get("model_fingerprint"):
            problems.append(f"{image_id}: another model fingerprint than {RUN_FILE}'s")
        if config is not None and recorded_config_values(certificate, config) != record.get("config"):
            problems.append(f"{image_id}: another config than {RUN_FILE}'s")
        if certificate["environment"].get("verifier") != record.get("verifier"):
            problems.append(f"{image_id}: another verifier version than {RUN_FILE}'s")
    return ("run folder: run.json", not problems, "; ".join(problems[:3]) or
            f"{RUN_FILE}'s model, config and verifier version are every certificate's")


def restore_run_record(out: Path, identity: dict) -> int:
    """Write a lost ``run.json`` back where every certificate in ``out`` records the run ``identity`` (model
    fingerprint, config values, verifier version); the number of certificates it rests on, else 0 (nothing
    written: a folder whose certificates disagree, or that holds none, is not this run's)."""
    if (out / RUN_FILE).exists():
        return 0
    try:
        certificates = [read_certificate(path) for path in certificate_files(out)]
    except CertificateFormatError:
        return 0
    for certificate in certificates:
        config, _ = recorded_config(certificate)
        if (config is None or certificate["model"]["fingerprint"] != identity["model_fingerprint"]
                or recorded_config_values(certificate, config) != identity["config"]
                or certificate["environment"].get("verifier") != identity["verifier"]):
            return 0
    write_run_record(out, identity)
    return len(certificates)
