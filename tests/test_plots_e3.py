"""E3's cross-seed LDS figure (``replication.plots.e3_loo``), drawn from a hand-made result."""

from __future__ import annotations

from pathlib import Path

from replication.plots.e3_loo import figures


def _metrics(shift: float) -> dict:
    def row(value: float) -> dict:
        return {"task_lds": value, "task_lds_ci95_low": value - 0.1, "task_lds_ci95_high": value + 0.05,
                "task_lds_partial": value - 0.5, "task_lds_partial_ci95_low": value - 0.9,
                "task_lds_partial_ci95_high": value - 0.2}

    return {"lds": {"lds_ceiling": 0.95, "lds_ceiling_partial": 0.2}, "task_if_fast": row(0.9 + shift),
            "trak": row(0.7 - shift), "random": {**row(0.0), "task_lds_partial": float("nan")}}


def _result(seeds: list[str]) -> dict:
    series = {"unrolled_conv4": {}}  # no LDS series: only the cross-seed figure is drawn
    return {"dataset": "omniglot",
            "per_seed": {s: {"metrics": {"unrolled_conv4": _metrics(0.01 * i)}, "series": series}
                         for i, s in enumerate(seeds)}}


def test_lds_seeds_figure_is_drawn_for_several_seeds_only(tmp_path: Path) -> None:
    paths = figures(_result(["0", "1", "2"]), tmp_path)
    assert paths == [tmp_path / "e3-omniglot-unrolled_conv4-lds-seeds.png"] and paths[0].stat().st_size > 0
    assert figures(_result(["0"]), tmp_path / "one") == []
