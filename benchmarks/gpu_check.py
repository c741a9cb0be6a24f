"""The GPU check: everything one short run on a CUDA machine should measure, written as JSON plus a log.

    bash benchmarks/gpu_check.sh [--budget-s 420]      # on the GPU machine: installs the carried wheels, runs this
    python benchmarks/gpu_check.py --out DIR [--smoke] [--budget-s S] [--device D]

Parts, in this order, each recorded in ``DIR/gpu_check.json`` as soon as it ends (a run cut short keeps what
it measured), each with its status (``ok``, ``failed`` with the error, or ``skipped`` with the reason) and
seconds:

1. ``environment``: GPU name, driver, memory, torch / CUDA / cuDNN / diffusers / transformers versions, the
   TF32 switches, and the peak matrix-multiply throughput measured with a large ``torch.matmul`` in bfloat16
   and float32 (TFLOP/s, mean of timed products after warm-ups).
2. ``tests``: the ``gpu``-marked tests, and the adapter contract (``tests/test_adapters.py``) with
   ``VERIFIER_TEST_DEVICE`` set to the device: passed / failed / skipped counts from pytest's JUnit XML.
3. ``demo_float32``: the real ``verifier demo --device D`` on every shipped whole-image reference model
   (``benchmarks/demo_numbers.py``): the exit code (0: every scored verdict agrees with the manifest) and the
   verdicts and numbers against the CPU's recorded ones (``benchmarks/figures/demo-golden-cpu.json``): the
   largest absolute difference of the error ratio and of the best similarity is the tolerance measured.
4. ``full_size``: Stable Diffusion 1.5 at 512 px and SDXL at 1024 px (random weights from the published
   configs, ``benchmarks/full_size.py``) certifying a batch of images end to end at the **default** budget
   (``verifier.api.certify``, default ``VerifierConfig`` but for the setting under test), per setting: bfloat16
   autocast (float32 weights, variables and loss), float32, and bfloat16 autocast with gradient checkpointing.
   Per run: images, seconds, images per hour, peak memory, the rows per denoiser call chosen, per stage
   (error grid, inversion, sampling) its seconds, denoiser evaluations, TFLOP (evaluations x the FLOPs of one
   evaluation, counted with ``torch.utils.flop_counter``), TFLOP/s and fraction of the measured matmul peak
   of the precision used.
5. ``demo_bfloat16``: the demo again under ``--autocast bfloat16``: verdicts and numbers against part 3's.
6. ``decisions``: what the figures say about the defaults (docs/gpu.md): bfloat16 autocast on CUDA if its
   verdicts match float32 on every reference model, gradient checkpointing if it certifies more images per
   hour, and the issue's goals (800 SD 1.5 and 80 SDXL images per hour, 40% of peak in inversion and sampling).

Time: ``--budget-s`` (default 420 s) bounds the run. Each part has a share; a full-size run certifies as
many images as its share holds at the throughput measured so far (at least one; a run whose single image
would not fit in what is left is skipped and says so), so the whole stays inside the budget.

``--smoke`` dry-runs every part on the CPU in about a minute, so that this script cannot rot: tiny
matrices, one gpu-marked test file and one contract test, the fixture model's demo with a reduced budget,
and the fixture model standing in for the full-size architectures with a reduced budget. Its figures mean
nothing; its JSON has every field a real run has. ``tests/test_gpu_check.py`` runs it in the suite.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(HERE / "reference_model")]

GOLDEN = HERE / "figures" / "demo-golden-cpu.json"
# Shares of the budget (fractions); what a part leaves unused goes to the later ones.
SHARES = {"environment": 0.04, "tests": 0.18, "demo_float32": 0.16, "full_size": 0.46, "demo_bfloat16": 0.16}
# Full-size runs in priority order: (architecture, setting, share of the full-size part, images wanted).
# A run's share is its fraction of what the runs still to come may take, so a skipped run's time goes on.
FULL_SIZE_RUNS = [("sd15", "bfloat16", 0.24, 16), ("sd15", "float32", 0.16, 2), ("sdxl", "bfloat16", 0.26, 4),
                  ("sd15", "bfloat16+checkpointing", 0.12, 8), ("sdxl", "bfloat16+checkpointing", 0.14, 2),
                  ("sdxl", "float32", 0.08, 1)]
ASSUMED_FRACTION_OF_PEAK = 0.3  # for sizing the first run only; later runs use the throughput measured
SMOKE_CONFIG = dict(inversion_steps=2, inversion_max_steps=2, inversion_noise_draws=1, error_timesteps=2,
                    error_noise_draws=1, generations=2, sampling_doublings=0, sampling_steps=2, decode_witness=False,
                    framing_search=False)
GOALS = {"sd15_images_per_hour": 800, "sdxl_images_per_hour": 80, "fraction_of_peak": 0.40}


class Check:
    """The run's results, written to ``out/gpu_check.json`` after every part."""

    def __init__(self, out: Path, smoke: bool, budget_s: float, device: torch.device):
        self.out, self.smoke, self.device = out, smoke, device
        self.started = time.perf_counter()
        self.budget_s = budget_s
        self.results = {"command": " ".join(["python", "benchmarks/gpu_check.py", *sys.argv[1:]]),
                        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "smoke": smoke, "device": str(device),
                        "budget_s": budget_s, "parts": {}}

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    def share(self, name: str) -> float:
        """Seconds this part may take: its share plus what earlier parts left unused, never more than is left."""
        names = list(SHARES)
        planned_end = sum(SHARES[earlier] for earlier in names[: names.index(name) + 1]) * self.budget_s
        return max(0.0, min(self.left(), planned_end - (time.perf_counter() - self.started)))

    def part(self, name: str, function, *args) -> dict | None:
        say(f"== {name} ({self.left():.0f} s of the budget left)")
        started = time.perf_counter()
        try:
            record = {"status": "ok", **function(*args)}
        except Exception as error:  # noqa: BLE001 - a failed part is recorded and the next one runs
            record = {"status": "failed", "error": f"{type(error).__name__}: {error}",
                      "traceback": traceback.format_exc(limit=8)}
            say(f"{name} failed: {record['error']}")
        record["seconds"] = round(time.perf_counter() - started, 1)
        self.results["parts"][name] = record
        self.write()
        return record

    def write(self) -> None:
        self.results["elapsed_s"] = round(time.perf_counter() - self.started, 1)
        path = self.out / "gpu_check.json"
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps(self.results, indent=1, default=_plain) + "\n")
        os.replace(partial, path)


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def significant(value: float | None, digits: int = 4) -> float | None:
    """``value`` to ``digits`` significant digits (a CPU smoke run's TFLOP/s are thousandths)."""
    return None if value is None else float(f"{value:.{digits}g}")


