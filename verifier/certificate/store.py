"""The output folder: atomic writes, witnesses, the run's identity and what may be resumed.

A run's output folder holds, per image, ``<id>.json`` (the certificate), ``<id>.witness.safetensors``
(the inverted conditioning), ``<id>.closest.png`` (the generation nearest the image) and
``<id>.generations.png`` (every generation as a small tile, the report's contact sheet); plus
``run.json`` (which model and config the folder belongs to), ``summary.json`` and ``report.html``.

- Every file is written to a hidden temporary name in the same folder and renamed into place, so a
  killed run leaves either the old file or the new one, never half of one; temporaries a kill left
  behind are removed when the next run opens the folder. Files get the permissions the umask gives.
- An image's certificate is written last, after its witness and pictures, so its
  presence means the image is done; and it is reused only when it validates against the schema, its
  run key matches, its witness file still has the recorded sha256 and its verdict follows from its
  own numbers. Anything else is redone, and the reason is reported.
- A folder holds one run: a second run with another model or config is refused, naming what
  differs, instead of mixing certificates of two runs.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from verifier.certificate.schema import (
    SCHEMA_VERSION, CertificateFormatError, read_certificate, summary_tag, validated,
)
from verifier.images import file_sha256
from verifier.paths import broken_link

RUN_FILE = "run.json"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"


class OutputFolderError(ValueError):
    """``--out`` cannot be used for this run; the message says why and what to do."""


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        # mkstemp creates 0600; a result file gets what the user's umask gives any new file.
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, value: dict) -> None:
    # allow_nan=False: NaN and Infinity are not JSON; a non-finite number reaching here is a bug.
    atomic_write_bytes(path, (json.dumps(value, indent=2, allow_nan=False) + "\n").encode())


def canonical_sha256(value: dict) -> str:
    """sha256 of a JSON value's canonical text (keys sorted, no whitespace): the same for any spacing or key order."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((np.clip(np.nan_to_num(image), 0, 1) * 255 + 0.5).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


WITNESS_METADATA = "verifier"


def write_witness(path: Path, conditioning, empty, variables: dict, metadata: dict) -> str:
    """Save one image's witness (a ``Conditioning`` of batch 1), the negative it was generated with and the
    inversion's variables as safetensors, keyed by the stock pipeline's keywords; return the file's sha256."""
    from safetensors.torch import save

    # clone(): in the hidden_states space the variables *are* the conditioning, and safetensors
    # refuses tensors that share memory.
    def stored(tensor):
        return tensor.detach().float().cpu().clone()

    data = save(
        {name: stored(tensor) for name, tensor in conditioning.tensors().items()}
        | {f"negative_{name}": stored(tensor) for name, tensor in empty.tensors().items()}
        | {f"variables.{name}": stored(tensor)[None] for name, tensor in variables.items()},
        # One metadata entry: safetensors writes several in hash-map order, which changes from one
        # process to the next, and the file's sha256 with it.
        metadata={WITNESS_METADATA: json.dumps(metadata, sort_keys=True)})
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def witness_metadata(file_metadata: dict | None) -> dict:
    """What ``write_witness`` recorded beside the tensors (empty where the file holds none)."""
    try:
        value = json.loads((file_metadata or {}).get(WITNESS_METADATA, "{}"))
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def run_config_values(config, metric_weights_sha256: str | None, calibration_sha256: str | None) -> dict:
    """The config values a run's key and ``run.json`` record: those that change the numbers
    (``VerifierConfig.fingerprint_dict``), with the similarity weights and the calibration by sha256."""
    return config.fingerprint_dict() | {"similarity_weights_sha256": metric_weights_sha256,
                                        "calibration_sha256": calibration_sha256}


def run_key(model_fingerprint: str, config_values: dict, image_sha256: str, verifier_version: str | None,
            metric_weights_sha256: str | None, context: dict | None = None) -> str:
    """Identifies what a certificate's numbers depend on: reuse it only when every part matches (the owner's
    context too: its prompts are tested, and its category depends on it).

    ``config_values`` must not hold file paths of weights; the weights enter by their sha256.
    """
    payload = json.dumps({"model": model_fingerprint, "config": config_values, "image": image_sha256,
                          "verifier": verifier_version, "schema": SCHEMA_VERSION,
                          "similarity_weights": metric_weights_sha256, "context": context}, sort_keys=True)
    return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()


def check_output_path(out: Path) -> None:
    """What can be told of ``--out`` without creating anything: a folder (or a place for one), not a broken link."""
    if str(out) in ("", "."):
        raise OutputFolderError("--out must name a folder for this run's files, not the current folder ('')")
    link = broken_link(out)
    if link:
        raise OutputFolderError(f"--out {str(out)!r} {link}; name a folder, or a link to one")
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"--out {str(out)!r} exists and is not a folder")


def prepare_output_folder(out: Path, clean: bool = True) -> None:
    """Check, before any model is loaded, that ``out`` can be created and written; with ``clean``, delete a killed
    run's temporaries (a run does so only once it holds the folder's lock: they may be a running one's)."""
    check_output_path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        # The longest name verifier writes is <id>.witness.safetensors with a 120-character id.
        probe = out / f".{'p' * 150}.probe.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise OutputFolderError(f"--out {str(out)!r} cannot be written: {error.strerror or error}") from None
    if clean:
        clean_temporaries(out)


def clean_temporaries(out: Path) -> None:
    """Delete the half-written files (``.<name>.tmp``) a killed run left in ``out``."""
    for leftover in out.glob(".*.tmp"):
        leftover.unlink(missing_ok=True)


