"""Seeding: one call makes a run's randomness a function of its seed."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed ``random``, numpy and torch, and ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def seeded_randn(*shape: int, generator: torch.Generator, dtype: torch.dtype,
                 device: torch.device | None = None) -> torch.Tensor:
    """Standard normal draws of ``shape`` from the CPU ``generator`` in ``dtype``, then moved to ``device``: a seed
    gives the same numbers on every device (a CUDA generator would draw others)."""
    return torch.randn(shape, generator=generator, dtype=dtype).to(device)
