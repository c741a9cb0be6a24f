"""A run folder is one sealed unit (issue 25): `verify DIR` fails, naming the check, when a certificate is dropped
from the summary, copied under another id, forged in, or when `run.json` or an id is rewritten; an honest folder,
re-spaced or re-ordered, passes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers.holder import hold_the_folder
from helpers.images import write_images

from verifier.certificate.store import OutputFolderError, canonical_sha256
from verifier.cli import main
from verifier.config import VerifierConfig
from verifier.run_folder import check_run_folder

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

QUICK = dict(device="cpu", inversion_steps=2, framing_steps=2, generations=2, batch_size=4)


@pytest.fixture(scope="module")
def run(tiny_model, tmp_path_factory):
    """A finished run of three images on the tiny model."""
    from verifier.api import certify

    root = tmp_path_factory.mktemp("sealed")
    images = write_images(root / "images", count=3)
    out = root / "run"
    certify(tiny_model, images, out, VerifierConfig(**QUICK))
    return out


@pytest.fixture
def folder(run, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _write(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2), encoding="utf-8")


def _failed(folder: Path) -> dict[str, str]:
    return {name: detail for name, passed, detail in check_run_folder(folder) if not passed}


def _ids(folder: Path) -> list[str]:
    return [entry["id"] for entry in _json(folder / "summary.json")["images"]]


def _drop_from_summary(folder: Path, image_id: str) -> None:
    summary = _json(folder / "summary.json")
    dropped = next(e for e in summary["images"] if e["id"] == image_id)
    summary["images"].remove(dropped)
    summary["counts"][dropped["verdict"]] -= 1
    summary["categories"][dropped["category"] or "none"] -= 1
    _write(folder / "summary.json", summary)


def _add_to_summary(folder: Path, certificate: dict) -> None:
    summary = _json(folder / "summary.json")
    entry = dict(summary["images"][0], id=certificate["image"]["id"], certificate=f"{certificate['image']['id']}.json",
                 verdict=certificate["verdict"], sha256=certificate["image"]["sha256"],
                 path=certificate["image"]["path"], certificate_sha256=canonical_sha256(certificate))
    summary["images"].append(entry)
    summary["counts"][entry["verdict"]] += 1
    summary["categories"][entry["category"] or "none"] += 1
    _write(folder / "summary.json", summary)


def test_an_honest_folder_passes_every_folder_check(folder):
    findings = check_run_folder(folder)
    assert [name for name, _, _ in findings] == ["summary", "run folder: certificates", "run folder: files",
                                                 "run folder: ids", "run folder: one certificate per image",
                                                 "run folder: run.json"]
    assert all(passed for _, passed, _ in findings), findings
    # Every file the run wrote is the run's own or one of a listed image's: the files check knows them all.
    from verifier.run_folder import IMAGE_FILE_SUFFIXES

    ids = _ids(folder)
    for path in folder.iterdir():
        assert path.name in ("run.json", "summary.json", "report.html", ".verifier.lock") or any(
            path.name in (f"{i}.json", *(f"{i}{suffix}" for suffix in IMAGE_FILE_SUFFIXES)) for i in ids), path.name


def test_respaced_and_reordered_files_still_pass(folder):
    for path in folder.glob("*.json"):
        value = _json(path)
        path.write_text(json.dumps(dict(reversed(list(value.items()))), indent=5), encoding="utf-8")
    assert _failed(folder) == {}


def test_a_certificate_dropped_from_the_summary_fails_verify_with_exit_1(folder):
    """The gate a CI job reads must not be cleared by deleting an entry and adjusting the counts."""
    dropped = _ids(folder)[0]
    _drop_from_summary(folder, dropped)
    failed = _failed(folder)
    assert set(failed) == {"run folder: certificates", "run folder: files"}
    assert failed["run folder: certificates"] == f"not in the summary: {dropped}.json"
    result = CliRunner().invoke(main, ["verify", str(folder), "--device", "cpu"])
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and "run folder: certificates" in result.output


def test_a_certificate_and_its_entry_deleted_leave_its_files_behind(folder):
    dropped = _ids(folder)[0]
    _drop_from_summary(folder, dropped)
    (folder / f"{dropped}.json").unlink()
    failed = _failed(folder)
    assert set(failed) == {"run folder: files"}
    assert f"{dropped}.closest.png" in failed["run folder: files"]
    # Every file of it deleted too is a smaller run, not a folder that disagrees with itself: only a signature
    # over the summary (--sign-key) tells it from the run that was made.
    for path in folder.glob(f"{dropped}.*"):
        path.unlink()
    assert _failed(folder) == {}


def test_a_certificate_copied_under_another_id_is_named(folder):
    source = _ids(folder)[1]
    copy = _json(folder / f"{source}.json")
    copy["image"]["id"] = "another-name"
    _write(folder / "another-name.json", copy)
    _add_to_summary(folder, copy)
    failed = _failed(folder)
    assert set(failed) == {"run folder: one certificate per image"}
    assert "is certified twice" in failed["run folder: one certificate per image"]
    assert {repr(source), "'another-name'"} <= set(failed["run folder: one certificate per image"].split(" as ")[1]
                                                 .split(" and "))


def test_a_certificate_under_a_file_name_not_its_id_is_named(folder):
    source = _ids(folder)[1]
    shutil.copy(folder / f"{source}.json", folder / "renamed.json")
    failed = _failed(folder)
    assert f"renamed.json holds the certificate of id {source!r}" in failed["run folder: ids"]
    assert "not in the summary: renamed.json" in failed["run folder: certificates"]


def test_a_forged_extra_certificate_from_another_run_is_named(folder, tiny_model, tmp_path):
    from verifier.api import certify

    other = tmp_path / "other"
    images = write_images(tmp_path / "other-images", count=1)
    (forged,) = certify(tiny_model, images[:1], other, VerifierConfig(**QUICK | {"generations": 4}))
    forged["image"]["id"] = "forged"
    _write(folder / "forged.json", forged)
    _add_to_summary(folder, forged)
    failed = _failed(folder)
    assert "forged: another config than run.json's" in failed["run folder: run.json"]


def test_a_folder_without_its_summary_is_an_unfinished_run(folder):
    (folder / "summary.json").unlink()
    assert _failed(folder)["summary"].startswith("summary.json is missing; the summary is written when a run finishes")


def test_run_json_of_another_run_is_named(folder):
    record = _json(folder / "run.json")
    record["config"]["generations"] = 64
    _write(folder / "run.json", record)
    assert "another config than run.json's" in _failed(folder)["run folder: run.json"]
    (folder / "run.json").unlink()
    assert _failed(folder)["run folder: run.json"] == "run.json is missing"


def test_an_id_rewritten_into_a_look_alike_spelling_is_named(folder):
    """A decomposed (NFD) spelling looks like the id verifier wrote but is not one it writes."""
    source = _ids(folder)[0]
    look_alike = unicodedata.normalize("NFD", f"caf\u00e9-{source}")
    certificate = _json(folder / f"{source}.json")
    certificate["image"]["id"] = look_alike
    (folder / f"{source}.json").unlink()
    _write(folder / f"{look_alike}.json", certificate)
    for path in folder.glob(f"{source}.*"):  # its other files renamed the same way
        path.rename(folder / path.name.replace(source, look_alike, 1))
    summary = _json(folder / "summary.json")
    for entry in summary["images"]:
        if entry["id"] == source:
            entry.update(id=look_alike, certificate=f"{look_alike}.json",
                         certificate_sha256=canonical_sha256(certificate))
    _write(folder / "summary.json", summary)
    failed = _failed(folder)
    assert set(failed) == {"run folder: ids"}
    assert "is not an id verifier writes" in failed["run folder: ids"]


def test_a_certificate_edited_after_the_summary_is_named(folder):
    """Below the float tolerance of the per-certificate checks, yet not the certificate the summary indexed."""
    image_id = _ids(folder)[0]
    certificate = _json(folder / f"{image_id}.json")
    certificate["prediction_error"]["ratio"] += 1e-12
    certificate["conditions"]["existence"]["value"] = certificate["prediction_error"]["ratio"]
    _write(folder / f"{image_id}.json", certificate)
    assert "is not the certificate the summary indexes" in _failed(folder)["summary"]


# --- one writer at a time -------------------------------------------------------------------------------

def _certify_process(model: Path, images: Path, out: Path) -> subprocess.Popen:
    command = [sys.executable, "-c", "from verifier.cli import main; main()", "certify", str(model), str(images),
               "--out", str(out), "--batch-size", "1", "--inversion-steps", "2", "--framing-steps", "2",
               "--generations", "2", "--device", "cpu"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"OMP_NUM_THREADS": "1"})


def test_a_second_certify_on_a_folder_being_written_is_refused_and_a_killed_holder_is_taken_over(tiny_model, tmp_path):
    images = tmp_path / "images"
    write_images(images, count=2)
    out = tmp_path / "run"
    holder = hold_the_folder(tiny_model, images, out)
    try:
        second = _certify_process(tiny_model, images, out)
        _, refused = second.communicate(timeout=300)
        assert second.returncode == 2, refused
        assert f"is being written by verifier certify (pid {holder.pid} on host {socket.gethostname()})" in refused
        assert "model " not in refused, "refused before loading the model"
        assert holder.poll() is None, "the refused run must not have disturbed the holder"
    finally:
        holder.kill()  # a killed holder leaves its lock file; the operating system has released the lock itself
        holder.wait()
    assert f"pid {holder.pid}" in (out / ".verifier.lock").read_text()
    resumed = _certify_process(tiny_model, images, out)
    _, messages = resumed.communicate(timeout=600)
    assert resumed.returncode in (0, 1), messages
    assert f"pid {resumed.pid}" in (out / ".verifier.lock").read_text()
    assert _failed(out) == {} and len(_ids(out)) == 2


def test_a_lost_run_json_is_written_again_from_agreeing_certificates(tiny_model, folder):
    """A finished folder whose run.json was deleted resumes (nothing redone); one whose certificates are another
    run's stays refused."""
    from verifier.api import certify

    images = sorted(Path(c["path"]) for c in _json(folder / "summary.json")["images"])
    (folder / "run.json").unlink()
    messages = []
    certify(tiny_model, images, folder, VerifierConfig(**QUICK), progress=messages.append)
    assert any("run.json was missing: written again from the 3 certificate(s)" in m for m in messages), messages
    assert any(m.startswith("resuming: 3 images already certified") for m in messages), messages
    assert _failed(folder) == {}
    (folder / "run.json").unlink()
    with pytest.raises(OutputFolderError, match="no run.json"):
        certify(tiny_model, images, folder, VerifierConfig(**QUICK | {"generations": 4}))
    assert not (folder / "run.json").exists()