def _plain(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- 1. environment -----------------------------------------------------------------------------
def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, repeats: int) -> float:
    """TFLOP/s of ``size``-cubed products in ``dtype``: the mean of ``repeats`` timed products after 3 warm-ups."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        torch.matmul(a, b)
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e12


def environment(check: Check) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    device = check.device
    record = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
              "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
              **{name: installed(name) for name in ("diffusers", "transformers", "accelerate", "lpips", "pydantic")},
              "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
              "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        record |= {"gpu": properties.name, "gpu_memory_gib": round(properties.total_memory / 2**30, 1),
                   "multiprocessors": properties.multi_processor_count, "driver": _driver()}
    else:
        record |= {"gpu": None, "cpu": platform.processor() or platform.machine()}
    size, repeats = (256, 2) if check.smoke else (8192, 10)
    record["matmul_size"] = size
    record["matmul_tflops"] = {name: significant(matmul_peak(device, dtype, size, repeats))
                               for name, dtype in (("bfloat16", torch.bfloat16), ("float32", torch.float32))}
    say(f"{record.get('gpu') or record.get('cpu')}: matmul {record['matmul_tflops']} TFLOP/s")
    return record


def _driver() -> str | None:
    try:
        output = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30)
        return output.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# -- 2. tests -----------------------------------------------------------------------------------
def tests(check: Check, seconds: float) -> dict:
    device = "cuda" if check.device.type == "cuda" else "cpu"
    if check.smoke:  # one gpu-marked file (skipped without CUDA) and one contract test
        selections = {"gpu_marked": ["tests/test_behaviour.py", "-m", "gpu"],
                      "adapter_contract": ["tests/test_adapters.py", "-k",
                                           "test_family_and_native_resolution and sd-epsilon"]}
    else:
        selections = {"gpu_marked": ["tests", "-m", "gpu"], "adapter_contract": ["tests/test_adapters.py"]}
    record = {"device": device}
    deadline = time.perf_counter() + seconds
    for name, selection in selections.items():
        left = deadline - time.perf_counter()
        if left < 10:
            record[name] = {"status": "skipped", "reason": f"{left:.0f} s of the part's share left"}
            continue
        report = check.out / f"pytest-{name}.xml"
        # addopts cleared: one process (no xdist), so a CUDA context is not made per worker.
        command = [sys.executable, "-m", "pytest", *selection, "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                   "-o", "addopts="]
        variables = os.environ | {"VERIFIER_TEST_DEVICE": device, "PYTHONPATH": _python_path()}
        try:
            finished = subprocess.run(command, cwd=REPO, env=variables, capture_output=True, text=True,
                                      timeout=left)
            outcome = {"exit_code": finished.returncode, **_junit_counts(report),
                       "tail": finished.stdout[-1500:] + finished.stderr[-500:]}
        except subprocess.TimeoutExpired:
            outcome = {"exit_code": None, "status": "timed out", "timeout_s": round(left)}
        record[name] = {"command": " ".join(command[1:]), **outcome}
        say(f"{name}: {', '.join(f'{k} {v}' for k, v in outcome.items() if k != 'tail')}")
    return record


def _python_path() -> str:
    return os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))


def _junit_counts(report: Path) -> dict:
    if not report.is_file():
        return {"tests": None}
    suite = ElementTree.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    failed = [f"{case.get('classname')}.{case.get('name')}" for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    return counts | {"passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
                     "failed_tests": failed}


# -- 3 and 5. the reference models' demo --------------------------------------------------------
def demo(check: Check, seconds: float, autocast: str, reference_runs: dict | None) -> dict:
    from demo_numbers import compare, run_demo
    from verifier.reference_models import WHOLE_IMAGE_MODELS

    device = "cuda" if check.device.type == "cuda" else "cpu"
    golden = json.loads(GOLDEN.read_text())["models"] if GOLDEN.is_file() else {}
    # One batch for the demo's 17 images instead of 16 + 1: half the sequential passes, the same numbers.
    extra = ["--batch-size", "32"]
    if check.smoke:
        config = check.out / "smoke-config.toml"
        config.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in SMOKE_CONFIG.items()))
        extra += ["--config", str(config)]
    models = ["fixture-16px"] if check.smoke else list(WHOLE_IMAGE_MODELS)
    deadline = time.perf_counter() + seconds
    record = {"autocast": autocast, "golden": str(GOLDEN.relative_to(REPO)), "models": {}, "runs": {}}
    for model in models:
        if record["models"] and time.perf_counter() + max(r["seconds"] for r in record["runs"].values()) > deadline:
            record["models"][model] = {"status": "skipped", "reason": "the part's share of the budget is spent"}
            continue
        with tempfile.TemporaryDirectory(prefix="verifier-gpu-demo-") as scratch:
            run = run_demo(model, Path(scratch) / model, device, autocast, extra)
        record["runs"][model] = run
        summary = {"exit_code": run["exit_code"], "agrees_with_manifest": run["exit_code"] == 0,
                   "seconds": run["seconds"], "images": len(run["images"])}
        if model in golden:
            summary["vs_cpu_float32"] = compare(run, golden[model])
        if reference_runs and model in reference_runs:
            summary["vs_float32_here"] = compare(run, reference_runs[model])
        record["models"][model] = summary
        say(f"{model} autocast={autocast}: exit {run['exit_code']}, {run['seconds']:.0f} s, "
            + "; ".join(f"{key}: {len(value['verdicts_differing'])} verdicts differ, largest |diff| "
                        + ", ".join(f"{n} {v:.1e}" for n, v in value["largest_difference"].items() if v is not None)
                        for key, value in summary.items() if key.startswith("vs_")))
    return record


# -- 4. full-size models ------------------------------------------------------------------------
def photographs(resolution: int, count: int, folder: Path) -> list[Path]:
    """``count`` distinct square crops of scikit-image's bundled photographs at ``resolution``, as PNG files."""
    from PIL import Image
    from skimage import data

    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        photo = sources[index % len(sources)]
        side = int(min(photo.shape[:2]) * rng.uniform(0.6, 1.0))
        top = int(rng.integers(0, photo.shape[0] - side + 1))
        left = int(rng.integers(0, photo.shape[1] - side + 1))
        crop = Image.fromarray(photo[top : top + side, left : left + side]).resize((resolution, resolution))
        paths.append(folder / f"photo-{index:02d}.png")
        crop.save(paths[-1])
    return paths


