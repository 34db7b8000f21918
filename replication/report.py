"""``REPRODUCE.md`` from the result JSON files alone.

For every registered experiment (and any experiment found in the results) and each of its datasets: the exact
command, scale, seeds, measured runtime, library versions, every payload table rendered generically as markdown
(pooled over seeds as mean ± std), with the paper's value beside ours where a row names a ``paper_ref``
(:mod:`replication.paper_targets`), the metrics, and links to the figures. A dataset without a result gets the
command a user with the data runs and the paper's values beside cells reading "not run here": our cells only ever
hold measured values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments import registry
from replication import paper_targets, results
from replication.runner import format_stats

NOT_RUN = "not run here"
PAPER_REF = "paper_ref"


def _cell(value: Any) -> str:
    if isinstance(value, Mapping) and {"mean", "std", "n"} <= set(value):
        return format_stats(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return ""
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def render_table(rows: Sequence[Mapping[str, Any]], dataset: str, order: Sequence[str] = ()) -> list[str]:
    """One payload table, columns in ``order`` first; a column whose name a referenced paper target also has gets
    a ``paper <col>`` column beside it."""
    columns = [c for c in dict.fromkeys([*order, *(k for row in rows for k in row)]) if c != PAPER_REF]
    targets = [paper_targets.PAPER_TARGETS.get(row.get(PAPER_REF, "")) for row in rows]
    paper_values = [t.values.get(dataset, {}) if t else {} for t in targets]
    header: list[str] = []
    for column in columns:
        header.append(column)
        if any(column in values for values in paper_values):
            header.append(f"paper {column}")
    body = []
    for row, values in zip(rows, paper_values):
        cells = []
        for column in header:
            if column.startswith("paper ") and column not in columns:
                cells.append(values.get(column.removeprefix("paper ")))
            else:
                cells.append(row.get(column))
        body.append(cells)
    return markdown_table(header, body)


def _link(results_dir: Path, relative: str, report_dir: Path) -> str:
    return Path(os.path.relpath(Path(results_dir) / relative, report_dir)).as_posix()


def _result_section(result: Mapping[str, Any], path: Path, results_dir: Path, report_dir: Path) -> list[str]:
    provenance = result["provenance"]
    versions = provenance["versions"]
    seeds = ", ".join(map(str, result["seeds"]))
    pooled_seeds = provenance.get("pooled_seeds", [])
    how = (f"sum over seeds, each in its own single-threaded process, {provenance.get('jobs', 2)} at a time"
           if pooled_seeds else "seeds one after the other")
    link = _link(results_dir, path.relative_to(results_dir).as_posix(), report_dir)
    lines = [
        f"### {result['dataset']}, {result['scale']} scale",
        "",
        f"```\n{result['command']}\n```",
        "",
        f"Seeds {seeds}; runtime measured here {provenance['runtime_s']['total']:.1f} s ({how}; "
        f"{versions['cpu_count']} CPUs, {versions['platform']}, python {versions['python']}, "
        f"torch {versions['torch']}, numpy {versions['numpy']}, metainf {versions['metainf']}); "
        f"result: [{link}]({link})",
        "",
    ]
    order = result.get("table_columns", {})
    first_seed = next(iter(result["per_seed"].values()), {"tables": {}})
    for name, pooled in sorted(result["aggregate"]["tables"].items()):
        note = ""
        rows = pooled
        if rows is None:
            rows = first_seed["tables"].get(name, [])
            note = f" (seeds differ in shape; seed {result['seeds'][0]} shown)"
        lines += [f"#### {name}{note}", "", *render_table(rows, result["dataset"], order.get(name, ())), ""]
    metrics = result["aggregate"]["metrics"]
    if metrics:
        n = len(result["seeds"])
        label = "value" if n == 1 else f"mean ± std over {n} seeds"
        lines += ["#### metrics", "", *markdown_table(["metric", label], [[k, metrics[k]] for k in sorted(metrics)]),
                  ""]
    if result["figures"]:
        lines += ["#### figures", ""]
        lines += [f"![{Path(f).stem}]({_link(results_dir, f, report_dir)})" for f in result["figures"]]
        lines.append("")
    return lines


def _not_run_section(exp_id: str, dataset: str) -> list[str]:
    command = f"metainf-repro run {exp_id} --dataset {dataset} --scale paper --data-root DIR"
    lines = [f"### {dataset}: {NOT_RUN}", "",
             "No result for this dataset in the results folder (typically its data is not available offline "
             "here). With the data, run:", "", f"```\n{command}\n```", ""]
    targets = paper_targets.targets_for(exp_id, dataset)
    if targets:
        metrics = list(dict.fromkeys(m for t in targets.values() for m in t.values[dataset]))
        header = ["paper row"] + [h for m in metrics for h in (f"paper {m}", f"ours {m}")]
        body = [[t.label] + [c for m in metrics for c in (t.values[dataset].get(m), NOT_RUN)]
                for t in targets.values()]
        lines += [*markdown_table(header, body), ""]
    return lines


def render_report(results_dir: Path, report_path: Path) -> str:
    """The markdown text of ``REPRODUCE.md``."""
    results_dir = Path(results_dir)
    report_dir = Path(report_path).resolve().parent
    found: dict[str, dict[str, list[tuple[Path, dict[str, Any]]]]] = {}
    titles: dict[str, str] = {}
    for path, result in results.iter_results(results_dir):
        found.setdefault(result["experiment"], {}).setdefault(result["dataset"], []).append((path, result))
        titles[result["experiment"]] = result["title"]
    datasets: dict[str, list[str]] = {}
    for exp_id, experiment in registry.EXPERIMENTS.items():
        titles[exp_id] = experiment.title
        datasets[exp_id] = list(experiment.datasets)
    for exp_id, by_dataset in found.items():
        datasets[exp_id] = list(dict.fromkeys([*datasets.get(exp_id, []), *by_dataset]))

    lines = [
        '# Reproducing "Evaluating Data Influence in Meta Learning"',
        "",
        "Generated by `metainf-repro report` from the JSON files in the results folder; do not edit by hand.",
        "Paper values come from a secondary source (the paper's text was not available); provenance in",
        "`replication/paper_targets.py`. Our columns hold measured values only; runtimes are wall time here.",
        "",
        "Everything at once: `metainf-repro all --scale quick --jobs 2` (what `make reproduce` runs; `--jobs` "
        "changes only the wall time). Figures and this file again from JSON: "
        "`metainf-repro figures` and `metainf-repro report`.",
        "",
        "## Overview",
        "",
    ]
    overview = []
    for exp_id in sorted(datasets):
        for dataset in datasets[exp_id]:
            runs = found.get(exp_id, {}).get(dataset, [])
            if not runs:
                overview.append([exp_id, dataset, NOT_RUN, "", "", ""])
            for _, result in runs:
                overview.append([exp_id, dataset, result["scale"], ", ".join(map(str, result["seeds"])),
                                 f"{result['provenance']['runtime_s']['total']:.1f}", f"`{result['command']}`"])
    lines += markdown_table(["experiment", "dataset", "scale", "seeds", "runtime (s)", "command"], overview)
    lines.append("")
    for exp_id in sorted(datasets):
        lines += [f"## {exp_id}: {titles.get(exp_id, '')}", ""]
        for dataset in datasets[exp_id]:
            runs = found.get(exp_id, {}).get(dataset, [])
            if not runs:
                lines += _not_run_section(exp_id, dataset)
            for path, result in runs:
                lines += _result_section(result, path, results_dir, report_dir)
    return "\n".join(lines).rstrip() + "\n"


def write_report(results_dir: Path, report_path: Path) -> Path:
    """Write ``REPRODUCE.md`` atomically."""
    text = render_report(results_dir, report_path)
    report_path = Path(report_path)
    tmp = report_path.with_name(f".{report_path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, report_path)
    return report_path
