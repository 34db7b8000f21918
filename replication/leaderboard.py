"""``metainf-repro leaderboard --method mypkg.mod:MyMethod``: a new method's row on the standard benchmark beside
the baselines', as Markdown, CSV and JSON.

For each benchmark experiment (:mod:`replication.benchmark`: E1 removal accuracy, E2 detection AUC, E3 Spearman
against converged leave-one-out and LDS when recorded) on one dataset and scale:

- if the results folder holds that experiment's result for the dataset and scale (the committed ``results/``), the
  new method alone runs with the same config, and the baselines' rows are read from the committed file;
- otherwise (e.g. at smoke scale) the baselines (``--baseline``, default the experiment's methods) run in the same
  run as the new method.

Each table says which. Every cell is a mean with its 95% interval (:mod:`replication.intervals`: t over seeds; with
one seed the run's own interval, a Fisher-z interval for a Spearman correlation, or none for an AUC). The new runs'
result files go to ``<out>/runs/``.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.scoring import metric_key
from replication import benchmark, capabilities, results, runner
from replication.intervals import Estimate, basis_note, over_seeds, spearman
from replication.markdown import markdown_table

PROG = "metainf-repro"
NEW = "new"


@dataclass
class Row:
    """One method's cells, keyed by column (``E3 unrolled task_converged_spearman``)."""

    method: str
    source: str
    cells: dict[str, Estimate] = field(default_factory=dict)


def _per_run_half(result: Mapping[str, Any], group: str, method: str, leaf: str) -> Any:
    """With one seed: a recorded ``<metric>_ci95``, or for an accuracy the ``acc_ci95`` of its table row."""
    metrics = result["aggregate"]["metrics"]
    recorded = metrics.get(f"{group}.{method}.{leaf}_ci95")
    if recorded is not None or not leaf.endswith("_acc"):
        return recorded
    unit = leaf.split("_", 1)[0]
    for rows in result["aggregate"]["tables"].values():
        for row in rows or []:
            if (row.get("method") == method and row.get("unit") == unit and row.get("mode", "retrain") == "retrain"
                    and group in (row.get("inner"), row.get("setting")) and "acc_ci95" in row):
                return row["acc_ci95"]
    return None


def method_cells(result: Mapping[str, Any]) -> dict[str, dict[str, Estimate]]:
    """``{method: {column: estimate}}`` for every benchmark metric of every method in one result."""
    exp_id = result["experiment"]
    pattern = benchmark.METRICS.get(exp_id)
    if pattern is None:
        return {}
    n_units = result.get("config", {}).get("n_units", {})
    cells: dict[str, dict[str, Estimate]] = {}
    for name, cell in result["aggregate"]["metrics"].items():
        parts = name.split(".")
        if len(parts) != 3 or parts[1] in benchmark.NOT_METHODS or not pattern.fullmatch(parts[2]):
            continue
        group, method, leaf = parts
        if leaf.endswith("spearman"):
            units = n_units.get(leaf.split("_", 1)[0]) if isinstance(n_units, Mapping) else None
            value = spearman(cell, units)
        else:
            value = over_seeds(cell, _per_run_half(result, group, method, leaf))
        cells.setdefault(method, {})[f"{exp_id} {group} {leaf}"] = value
    return cells


@dataclass
class Section:
    """One experiment's part of the leaderboard."""

    experiment: str
    baseline_source: str
    command: str
    rows: list[Row]
    note: str = ""


