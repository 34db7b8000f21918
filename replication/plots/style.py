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

_PALETTE = plt.get_cmap("tab20").colors
# Fixed colours for the methods, so a method looks the same in every figure: a family shares a hue, its fast or
# approximate variants take the lighter shade of the pair (tab20 holds 10 hues, dark then light).
_METHOD_COLOR_INDEX: Mapping[str, int] = {
    "task_if": 0, "task_if_fast": 1, "task_if_truncated": 9, "task_if_nystrom": 18, "task_if_fisher": 19,
    "instance_if": 8, "direct_if": 2, "ekfac_if": 3, "single_level_if": 3, "trak": 4, "grad_cos": 5, "grad_dot": 5,
    "tracin": 6, "tracin_cp": 7, "dvemb": 10, "dvemb_exact": 10, "dvemb_fisher": 11, "oracle": 12, "retrain": 14,
    "loo": 14, "random": 16, "loss": 17,
}


def method_color(name: str) -> tuple[float, float, float]:
    """The colour of a method in every figure (known methods fixed; others by a stable hash of the name)."""
    key = name.lower()
    index = _METHOD_COLOR_INDEX.get(key, sum(key.encode()) % len(_PALETTE))
    return _PALETTE[index]


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
