"""The per-experiment detail pages (``docs/results/E1.md``, ...) from the result JSON files alone.

For each dataset of one experiment: the exact command, scale, seeds, measured runtime, library versions, every
payload table rendered generically as markdown (pooled over seeds as mean ± std), with the paper's value beside
ours where a row names a ``paper_ref`` (:mod:`replication.paper_targets`), the metrics, and links to the figures.
A dataset without a result gets the command a user with the data runs and the paper's values beside cells reading
"not run here": our cells only ever hold measured values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from replication import paper_targets
from replication.markdown import markdown_table

NOT_RUN = "not run here"
PAPER_REF = "paper_ref"

#: a found result: its path and its loaded JSON
Run = tuple[Path, dict[str, Any]]


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


def relative_link(target: Path, page_dir: Path) -> str:
    """``target`` as a link from a page in ``page_dir``."""
    return Path(os.path.relpath(Path(target).resolve(), Path(page_dir).resolve())).as_posix()


def _result_section(result: Mapping[str, Any], path: Path, results_dir: Path, page_dir: Path) -> list[str]:
    provenance = result["provenance"]
    versions = provenance["versions"]
    seeds = ", ".join(map(str, result["seeds"]))
    pooled_seeds = provenance.get("pooled_seeds", [])
    how = (f"sum over seeds, each in its own single-threaded process, {provenance.get('jobs', 2)} at a time"
           if pooled_seeds else "seeds one after the other")
    link = relative_link(path, page_dir)
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
    estimate = provenance.get("estimate")
    if estimate and estimate.get("parts"):
        lines[-1:-1] = [f"Estimated before the run on {estimate['device']} (`provenance.estimate`, training and "
                        f"retraining only): {estimate['hours']:.3g} h, about {estimate['memory_mb']:,.0f} MiB.", ""]
    reused = provenance.get("reused_seeds", [])
    if reused:
        lines[-1:-1] = [f"Seeds {', '.join(map(str, reused))} were computed by an earlier run of the same command "
                        "and config (kept from the result file, `provenance.reused_seeds`).", ""]
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
        lines += [f"![{Path(f).stem}]({relative_link(Path(results_dir) / f, page_dir)})" for f in result["figures"]]
        lines.append("")
    return lines


def not_run_command(exp_id: str, dataset: str) -> str:
    """What a user with the data runs to fill a missing result."""
    return f"metainf-repro run {exp_id} --dataset {dataset} --scale paper --data-root DIR"


def _not_run_section(exp_id: str, dataset: str) -> list[str]:
    lines = [f"### {dataset}: {NOT_RUN}", "",
             "No result for this dataset in the results folder (typically its data is not available offline "
             "here). With the data, run:", "", f"```\n{not_run_command(exp_id, dataset)}\n```", ""]
    targets = paper_targets.targets_for(exp_id, dataset)
    if targets:
        metrics = list(dict.fromkeys(m for t in targets.values() for m in t.values[dataset]))
        header = ["paper row"] + [h for m in metrics for h in (f"paper {m}", f"ours {m}")]
        body = [[t.label] + [c for m in metrics for c in (t.values[dataset].get(m), NOT_RUN)]
                for t in targets.values()]
        lines += [*markdown_table(header, body), ""]
    return lines


def render_page(exp_id: str, title: str, datasets: Sequence[str], runs: Mapping[str, Sequence[Run]],
                results_dir: Path, page_path: Path, front_page: Path) -> str:
    """The markdown text of one experiment's detail page; ``runs`` maps a dataset to its results."""
    page_dir = Path(page_path).resolve().parent
    back = relative_link(front_page, page_dir)
    lines = [f"# {exp_id}: {title}", "",
             f"Generated by `metainf-repro report` from the JSON files in the results folder; do not edit by hand. "
             f"Summary beside the paper: [{Path(front_page).name}]({back}).", ""]
    for dataset in datasets:
        found = runs.get(dataset, [])
        if not found:
            lines += _not_run_section(exp_id, dataset)
        for path, result in found:
            lines += _result_section(result, path, results_dir, page_dir)
    return "\n".join(lines).rstrip() + "\n"
