"""Test-wide environment: W&B disabled and kept out of the home directory, headless matplotlib, <= 2 threads."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

_WANDB_DIRS = ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR")


@pytest.fixture(autouse=True, scope="session")
def _test_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """W&B ``disabled`` and silent, all its folders under a session tmp dir; ``MPLBACKEND=Agg``; torch threads <= 2.

    Tests that need W&B ``offline`` set ``WANDB_MODE`` themselves with ``monkeypatch``.
    """
    wandb_home = tmp_path_factory.mktemp("wandb-home")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "disabled")
        mp.setenv("WANDB_SILENT", "true")
        for variable in _WANDB_DIRS:
            mp.setenv(variable, str(wandb_home / variable.lower()))
        mp.setenv("MPLBACKEND", "Agg")
        torch.set_num_threads(min(2, threads))
        try:
            yield
        finally:
            torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): the tiny kernels of
    these tests run fastest on one thread, and the machine's two cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