def evaluation_flops(model) -> dict:
    """FLOPs of one denoiser evaluation (one row, forward) and of one inversion evaluation (forward and the
    backward to the conditioning), counted by ``torch.utils.flop_counter`` in the model's current state
    (with gradient checkpointing on, the recomputed forward is counted too)."""
    from torch.utils.flop_counter import FlopCounterMode

    from verifier.error import denoising_error

    z0 = model.encode_images([np.zeros((model.resolution, model.resolution, 3), dtype=np.float32)])
    timestep = torch.tensor(model.objective.grid(1), device=z0.device)
    noise = torch.randn_like(z0)
    empty = model.empty_conditioning()
    with FlopCounterMode(display=False) as forward, torch.no_grad():
        denoising_error(model, z0, noise, timestep, empty)
    leaves = empty.map(lambda tensor: tensor.detach().requires_grad_(True))
    with FlopCounterMode(display=False) as both:
        denoising_error(model, z0, noise, timestep, leaves).sum().backward()
    return {"forward": forward.get_total_flops(), "forward_backward": both.get_total_flops()}


def full_size(check: Check, seconds: float) -> dict:
    from full_size import build

    from verifier.models import load_model
    from verifier.reference_models import reference_model_path

    deadline = time.perf_counter() + seconds
    record = {"runs": [], "note": "random weights from the published configs (benchmarks/full_size.py); the "
                                  "default VerifierConfig but for autocast and gradient checkpointing"}
    if check.smoke:
        record["note"] += "; smoke: the fixture model stands in for both architectures, with a reduced budget"
    peaks = check.results["parts"].get("environment", {}).get("matmul_tflops", {})
    models: dict[str, object] = {}
    seconds_per_tflop: dict[str, float] = {}  # measured throughput per precision, to size later runs
    for index, (architecture, setting, fraction, wanted) in enumerate(FULL_SIZE_RUNS):
        entry = {"architecture": architecture, "setting": setting, "images_wanted": wanted}
        try:
            if architecture not in models:
                built = time.perf_counter()
                models.clear()  # one full-size model in memory at a time
                if check.device.type == "cuda":
                    torch.cuda.empty_cache()
                models[architecture] = (load_model(reference_model_path("fixture-16px"), device=str(check.device))
                                        if check.smoke else build(architecture, check.device,
                                                                  Path(tempfile.mkdtemp(prefix="verifier-gpu-"))))
                say(f"{architecture}: built in {time.perf_counter() - built:.0f} s")
            to_come = sum(run[2] for run in FULL_SIZE_RUNS[index:])
            share = max(0.0, deadline - time.perf_counter()) * fraction / to_come
            entry |= certify_full_size(check, models[architecture], setting, wanted, share, peaks, seconds_per_tflop)
        except Exception as error:  # noqa: BLE001 - out of memory and the like are results too
            entry |= {"status": "failed", "error": f"{type(error).__name__}: {error}"[:2000]}
            if check.device.type == "cuda":
                torch.cuda.empty_cache()
        record["runs"].append(entry)
        say(f"{architecture} {setting}: " + ", ".join(
            f"{key} {entry[key]}" for key in ("status", "images", "images_per_hour", "peak_memory_gib",
                                              "rows_per_call", "reason", "error") if key in entry))
        check.results["parts"]["full_size"] = {"status": "running", **record}
        check.write()
    return record


