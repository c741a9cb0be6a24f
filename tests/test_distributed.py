"""Many processes through a real ``accelerate launch``: the shard count must not change a certificate.

Two CPU processes finish a run one process started (as after a kill): they must reuse its finished
certificates, certify every second image still to do each, write certificates equal to the ones
one process writes (witness files byte for byte), and leave one summary from the main process: a
folder ``verify`` checks whole. A group started on a folder another run holds is refused at once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.holder import hold_the_folder

from verifier.reference_models import reference_model_path

FIXTURE = reference_model_path("fixture-16px")
IMAGES = ["dup00-astronaut-x400", "held-flower-whole", "dup02-coffee-x400"]
# A small budget: the test is about sharding, not about detection. One image per batch and one
# thread per process, so that both runs do the same arithmetic in the same order.
OPTIONS = ["--device", "cpu", "--batch-size", "1", "--inversion-steps", "30", "--framing-steps", "30",
           "--generations", "8", "--sampling-doublings", "1"]
REDONE = ["dup00-astronaut-x400", "dup02-coffee-x400"]  # a memorized image for each process
SAME = ("verdict", "verdict_reason", "conditions", "prediction_error", "witness", "image", "model", "run_key")


def _run(command: list[str], out: Path) -> subprocess.CompletedProcess:
    environment = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    arguments = ["certify", str(FIXTURE), *[str(FIXTURE / "images" / f"{name}.png") for name in IMAGES],
                 "--out", str(out), *OPTIONS]
    return subprocess.run(command + arguments, capture_output=True, text=True, env=environment, timeout=600)


def _accelerate(processes: int) -> list[str]:
    # --multi_gpu is accelerate's multi-process launcher (torchrun); on a machine without GPUs the
    # processes compute on the CPU and talk over gloo. (--cpu alone starts one process, or needs mpirun.)
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "verifier"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process certifies every image; two processes then finish a copy of that run from which two
    certificates were removed (as if killed): they must resume the others and redo the two, one each."""
    folder = tmp_path_factory.mktemp("distributed")
    one = _run([sys.executable, "-m", "verifier"], folder / "one")
    shutil.copytree(folder / "one", folder / "two")
    for name in REDONE:
        (folder / "two" / f"{name}.json").unlink()
    kept = {name: (folder / "two" / f"{name}.json").stat().st_mtime_ns for name in IMAGES if name not in REDONE}
    two = _run(_accelerate(2), folder / "two")
    return folder, one, two, kept


def _certificate(folder: Path, name: str) -> dict:
    return json.loads((folder / f"{name}.json").read_text())


def test_two_processes_resume_a_run_and_write_what_one_process_writes(runs):
    folder, one, two, kept = runs
    assert one.returncode == 1, one.stderr  # memorized images found: the gate's answer
    assert two.returncode == 1, two.stderr
    # Every process saw the finished certificates and left them alone...
    assert two.stderr.count(f"resuming: {len(kept)} images already certified") == 2, two.stderr
    assert {name: (folder / "two" / f"{name}.json").stat().st_mtime_ns for name in kept} == kept
    # ...and certified its own share of the rest: every second image still to do.
    for index, name in enumerate(REDONE):
        assert f"[process {index + 1}/2] {name}: " in two.stderr, two.stderr
    for name in REDONE:
        single, sharded = _certificate(folder / "one", name), _certificate(folder / "two", name)
        for key in SAME:
            assert sharded[key] == single[key], (name, key)
        assert (folder / "two" / f"{name}.witness.safetensors").read_bytes() == (
            folder / "one" / f"{name}.witness.safetensors").read_bytes()
    # One summary and one table, from the main process, covering every image.
    summary = json.loads((folder / "two" / "summary.json").read_text())
    assert [image["id"] for image in summary["images"]] == IMAGES
    assert summary["counts"] == json.loads((folder / "one" / "summary.json").read_text())["counts"]
    assert two.stdout.count("certificates in") == 1


def test_the_groups_folder_passes_verify_as_one_unit(runs):
    from verifier.verify import verify

    folder, _, _, _ = runs
    result = verify(folder / "two")
    assert result.passed, [check for check in result.checks if not check.passed]
    assert {check.name for check in result.checks} >= {"summary", "run folder: certificates", "run folder: run.json"}


def test_a_group_started_on_a_folder_another_run_holds_is_refused_at_once(tmp_path):
    """The group's main process takes the lock for the group; refused, it stops the group before any process
    loads the model or writes. accelerate's launcher reports a failed group as exit 1 whatever its processes'
    codes; the root cause it prints is the main process's exit 2 (docs/usage.md)."""
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(FIXTURE / "images" / f"{IMAGES[0]}.png", images)
    out = tmp_path / "run"
    holder = hold_the_folder(FIXTURE, images, out)
    try:
        environment = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        group = subprocess.run(_accelerate(2) + ["certify", str(FIXTURE), str(images), "--out", str(out), *OPTIONS],
                               capture_output=True, text=True, env=environment, timeout=300)
        assert holder.poll() is None, "the refused group must not have disturbed the holder"
    finally:
        holder.kill()
        holder.wait()
    assert group.returncode != 0, group.stderr
    assert f"is being written by verifier certify (pid {holder.pid}" in group.stderr
    assert "exitcode  : 2" in group.stderr, group.stderr  # the main process's usage error, as the launcher reports it
    assert "model " not in group.stderr, "refused before any process loaded the model"
    assert sorted(path.name for path in out.iterdir()) == [".verifier.lock", "run.json"]
