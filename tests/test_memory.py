"""Rows per denoiser call, chosen from the free memory (``verifier.memory``)."""

from __future__ import annotations

import pytest

from verifier.memory import MEMORY_FRACTION, free_memory, row_budget, saved_bytes
from verifier.models import load_model
from verifier.reference_models import reference_model_path

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def model():
    return load_model(reference_model_path("fixture-16px"), device="cpu")


def test_a_set_denoiser_batch_is_used_as_it_is(model):
    assert row_budget(model, 5).rows == 5 and row_budget(model, 5).source == "config denoiser_batch"


def test_measured_rows_are_half_the_free_memory_over_a_rows_activations(model):
    per_row = saved_bytes(model, 2) - saved_bytes(model, 1)
    assert per_row > 0 and saved_bytes(model, 3) - saved_bytes(model, 2) == per_row  # linear in the rows
    budget = row_budget(model, None)
    free = free_memory(model.device)
    assert free is not None and budget.source.startswith("measured")
    assert abs(budget.rows - min(4096, free * MEMORY_FRACTION // per_row)) <= 0.05 * budget.rows  # free memory moves


def test_gradient_checkpointing_keeps_fewer_activations_per_row(model):
    plain = saved_bytes(model, 2) - saved_bytes(model, 1)
    model.denoiser().enable_gradient_checkpointing()
    try:
        recomputed = saved_bytes(model, 2) - saved_bytes(model, 1)
    finally:
        model.denoiser().disable_gradient_checkpointing()
    assert recomputed < plain / 2