def claim_run_folder(out: Path, identity: dict) -> None:
    """Record that ``out`` holds the run ``identity`` (model fingerprint, config), or refuse if it holds another."""
    run_file = out / RUN_FILE
    if run_file.is_file():
        try:
            previous = json.loads(run_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            previous = None
        if not isinstance(previous, dict) or previous.get("schema", {}).get("id") != "verifier.run":
            raise OutputFolderError(f"--out {str(out)!r} holds a {RUN_FILE} that verifier did not write; "
                                    "choose another folder")
        differences = [key for key in ("model_fingerprint", "config") if previous.get(key) != identity.get(key)]
        if differences:
            detail = _config_difference(previous.get("config", {}), identity["config"]) if "config" in differences else ""
            raise OutputFolderError(
                f"--out {str(out)!r} holds a run with another {' and '.join(d.replace('_', ' ') for d in differences)}"
                f"{detail}; a folder holds one run. Choose a new --out, or delete the folder to start over")
    elif any(out.glob("*.json")):
        raise OutputFolderError(f"--out {str(out)!r} already holds JSON files but no {RUN_FILE}: it is not a verifier "
                                "run folder (or was written by an older verifier); choose a new --out")
    write_run_record(out, identity)


def write_run_record(out: Path, identity: dict) -> None:
    """``run.json``: the run a folder holds (model fingerprint, config values, verifier version)."""
    atomic_write_json(out / RUN_FILE, {"schema": {"id": "verifier.run", "version": SCHEMA_VERSION}, **identity})


LOCK_FILE = ".verifier.lock"


class RunFolderLock:
    """One writer at a time: an advisory lock (``fcntl.flock``) on ``<out>/.verifier.lock``, held while a run
    writes the folder. The operating system releases it when its holder exits or is killed, so a killed
    run's lock is stale at once and the next run takes it over; the file names the holder (pid, host) so that
    a run refused names who holds the folder."""

    def __init__(self, out: Path):
        import fcntl
        import socket

        self.path = out / LOCK_FILE
        self._handle = open(self.path, "a+", encoding="utf-8")  # no truncation: the holder's record stays readable
        try:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._handle.seek(0)
            holder = self._handle.read().strip() or "another process"
            self._handle.close()
            raise OutputFolderError(f"--out {str(out)!r} is being written by {holder}; one run writes a folder at a "
                                    "time: wait for it to finish, or choose another --out") from None
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(f"verifier certify (pid {os.getpid()} on host {socket.gethostname()})")
        self._handle.flush()

    def release(self) -> None:
        if not self._handle.closed:
            self._handle.close()  # closing the file releases the lock; the file stays for the next run


def _config_difference(old: dict, new: dict) -> str:
    changed = [f"{key} {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(set(old) | set(new))
               if old.get(key) != new.get(key)]
    return f" ({', '.join(changed[:4])}{', ...' if len(changed) > 4 else ''})" if changed else ""


def reusable_certificate(out: Path, image_id: str, key: str, recompute_verdict) -> tuple[dict | None, str]:
    """The certificate already in ``out`` for this image if it may be reused, else (None, why not).

    ``recompute_verdict(certificate) -> str`` re-derives the verdict from the certificate's numbers.
    """
    path = out / f"{image_id}.json"
    if not path.is_file():
        return None, "not certified yet"
    try:
        certificate = read_certificate(path)
    except CertificateFormatError as error:
        return None, str(error)
    if certificate["run_key"] != key:
        return None, "its run key differs (other model, config, image bytes or verifier version)"
    if certificate["image"]["id"] != image_id:
        return None, f"it names another image id {certificate['image']['id']!r}"
    witness = out / certificate["witness"]["file"]
    if not witness.is_file() or file_sha256(witness) != certificate["witness"]["sha256"]:
        return None, "its witness file is missing or does not have the recorded sha256"
    if not (out / certificate["witness"]["closest_generation"]).is_file():
        return None, "its closest generation is missing"
    if recompute_verdict(certificate) != certificate["verdict"]:
        return None, "its verdict does not follow from its own numbers"
    return certificate, "reused"


def summary(folder: Path, certificates: list[dict], model: dict, config: dict, seconds: float, policy=None) -> dict:
    """The run's summary: every image's verdict and category, counts of each, and, with a release-gate
    ``policy`` (``verifier.policy.Policy``), the policy and each image's gate result. It indexes the run: each
    entry names its certificate file in ``folder`` by sha256, so no certificate is dropped or swapped unseen."""
    from verifier.certificate.schema import VERDICTS
    from verifier.taxonomy import CATEGORIES

    counts = {verdict: 0 for verdict in VERDICTS}
    categories = {category: 0 for category in (*CATEGORIES, "none")}
    for certificate in certificates:
        counts[certificate["verdict"]] += 1
        categories[certificate["classification"]["category"] or "none"] += 1
    gates = [policy.judge(c) if policy is not None else None for c in certificates]
    return validated("summary", {
        "schema": summary_tag(),
        "model": model,
        "config": config,
        "counts": counts,
        "categories": categories,
        "policy": policy.record() if policy is not None else None,
        "gate_failed": any(gate["fails"] for gate in gates) if policy is not None else None,
        "parts_found": sum(c["part_replication"]["found"] for c in certificates),
        "images": [
            {"id": c["image"]["id"], "path": c["image"]["path"], "sha256": c["image"]["sha256"], "verdict": c["verdict"],
             "error_ratio": c["conditions"]["existence"]["value"],
             "replication_rate": c["conditions"]["probability"]["rate"],
             "category": c["classification"]["category"], "gate": gate,
             "part_found": c["part_replication"]["found"],
             "certificate": f"{c['image']['id']}.json",
             "certificate_sha256": canonical_sha256(json.loads((folder / f"{c['image']['id']}.json")
                                                               .read_text(encoding="utf-8")))}
            for c, gate in zip(certificates, gates)
        ],
        "seconds": round(seconds, 2),
    })
