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


def new_figure(ncols: int = 1, width: float = 4.0, height: float = 3.0, nrows: int = 1) -> tuple[Figure, Any]:
    """A figure with ``nrows`` x ``ncols`` axes (``width`` x ``height`` inches each), in the suite's style."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=ncols * nrows == 1)
    return fig, axes


def new_mosaic(layout: list[list[str]], width: float, height: float,
               height_ratios: list[float] | None = None) -> tuple[Figure, dict[str, Any]]:
    """A figure of named axes laid out as ``layout`` (``plt.subplot_mosaic``; a name repeated down a column spans
    those rows), ``width`` x ``height`` inches in all, in the suite's style."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplot_mosaic(layout, figsize=(width, height), height_ratios=height_ratios)
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


def note_empty(ax: Any, what: str) -> None:
    """Say on an axes that has nothing to draw why it is empty (instead of leaving blank axes)."""
    ax.text(0.5, 0.5, what, transform=ax.transAxes, ha="center", va="center", fontsize=8, color="0.35", wrap=True)


def readable_ticks(ax: Any, n: int = 4) -> None:
    """At most about ``n`` ticks per axis, small or large values in scientific notation with a shared offset, so
    tick labels of narrow panels do not run into each other."""
    from matplotlib.ticker import MaxNLocator

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(n))
    ax.ticklabel_format(style="sci", scilimits=(-2, 3), useMathText=True)
