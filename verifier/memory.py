"""How many rows one denoiser call may take: chosen from the memory the device has free, not fixed.

A row is one (image, noise draw) or (image, seed) the denoiser sees in one call. A full-size
denoiser's activations grow with the rows: SD 1.5 at 512 px keeps hundreds of megabytes per row for
the backward pass, so inversion's 16 images x 4 draws, or sampling's 16 images x 16 seeds x 2
(classifier-free guidance) rows, would not fit in one call. Every stage therefore splits its rows
into calls of at most ``rows`` (inversion accumulates the gradients of its calls, sampling and the
error grid concatenate their outputs), which changes no result beyond float rounding.

``rows`` is ``denoiser_batch`` when the config sets it; otherwise it is measured: one denoiser
forward with 1 row and one with 2 rows, each with a conditioning that requires gradients, count the
bytes autograd saves for the backward pass (``torch.autograd.graph.saved_tensors_hooks``); their
difference is what a row costs, with gradient checkpointing on or off as the run has it, on any
device. Half of the free memory (CUDA: ``torch.cuda.mem_get_info``; CPU: the kernel's
``MemAvailable``) over that cost is the rows per call. Forward-only calls keep fewer tensors alive
than that, so the same number is safe for them too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from verifier.models.base import ModelAdapter

MEMORY_FRACTION = 0.5  # of the free memory, for one call's activations: the rest for the pipeline, VAE, optimizer
MAX_ROWS = 4096


@dataclass(frozen=True)
class RowBudget:
    """Rows per denoiser call, and where the number came from (recorded in the run's log)."""

    rows: int
    source: str


def free_memory(device: torch.device) -> int | None:
    """Bytes free on ``device`` now, or None where it cannot be read."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    meminfo = Path("/proc/meminfo")
    if device.type == "cpu" and meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def saved_bytes(adapter: ModelAdapter, rows: int) -> int:
    """Bytes autograd saves in one denoiser forward of ``rows`` rows whose conditioning requires gradients."""
    conditioning = adapter.empty_conditioning().expand(rows).map(lambda tensor: tensor.detach().requires_grad_(True))
    z0 = adapter.encode_images([torch.zeros(adapter.resolution, adapter.resolution, 3).numpy()]).expand(rows, -1, -1, -1)
    timesteps = torch.tensor(adapter.objective.grid(1) * rows, device=z0.device)
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        adapter.predict(adapter.objective.noisy(z0, torch.zeros_like(z0), timesteps), timesteps, conditioning)
    return total


def row_budget(adapter: ModelAdapter, denoiser_batch: int | None) -> RowBudget:
    """The rows per denoiser call of a run (see the module docstring)."""
    if denoiser_batch is not None:
        return RowBudget(denoiser_batch, "config denoiser_batch")
    free = free_memory(adapter.device)
    if free is None:
        return RowBudget(MAX_ROWS, f"free memory on {adapter.device} unknown: no limit")
    per_row = max(1, saved_bytes(adapter, 2) - saved_bytes(adapter, 1))
    rows = max(1, min(MAX_ROWS, int(free * MEMORY_FRACTION // per_row)))
    return RowBudget(rows, f"measured: {free / 2**30:.1f} GiB free on {adapter.device}, "
                           f"{per_row / 2**20:.1f} MiB of activations per row")
