"""Shared fixtures and marker gates.

- ``slow`` tests (minutes each) run only with ``VERIFIER_SLOW=1``.
- ``field`` tests (the default config's verdicts end to end on the shipped reference models, each clean
  verdict with the whole framing search: minutes each) run only with ``VERIFIER_FIELD=1``; CI runs them.
- ``gpu`` tests run only where torch sees a CUDA device.
- Under pytest-xdist (``-n``, the default in pyproject.toml), each worker gets an equal share of the
  CPU's cores for torch and for the processes it starts (``OMP_NUM_THREADS``), so workers do not
  oversubscribe the machine.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks" / "reference_model"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _share_the_cpu_between_workers() -> None:
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cores // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # the CLI and accelerate processes tests start
        import torch

        torch.set_num_threads(threads)


_share_the_cpu_between_workers()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny random Stable Diffusion pipeline folder (``helpers.tiny_models``), one per test module."""
    from helpers.tiny_models import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def copy(run, tmp_path):
    """A private copy of the requesting module's ``run`` folder, free to edit."""
    import shutil

    target = tmp_path / "certs"
    shutil.copytree(run, target)
    return target


def pytest_collection_modifyitems(config, items):
    run_slow = os.environ.get("VERIFIER_SLOW") == "1"
    run_field = os.environ.get("VERIFIER_FIELD") == "1"
    has_gpu = None
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: set VERIFIER_SLOW=1 to run"))
        if "field" in item.keywords and not run_field:
            item.add_marker(pytest.mark.skip(reason="field: set VERIFIER_FIELD=1 to run (CI does)"))
        if "gpu" in item.keywords:
            if has_gpu is None:
                import torch

                has_gpu = torch.cuda.is_available()
            if not has_gpu:
                item.add_marker(pytest.mark.skip(reason="gpu: no CUDA device"))