def _config_difference(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def run_section(exp_id: str, method: str, dataset: str, scale: str, committed_dir: Path, out: Path,
                baselines: Sequence[str], data_root: str | None,
                availability: Mapping[str, tuple[bool, str]]) -> Section:
    """Run ``method`` (and the baselines, when nothing is committed) on one experiment; its rows."""
    committed_path = results.result_path(committed_dir, exp_id, dataset, scale)
    committed = results.read_json(committed_path) if committed_path.is_file() else None
    experiment = runner.get_experiment(exp_id)
    if committed is None:
        extra = tuple(baselines) or tuple(m for m in experiment.default_methods if m != method)
        methods = (*extra, method)
    else:
        methods = (method,)
    request = runner.RunRequest(exp_id=exp_id, dataset=dataset, scale=scale, methods=methods,
                                results_dir=out / "runs", data_root=data_root, wandb_mode="disabled",
                                argv=(PROG, "leaderboard", "--method", method, "--scale", scale),
                                replace=True)  # out/runs is this leaderboard's own scratch
    prepared = runner.prepare(request, availability)
    result = runner.execute(prepared)
    fresh = method_cells(result)
    key = metric_key(method)
    rows = [Row(method, NEW, fresh.get(key, {}))]
    note = ""
    if committed is None:
        source = (f"computed in this run (no {committed_path.as_posix()}), "
                  f"benchmark version {benchmark.BENCHMARK_VERSION}")
        rows += [Row(m, "this run", c) for m, c in fresh.items() if m != key]
    else:
        version = committed.get("benchmark_version", "unrecorded")
        source = f"committed {committed_path.as_posix()} (benchmark version {version}, seeds " \
                 f"{', '.join(map(str, committed['seeds']))})"
        rows += [Row(m, "committed", c) for m, c in method_cells(committed).items() if m != key]
        differ = _config_difference(committed.get("config", {}), result["config"])
        if differ:
            note = f"config differs from the committed run in {', '.join(differ)}: compare with care"
    return Section(exp_id, source, result["command"], rows, note)


def _columns(sections: Sequence[Section]) -> list[str]:
    return list(dict.fromkeys(c for s in sections for r in s.rows for c in r.cells))


def to_json(sections: Sequence[Section], method: str, dataset: str, scale: str) -> dict[str, Any]:
    """The leaderboard as plain data."""
    def estimate(e: Estimate) -> dict[str, Any]:
        return {"mean": e.mean, "low": e.low, "high": e.high, "basis": e.basis, "n": e.n}

    return {
        "benchmark_version": benchmark.BENCHMARK_VERSION,
        "method": method, "dataset": dataset, "scale": scale,
        "sections": [{"experiment": s.experiment, "baselines": s.baseline_source, "command": s.command,
                      "note": s.note,
                      "rows": [{"method": r.method, "source": r.source,
                                "cells": {c: estimate(e) for c, e in r.cells.items()}} for r in s.rows]}
                     for s in sections],
    }


def to_csv(sections: Sequence[Section]) -> str:
    """One line per (experiment, method): mean, low and high of every column."""
    columns = _columns(sections)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["benchmark_version", "experiment", "method", "source",
                     *[f"{c} {part}" for c in columns for part in ("mean", "low", "high")]])
    for s in sections:
        for r in s.rows:
            values = []
            for c in columns:
                e = r.cells.get(c)
                values += ["", "", ""] if e is None else [e.mean, "" if e.low is None else e.low,
                                                          "" if e.high is None else e.high]
            writer.writerow([benchmark.BENCHMARK_VERSION, s.experiment, r.method, r.source, *values])
    return buffer.getvalue()


def to_markdown(sections: Sequence[Section], method: str, dataset: str, scale: str) -> str:
    """One table per experiment, the new method's row first and in bold."""
    lines = [f"# Leaderboard: {method} on {dataset}, {scale} scale (benchmark version "
             f"{benchmark.BENCHMARK_VERSION})", "",
             "Cells: mean [95% CI]; higher is better in every column. Report the benchmark version, scale, seeds "
             "and this command with any number taken from here.", ""]
    for s in sections:
        columns = list(dict.fromkeys(c for r in s.rows for c in r.cells))
        body = [[f"**{r.method}** ({r.source})" if r.source == NEW else f"{r.method} ({r.source})",
                 *[r.cells[c].text() if c in r.cells else "" for c in columns]] for r in s.rows]
        estimates = [e for r in s.rows for e in r.cells.values()]
        lines += [f"## {s.experiment}", "", f"Baselines: {s.baseline_source}. New run: `{s.command}`.",
                  *([f"Note: {s.note}."] if s.note else []), "",
                  *markdown_table(["method", *[re.sub(rf"^{s.experiment} ", "", c) for c in columns]], body), "",
                  f"CI: {basis_note(estimates)}.", ""]
    return "\n".join(lines).rstrip() + "\n"


def run_leaderboard(method: str, scale: str, dataset: str, committed_dir: Path, out: Path,
                    experiments: Sequence[str], baselines: Sequence[str], data_root: str | None) -> list[Path]:
    """Run the benchmark for ``method`` and write ``leaderboard.{md,csv,json}`` into ``out``; their paths."""
    availability = capabilities.dataset_status(data_root)
    for exp_id in experiments:  # validate everything before the first run starts
        runner.prepare(runner.RunRequest(exp_id=exp_id, dataset=dataset, scale=scale,
                                         methods=(*baselines, method), results_dir=out / "runs",
                                         data_root=data_root, wandb_mode="disabled", replace=True), availability)
    sections = [run_section(exp_id, method, dataset, scale, committed_dir, out, baselines, data_root, availability)
                for exp_id in experiments]
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "leaderboard.md", out / "leaderboard.csv", out / "leaderboard.json"]
    paths[0].write_text(to_markdown(sections, method, dataset, scale), encoding="utf-8")
    paths[1].write_text(to_csv(sections), encoding="utf-8")
    paths[2].write_text(results.dumps(to_json(sections, method, dataset, scale)), encoding="utf-8")
    return paths
