"""The figures' one matplotlib style: fixed method colours, byte-stable PNGs."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from collections.abc import Mapping  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

STYLE: Mapping[str, Any] = {
    "figure.dpi": 100,
    "savefig.dpi": 120,
    "font.size": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "lines.linewidth": 1.6,
    "lines.markersize": 4,
}

_PALETTE = plt.get_cmap("tab10").colors
# Fixed colours for the paper's methods, so a method looks the same in every figure.
_METHOD_ORDER = ("retrain", "loo", "task_if", "instance_if", "direct_if", "ekfac_if", "trak", "tracin", "dvemb",
                 "random")


def method_color(name: str) -> tuple[float, float, float]:
    """The colour of a method in every figure (known methods fixed; others by a stable hash of the name)."""
    key = name.lower()
    index = _METHOD_ORDER.index(key) if key in _METHOD_ORDER else sum(key.encode()) % len(_PALETTE)
    return _PALETTE[index % len(_PALETTE)]


def new_figure(ncols: int = 1, width: float = 4.0, height: float = 3.0) -> tuple[Figure, Any]:
    """A figure with ``ncols`` axes side by side, in the suite's style."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=ncols == 1)
    return fig, axes


def save_figure(fig: Figure, path: Path) -> Path:
    """Save as PNG without timestamps or version metadata (so identical data give identical bytes) and close."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with plt.rc_context(STYLE):
        fig.tight_layout()
        fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)
    return path
