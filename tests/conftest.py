"""Shared fixtures: tiny models, support sets and helpers. Tests are deterministic (seeded) and CPU-only."""

from __future__ import annotations

import warnings

import pytest
import torch

import smat_peft  # noqa: F401  (registers SMAT with peft)
from tiny_models import make_tiny_model, random_pixels


warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def support():
    """A 5-way 2-shot support set of 32 px images, and 3 query images."""
    return random_pixels(10, seed=1), torch.arange(5).repeat(2), random_pixels(3, seed=2)


def main_output(out) -> torch.Tensor:
    """What to compare of a model output: logits if present, else the last hidden state and the pooled output."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if logits is not None:
        return logits
    pooled = getattr(out, "pooler_output", None)
    parts = [out.last_hidden_state.flatten(1)] + ([pooled.flatten(1)] if pooled is not None else [])
    return torch.cat(parts, dim=1)


@pytest.fixture
def tiny_vit():
    return make_tiny_model("vit_cls")