def certify_full_size(check: Check, model, setting: str, wanted: int, share: float, peaks: dict,
                      seconds_per_tflop: dict) -> dict:
    from verifier.api import certify, denoiser_evaluations
    from verifier.config import VerifierConfig

    autocast = "bfloat16" if setting.startswith("bfloat16") else "off"
    checkpointing = setting.endswith("+checkpointing")
    config = VerifierConfig(device=str(check.device), autocast=autocast, gradient_checkpointing=checkpointing,
                            **(SMOKE_CONFIG if check.smoke else {}))
    model.autocast = None if autocast == "off" else torch.bfloat16
    if checkpointing:
        model.denoiser().enable_gradient_checkpointing()
    else:
        model.denoiser().disable_gradient_checkpointing()
    flops = evaluation_flops(model)
    plan = denoiser_evaluations(config)
    per_image_tflop = (plan["inversion_forward_backward"] * flops["forward_backward"]
                       + (plan["error_forward"] + plan["sampling_forward"]) * flops["forward"]) / 1e12
    precision = "bfloat16" if autocast != "off" else "float32"
    rate = seconds_per_tflop.get(precision)
    if rate is None and peaks.get(precision):
        rate = 1 / (ASSUMED_FRACTION_OF_PEAK * peaks[precision])
    per_image_s = per_image_tflop * rate if rate else None
    images = wanted if per_image_s is None else min(wanted, int(share // per_image_s))
    sizing = {"flops_per_evaluation": flops, "planned_tflop_per_image": significant(per_image_tflop),
              "estimated_s_per_image": None if per_image_s is None else round(per_image_s, 1)}
    if images < 1:
        return {"status": "skipped", "images": 0, **sizing,
                "reason": f"one image would take about {per_image_s:.0f} s; {share:.0f} s of the share left"}
    with tempfile.TemporaryDirectory(prefix="verifier-gpu-full-") as scratch:
        paths = photographs(model.resolution, images, Path(scratch))
        lines: list[str] = []
        if check.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(check.device)
        synchronize(check.device)
        started = time.perf_counter()
        certificates = certify(model, paths, Path(scratch) / "out", config, progress=lines.append)
        synchronize(check.device)
        elapsed = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(check.device) / 2**30 if check.device.type == "cuda" else None
    rows = next((re.search(r"(\d+) rows per denoiser call \((.*)\)", line) for line in lines
                 if "rows per denoiser call" in line), None)
    stages = stage_figures(certificates, flops, config, peaks.get(precision))
    total_tflop = sum(stage["tflop"] for stage in stages.values())
    seconds_per_tflop[precision] = elapsed / total_tflop if total_tflop else seconds_per_tflop.get(precision)
    return {"status": "ok", **sizing, "images": len(certificates),
            "images_note": None if images == wanted else f"{wanted} wanted; {images} fit the share of the budget",
            "seconds": round(elapsed, 1), "images_per_hour": round(len(certificates) / elapsed * 3600, 1),
            "peak_memory_gib": None if peak is None else round(peak, 2),
            "rows_per_call": int(rows.group(1)) if rows else None, "rows_source": rows.group(2) if rows else None,
            "precision": precision, "verdicts": sorted({c["verdict"] for c in certificates}),
            "evaluations_per_image": certificates[0]["budget"]["denoiser_evaluations_spent"],
            "stages": stages, "tflops_overall": significant(total_tflop / elapsed)}


def stage_figures(certificates: list[dict], flops: dict, config, peak: float | None) -> dict:
    """Seconds, evaluations, TFLOP, TFLOP/s and fraction of peak per stage, summed over the images.

    The certificates' timings are each image's share of its batch's stage: the error grid (the empty prompt's
    pass), inversion (the Adam steps and the checks of the error ratio, which are grid passes) and sampling
    (denoiser steps; the VAE decodes are in the seconds but not in the FLOPs)."""
    grid = config.error_timesteps * config.error_noise_draws
    totals = {"error_grid": [0.0, 0, 0.0], "inversion": [0.0, 0, 0.0], "sampling": [0.0, 0, 0.0]}
    for certificate in certificates:
        spent, timings = certificate["budget"]["denoiser_evaluations_spent"], certificate["timings"]
        checks = spent["error_forward"] - grid
        for stage, seconds, evaluations, flop in (
                ("error_grid", timings["error_s"], grid, grid * flops["forward"]),
                ("inversion", timings["invert_s"], spent["inversion_forward_backward"] + checks,
                 spent["inversion_forward_backward"] * flops["forward_backward"] + checks * flops["forward"]),
                ("sampling", timings["generate_s"], spent["sampling_forward"],
                 spent["sampling_forward"] * flops["forward"])):
            totals[stage][0] += seconds
            totals[stage][1] += evaluations
            totals[stage][2] += flop / 1e12
    figures = {}
    for stage, (seconds, evaluations, tflop) in totals.items():
        rate = tflop / seconds if seconds > 0 else None
        figures[stage] = {"seconds": round(seconds, 2), "evaluations": evaluations, "tflop": significant(tflop),
                          "tflops": significant(rate), "fraction_of_peak": None if rate is None or not peak
                          else significant(rate / peak, 3)}
    return figures


# -- 6. decisions -------------------------------------------------------------------------------
def decisions(check: Check) -> dict:
    parts = check.results["parts"]
    float32_demo = parts.get("demo_float32", {}).get("models", {})
    bfloat16_demo = parts.get("demo_bfloat16", {}).get("models", {})
    compared = [model for model, entry in bfloat16_demo.items() if "vs_float32_here" in entry]
    matching = [model for model in compared
                if not bfloat16_demo[model]["vs_float32_here"]["verdicts_differing"]
                and bfloat16_demo[model]["agrees_with_manifest"] and float32_demo[model]["agrees_with_manifest"]]
    runs = {(run["architecture"], run["setting"]): run for run in parts.get("full_size", {}).get("runs", [])
            if run.get("status") == "ok"}

    def per_hour(architecture: str, setting: str) -> float | None:
        return runs.get((architecture, setting), {}).get("images_per_hour")

    speedups = {architecture: _ratio(per_hour(architecture, "bfloat16"), per_hour(architecture, "float32"))
                for architecture in ("sd15", "sdxl")}
    measured = [speedup for speedup in speedups.values() if speedup is not None]
    if not compared or len(compared) < len(float32_demo):
        dtype_choice, why = "undecided", "not every reference model ran in both precisions"
    elif len(matching) < len(compared):
        dtype_choice, why = "float32", ("bfloat16 verdicts differ from float32's or the manifests' on: "
                                        + ", ".join(model for model in compared if model not in matching))
    elif not measured:
        dtype_choice, why = "undecided", "verdicts match, but no float32 full-size run measured the speed-up"
    elif min(measured) <= 1:
        dtype_choice, why = "float32", f"verdicts match, but bfloat16 is not faster: {speedups}"
    else:
        dtype_choice, why = "autocast bfloat16", f"verdicts match on {len(matching)} models; speed-up {speedups}"
    checkpointing = {architecture: {"images_per_hour": {"off": per_hour(architecture, "bfloat16"),
                                                        "on": per_hour(architecture, "bfloat16+checkpointing")},
                                    "rows_per_call": {"off": runs.get((architecture, "bfloat16"), {}).get("rows_per_call"),
                                                      "on": runs.get((architecture, "bfloat16+checkpointing"), {})
                                                      .get("rows_per_call")}}
                     for architecture in ("sd15", "sdxl")}
    for entry in checkpointing.values():
        off, on = entry["images_per_hour"]["off"], entry["images_per_hour"]["on"]
        entry["choice"] = "undecided" if off is None or on is None else ("on" if on > off else "off")
    fractions = {f"{architecture} {setting} {stage}": figures["fraction_of_peak"]
                 for (architecture, setting), run in runs.items() if setting == "bfloat16"
                 for stage, figures in run["stages"].items() if stage in ("inversion", "sampling")}
    return {
        "dtype_on_cuda": {"models_compared": compared, "models_matching": matching, "speedup_bfloat16": speedups,
                          "choice": dtype_choice, "why": why,
                          "rule": "autocast bfloat16 when its verdicts equal float32's and the manifests' on every "
                                  "reference model and it certifies more images per hour; else float32"},
        "gradient_checkpointing": checkpointing | {
            "rule": "on by default for full-size models only where it certifies more images per hour"},
        "goals": {"sd15_images_per_hour": _goal(per_hour("sd15", "bfloat16"), GOALS["sd15_images_per_hour"]),
                  "sdxl_images_per_hour": _goal(per_hour("sdxl", "bfloat16"), GOALS["sdxl_images_per_hour"]),
                  "fraction_of_peak": {name: _goal(value, GOALS["fraction_of_peak"]) for name, value in fractions.items()}},
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else round(a / b, 2)


def _goal(value: float | None, goal: float) -> dict:
    return {"value": value, "goal": goal, "met": None if value is None or not math.isfinite(value) else value >= goal}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-check-out")))
    parser.add_argument("--smoke", action="store_true", help="dry-run every part on the CPU with tiny sizes")
    parser.add_argument("--budget-s", type=float, default=420.0, help="seconds the whole run may take")
    parser.add_argument("--device", default=None, help="default: cuda, or cpu with --smoke")
    args = parser.parse_args()
    from verifier.models import resolve_device

    device = resolve_device(args.device or ("cpu" if args.smoke else "cuda"))
    args.out.mkdir(parents=True, exist_ok=True)
    check = Check(args.out, args.smoke, args.budget_s, device)
    say(f"gpu_check on {device}{' (smoke)' if args.smoke else ''}, budget {args.budget_s:.0f} s, results in "
        f"{args.out / 'gpu_check.json'}")
    check.part("environment", environment, check)
    check.part("tests", tests, check, check.share("tests"))
    float32 = check.part("demo_float32", demo, check, check.share("demo_float32"), "off", None)
    check.part("full_size", full_size, check, check.share("full_size"))
    check.part("demo_bfloat16", demo, check, check.share("demo_bfloat16"), "bfloat16",
               (float32 or {}).get("runs"))
    check.part("decisions", decisions, check)
    say(f"done in {time.perf_counter() - check.started:.0f} s: {args.out / 'gpu_check.json'}")
    say(json.dumps(check.results["parts"]["decisions"], indent=1, default=_plain))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
