"""Look at a run folder without re-running it: ``verifier ls DIR`` and ``verifier report DIR``.

``rows(folder)`` reads every certificate in a folder, of any schema version that declares itself
(2 onwards), and returns one row per image with the fields every version has (id, verdict, error
ratio, replication rate) and those of later versions where present (category: 8; a replicated part: 9); a
file that is not
a certificate this verifier can read is a row that says why. ``rebuild(folder)`` writes
``summary.json`` and ``report.html`` again from the certificates, which must be of the current
schema version (the report shows fields older ones lack); it says which files are older and how to
upgrade them.
"""

from __future__ import annotations

import json
from pathlib import Path

FIELDS = ("id", "verdict", "error_ratio", "replication_rate", "category", "part_found", "schema_version", "certificate",
          "problem")


def _field(value: dict, *path: str):
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def rows(folder: str | Path) -> list[dict]:
    """One row per ``<id>.json`` certificate in ``folder`` (sorted by file name), any declared schema version."""
    from verifier.certificate.schema import CERTIFICATE_SCHEMA_ID, SCHEMA_VERSION, CertificateFormatError, read_certificate
    from verifier.run_folder import certificate_files

    listed = []
    for path in certificate_files(Path(folder)):
        row = dict.fromkeys(FIELDS) | {"certificate": path.name}
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            listed.append(row | {"problem": f"cannot be read as JSON: {error}"})
            continue
        version = _field(value, "schema", "version")
        row |= {"schema_version": version, "id": _field(value, "image", "id") or path.stem,
                "verdict": value.get("verdict"), "error_ratio": _field(value, "conditions", "existence", "value"),
                "replication_rate": _field(value, "conditions", "probability", "rate"),
                "category": _field(value, "classification", "category"),
                "part_found": _field(value, "part_replication", "found")}
        if _field(value, "schema", "id") == CERTIFICATE_SCHEMA_ID and version == SCHEMA_VERSION:
            try:
                read_certificate(path)
            except CertificateFormatError as error:
                row["problem"] = str(error)
        elif version != SCHEMA_VERSION:
            row["problem"] = (f"schema version {version!r} (this verifier writes {SCHEMA_VERSION}): listed from the "
                              "fields every version has; verify and report need a re-certification")
        listed.append(row)
    return listed


def rebuild(folder: str | Path, policy=None) -> list[dict]:
    """Write ``summary.json`` and ``report.html`` in ``folder`` again from its certificates; return them.

    With ``policy`` (``verifier.policy.Policy``) the summary records each image's gate result. Raises
    ``CertificateFormatError`` naming every certificate that is not of the current schema version.
    """
    from verifier.certificate.report import report_html
    from verifier.certificate.schema import CertificateFormatError, read_certificate
    from verifier.certificate.store import REPORT_FILE, SUMMARY_FILE, atomic_write_bytes, atomic_write_json, png_bytes, summary
    from verifier.images import ImageInputError, file_sha256, prepare_image
    from verifier.run_folder import certificate_files

    folder = Path(folder)
    certificates, problems = [], []
    for path in certificate_files(folder):
        try:
            certificates.append(read_certificate(path))
        except CertificateFormatError as error:
            problems.append(str(error))
    if problems:
        raise CertificateFormatError(f"{len(problems)} certificate(s) in {str(folder)!r} cannot make a report: "
                                     + "; ".join(problems[:3]))
    previous = folder / SUMMARY_FILE
    seconds = 0.0
    if previous.is_file():  # the run's own wall time, kept when the old summary still says it
        try:
            seconds = float(json.loads(previous.read_text(encoding="utf-8")).get("seconds", 0.0))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError):
            seconds = 0.0
    first = certificates[0]
    record = summary(folder, certificates, first["model"], first["config"], seconds, policy)
    atomic_write_json(previous, record)
    pngs = {}
    for certificate in certificates:  # the protected image where it still is, unchanged (else the row has none)
        path = Path(certificate["image"]["path"])
        if not path.is_file() or file_sha256(path) != certificate["image"]["sha256"]:
            continue
        try:
            pngs[certificate["image"]["id"]] = png_bytes(prepare_image(path, certificate["image"]["preprocessing"]
                                                                       ["resolution"]))
        except ImageInputError:
            continue
    title = f"verifier report: {first['model']['source']}"
    atomic_write_bytes(folder / REPORT_FILE, report_html(folder, record, certificates, pngs, title).encode())
    return certificates
