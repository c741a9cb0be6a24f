"""The GPU check's dry run (``benchmarks/gpu_check.sh --smoke``): every part runs on the CPU and writes every
field a real run on a GPU writes, so the script a lent GPU machine runs once cannot rot unseen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAGES = {"error_grid", "inversion", "sampling"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    environment = os.environ | {"OUT": str(out), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    finished = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--smoke"], cwd=REPO, env=environment,
                              capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    return out, json.loads((out / "gpu_check.json").read_text())


def test_every_part_ran_and_the_log_was_kept(smoke):
    out, results = smoke
    assert results["smoke"] is True and results["device"] == "cpu"
    assert {name: part["status"] for name, part in results["parts"].items()} == dict.fromkeys(
        ["environment", "tests", "demo_float32", "full_size", "demo_bfloat16", "decisions"], "ok")
    log = (out / "gpu_check.log").read_text()
    assert "== full_size" in log and "done in" in log


def test_the_environment_has_versions_and_measured_matmul_peaks(smoke):
    environment = smoke[1]["parts"]["environment"]
    assert environment["torch"] and environment["diffusers"]
    assert set(environment["matmul_tflops"]) == {"bfloat16", "float32"}
    assert all(value > 0 for value in environment["matmul_tflops"].values())


def test_the_gpu_marked_tests_and_the_contract_ran_through_pytest(smoke):
    tests = smoke[1]["parts"]["tests"]
    assert tests["gpu_marked"]["exit_code"] == 0 and tests["gpu_marked"]["skipped"] >= 1  # no CUDA here
    contract = tests["adapter_contract"]
    assert contract["exit_code"] == 0 and contract["passed"] == 1 and contract["failed_tests"] == []


def test_the_demo_ran_in_both_precisions_and_was_compared(smoke):
    parts = smoke[1]["parts"]
    float32, bfloat16 = parts["demo_float32"]["models"]["fixture-16px"], parts["demo_bfloat16"]["models"]["fixture-16px"]
    assert float32["images"] == bfloat16["images"] == 8 and float32["exit_code"] in (0, 1)
    compared = bfloat16["vs_float32_here"]
    assert compared["images_compared"] == 8 and compared["missing"] == []
    # bfloat16 arithmetic moves the numbers, a little: a zero would mean autocast never ran.
    assert 0 < compared["largest_difference"]["error_ratio"] < 0.05
    assert "vs_cpu_float32" in float32  # the recorded CPU golden numbers are read


def test_every_full_size_run_reports_throughput_memory_rows_and_stages(smoke):
    runs = smoke[1]["parts"]["full_size"]["runs"]
    assert [(run["architecture"], run["setting"]) for run in runs] == [
        ("sd15", "bfloat16"), ("sd15", "float32"), ("sdxl", "bfloat16"), ("sd15", "bfloat16+checkpointing"),
        ("sdxl", "bfloat16+checkpointing"), ("sdxl", "float32")]
    for run in runs:
        assert run["status"] == "ok", run
        assert run["images"] >= 1 and run["images_per_hour"] > 0 and run["rows_per_call"] >= 1
        assert run["precision"] == ("float32" if run["setting"] == "float32" else "bfloat16")
        assert set(run["stages"]) == STAGES
        assert all(stage["evaluations"] > 0 and stage["tflop"] > 0 for stage in run["stages"].values())
        flops = run["flops_per_evaluation"]
        assert flops["forward_backward"] > flops["forward"] > 0
    plain = next(run for run in runs if run["setting"] == "bfloat16")["flops_per_evaluation"]
    recomputed = next(run for run in runs if run["setting"] == "bfloat16+checkpointing")["flops_per_evaluation"]
    assert recomputed["forward_backward"] > plain["forward_backward"], "checkpointing recomputes the forward"


def test_the_decisions_follow_from_the_figures(smoke):
    decisions = smoke[1]["parts"]["decisions"]
    dtype = decisions["dtype_on_cuda"]
    assert dtype["models_compared"] == ["fixture-16px"]
    # The smoke budget is too small for true verdicts: the rule must not pick bfloat16 from them, and says why.
    assert dtype["models_matching"] == [] and dtype["choice"] == "float32" and "fixture-16px" in dtype["why"]
    assert {"sd15", "sdxl"} <= set(decisions["gradient_checkpointing"])
    assert decisions["goals"]["sd15_images_per_hour"]["goal"] == 800
