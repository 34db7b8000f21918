"""``REPRODUCE.md`` (a front page of at most :data:`MAX_LINES` lines) and its detail pages, from result JSON alone.

The front page holds how the run was made (hardware, runtime, exact commands) and the paper's tables beside ours,
row by row: E1 removal accuracy and runtime (Omniglot / Mini-ImageNet), E2 MNIST detection, E3 Spearman against
converged leave-one-out (and LDS with its ceiling when the results hold it), E5 cost. Every number of ours carries
a 95% interval (:mod:`replication.intervals`; the basis is named under each table) and every table a one-line
verdict computed from the numbers. A missing experiment, dataset, table or metric reads "not run", never an error.
Everything else goes in the detail pages ``docs/results/<EXP>.md`` (:mod:`replication.detail`), linked from it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments import registry
from replication import paper_targets, results
from replication.detail import PAPER_REF, Run, not_run_command, relative_link, render_page
from replication.intervals import (Estimate, as_float, basis_note, bootstrap, indistinguishable, over_seeds, separated,
                                   spearman)
from replication.markdown import markdown_table

MAX_LINES = 300
NOT_RUN = "not run"
DETAIL_DIR = Path("docs") / "results"
#: which result of an (experiment, dataset) the front page shows when several scales were run
SCALE_PREFERENCE = ("paper", "quick", "smoke")
#: E1 rows of ours that the paper's table has no counterpart for, shown for context: (method, unit, mode)
E1_CONTEXT = {("none (all data)", "-", "-"): "no removal (all data)", ("oracle", "task", "retrain"): "oracle removal",
              ("random", "task", "retrain"): "random removal"}
#: the same context read from E1's aggregate metrics ``<inner>.<name>`` when its table has no such row
E1_CONTEXT_METRICS = {"full.acc": "no removal (all data)", "oracle.task_retrain_acc": "oracle removal",
                      "random.task_retrain_acc": "random removal"}
#: the task-IF rows an LDS verdict reads, in order of preference (exact, then the fast and truncated estimators)
TASK_IF_ROWS = ("task_if", "task_if_fast", "task_if_truncated")
LDS = re.compile(r"^(?P<inner>[^.]+)\.(?P<method>[^.]+)\.(?P<unit>task|support|query)_lds(?P<partial>_partial)?"
                 r"(?P<per_eval>_per_eval(?P<own>_own)?)?$")
LDS_CEILING = re.compile(r"^(?P<inner>[^.]+)\.(?P<truth>[^.]+)\.lds_ceiling(?P<partial>_partial)?"
                         r"(?P<per_eval>_per_eval)?$")

Found = dict[str, dict[str, list[Run]]]


# --- reading results -------------------------------------------------------------------------------------------

def collect(results_dir: Path) -> tuple[Found, dict[str, str], dict[str, list[str]]]:
    """Results by experiment and dataset, experiment titles, and each experiment's datasets (registered first)."""
    found: Found = {}
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
    return found, titles, datasets


def preferred(found: Found, exp_id: str, dataset: str) -> dict[str, Any] | None:
    """The result of largest scale for (experiment, dataset), or ``None``."""
    runs = [r for _, r in found.get(exp_id, {}).get(dataset, [])]
    rank = {scale: i for i, scale in enumerate(SCALE_PREFERENCE)}
    return min(runs, key=lambda r: rank.get(r["scale"], len(rank)), default=None)


def pool_by_labels(tables: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict]:
    """Rows of several seeds' tables matched by their non-numeric cells (a row's label), numeric cells pooled
    into ``{"mean", "std", "n"}`` over the seeds that have the row; for tables whose seeds differ in shape."""
    pooled: dict[tuple, dict[str, Any]] = {}
    for rows in tables:
        for row in rows:
            label = tuple(sorted((k, str(v)) for k, v in row.items() if not isinstance(v, (int, float))))
            entry = pooled.setdefault(label, {"label": dict(label), "numbers": {}})
            for key, value in row.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    entry["numbers"].setdefault(key, []).append(float(value))
    return [{**entry["label"], **{k: results.mean_std(v) for k, v in entry["numbers"].items()}}
            for entry in pooled.values()]


def table_rows(result: Mapping[str, Any], wanted: Callable[[Sequence[Mapping[str, Any]]], bool]) -> list[dict]:
    """Rows of the first table ``wanted`` accepts, pooled over seeds (by row label if the seeds differ in shape)."""
    for name in sorted(result["aggregate"]["tables"]):
        rows = result["aggregate"]["tables"][name]
        if rows is None:
            rows = pool_by_labels([p["tables"].get(name, []) for p in result["per_seed"].values()])
        if rows and wanted(rows):
            return [dict(r) for r in rows]
    return []


def estimate(row: Mapping[str, Any], column: str) -> Estimate | None:
    """A cell over seeds (one seed: its ``<column>_ci95`` if recorded), or ``None`` if missing or not a number."""
    if column not in row:
        return None
    try:
        return over_seeds(row[column], row.get(f"{column}_ci95"))
    except (TypeError, ValueError):
        return None


def _text(value: Estimate | None) -> str:
    return NOT_RUN if value is None else value.text()


def _paper(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


# --- verdicts ----------------------------------------------------------------------------------------------------

def paper_verdict(pairs: Sequence[tuple[Estimate, float]]) -> str:
    """"reproduced" when every paper value lies in our 95% CI, else "differs" by how much; and how many of the
    paper's pairwise row orders ours keeps."""
    if not pairs:
        return f"{NOT_RUN}: no row of ours has a paper value beside it"
    diffs = [e.mean - p for e, p in pairs]
    inside = sum(e.contains(p) for e, p in pairs)
    if inside == len(pairs):
        text = f"reproduced: all {len(pairs)} paper values lie within our 95% CIs"
    else:
        mean = sum(diffs) / len(diffs)
        text = (f"differs: ours − paper = {min(diffs):+.3g} to {max(diffs):+.3g} (mean {mean:+.3g}); "
                f"{inside} of {len(pairs)} paper values inside our 95% CIs")
    ordered = [(i, j) for i in range(len(pairs)) for j in range(i + 1, len(pairs)) if pairs[i][1] != pairs[j][1]]
    if ordered:
        kept = sum((pairs[i][1] > pairs[j][1]) == (pairs[i][0].mean > pairs[j][0].mean) for i, j in ordered)
        text += f"; the paper's order kept in {kept} of {len(ordered)} row pairs"
    return text


def apart_clause(estimates: Sequence[Estimate]) -> str:
    """A clause saying the rows cannot be told apart, when every one lies within every other's CI."""
    if indistinguishable(estimates):
        return "; every row lies within every other row's 95% CI: this result cannot tell the methods apart"
    return ""


# --- sections ----------------------------------------------------------------------------------------------------

#: ``make reproduce`` runs ``metainf-repro all --scale quick --jobs 2``; its wall-time target in minutes (issue 17)
REPRODUCE_JOBS = 2
REPRODUCE_BUDGET_MIN = 90


def longest_first_makespan(durations: list[float], workers: int) -> float:
    """The wall time of running ``durations`` on ``workers`` processes, longest first, each to the first free
    process (the order of ``metainf.runtime.executor`` pools; LPT scheduling, within 4/3 of the optimum)."""
    loads = [0.0] * max(1, workers)
    for d in sorted(durations, reverse=True):
        loads[loads.index(min(loads))] += d
    return max(loads)


def default_seed_runtimes(result: Mapping[str, Any]) -> list[float]:
    """The recorded runtimes of the seeds a run without ``--seed`` would take (``Experiment.seeds_for``; all of them
    for an experiment the registry does not know, or a result without per-seed runtimes)."""
    runtime = result["provenance"]["runtime_s"]
    per_seed = runtime.get("seeds") or {"all": runtime["total"]}
    experiment = registry.EXPERIMENTS.get(result.get("experiment", ""))
    if experiment is None or "all" in per_seed:
        return [float(t) for t in per_seed.values()]
    default = {str(s) for s in experiment.seeds_for(result["scale"], result["dataset"])}
    return [float(t) for seed, t in per_seed.items() if seed in default]


def measured_budget(results_dir: Path, scale: str = "quick") -> str | None:
    """One sentence on the last ``metainf-repro all --scale <scale>`` recorded in ``results_dir``
    (:func:`replication.results.all_run_path`): its wall time against the budget, its processes, code and date, and
    whether it made every run (None when there is no record)."""
    path = results.all_run_path(results_dir, scale)
    if not path.is_file():
        return None
    rec = results.read_json(path)
    minutes = float(rec["wall_s"]) / 60
    versions = rec["versions"]
    commit = (versions.get("git") or {}).get("commit") or "unknown"
    seeds = sum(len(r["seeds"]) for r in rec["runs"])
    verdict = (("met" if minutes <= REPRODUCE_BUDGET_MIN else "not met") if rec.get("complete")
               else "no verdict, part of the run")
    scope = ("every run made" if rec.get("complete") else
             f"incomplete: {len(rec.get('skipped_up_to_date', []))} up to date and skipped, "
             f"{len(rec.get('failed', []))} failed, {len(rec.get('reused_seeds', []))} seeds reused")
    return (f"measured: `{rec['command']}` took {minutes:.0f} min wall ({len(rec['runs'])} runs, {seeds} seeds, "
            f"{rec['jobs']} processes, {versions.get('cpu_count')} CPUs, git {commit[:10]}, finished "
            f"{rec['finished_utc']}; {scope}; target {REPRODUCE_BUDGET_MIN} min: {verdict}; setting up the "
            "environment comes on top)")


def _how_run(found: Found, datasets: Mapping[str, list[str]], detail_links: Mapping[str, str],
             measured: str | None = None) -> list[str]:
    everything = [r for by_dataset in found.values() for runs in by_dataset.values() for _, r in runs]
    if not everything:
        return ["## How this was run", "", f"Nothing: no result files ({NOT_RUN}).", ""]
    hardware = sorted({(v.get("cpu_count"), v.get("machine"), v.get("platform"), v.get("python"), v.get("torch"),
                        v.get("numpy"), v.get("metainf"))
                       for v in (r["provenance"].get("versions", {}) for r in everything)}, key=str)
    commits = sorted({f"{(v.get('git') or {}).get('commit') or 'unknown'}"[:10]
                      + (" (dirty)" if (v.get("git") or {}).get("dirty") else "")
                      for v in (r["provenance"].get("versions", {}) for r in everything)})
    argvs = list(dict.fromkeys(" ".join(r["provenance"].get("argv", [])) for r in everything))
    total = sum(float(r["provenance"]["runtime_s"]["total"]) for r in everything)
    finished = sorted(r["provenance"].get("finished_utc", "") for r in everything)
    lines = ["## How this was run", ""]
    for cpus, machine, plat, python, torch, numpy, metainf in hardware:
        lines.append(f"- Hardware: {cpus} CPUs, {machine}, {plat}; python {python}, torch {torch}, numpy {numpy}, "
                     f"metainf {metainf}")
    quick = [t for r in everything if r.get("scale") == "quick" for t in default_seed_runtimes(r)]
    wall = longest_first_makespan(quick, REPRODUCE_JOBS) / 60
    estimated = (f"estimated from the {len(quick)} recorded runtimes of the seeds it runs, scheduled longest first on "
                 f"{REPRODUCE_JOBS} processes as `metainf-repro all` schedules them, without the runs not made yet: "
                 f"about {wall:.0f} min ({'met' if wall <= REPRODUCE_BUDGET_MIN else 'not met'})" if quick else
                 "no estimate: these results hold no quick-scale seeds")
    lines += [f"- Code: git {', '.join(commits)}",
              f"- Runtime: {total:.0f} s of measured compute over {len(everything)} result files "
              f"(sum over seeds; finished {finished[0]} to {finished[-1]})",
              f"- Budget of `make reproduce` (quick scale, {REPRODUCE_JOBS} processes, "
              f"target {REPRODUCE_BUDGET_MIN} min): "
              + (f"{measured}; " if measured else "") + estimated,
              "- Commands: " + "; ".join(f"`{a}`" for a in argvs), "",
              "Each result below, its exact command, and its detail page:", ""]
    overview = []
    for exp_id in sorted(datasets):
        for dataset in datasets[exp_id]:
            runs = found.get(exp_id, {}).get(dataset, [])
            link = f"[{exp_id}]({detail_links[exp_id]})"
            if not runs:
                overview.append([link, dataset, NOT_RUN, "", "", f"`{not_run_command(exp_id, dataset)}`"])
            for _, r in runs:
                overview.append([link, dataset, r["scale"], ", ".join(map(str, r["seeds"])),
                                 f"{float(r['provenance']['runtime_s']['total']):.0f}", f"`{r['command']}`"])
    return [*lines, *markdown_table(["detail", "dataset", "scale", "seeds", "runtime (s)", "command"], overview), ""]


def _e1(found: Found) -> list[str]:
    paper_datasets = list(dict.fromkeys(d for t in paper_targets.PAPER_TARGETS.values() if t.experiment == "E1"
                                        for d in t.values))
    lines = ["## E1: accuracy after removing the 40% most harmful data (the paper's main table)", "",
             "Paper: [PN] main table (secondary source, `replication/paper_targets.py`); hardware and backbone are "
             "not stated there, so absolute accuracies and runtimes compare in shape only.", ""]
    for dataset in paper_datasets:
        refs = paper_targets.targets_for("E1", dataset)
        result = preferred(found, "E1", dataset)
        rows = table_rows(result, lambda rs: any(PAPER_REF in r for r in rs)) if result else []
        heading = f"### E1 {dataset}" + (f" ({result['scale']} scale, {result['config'].get('model', '?')}, seeds "
                                          f"{', '.join(map(str, result['seeds']))})" if result else f": {NOT_RUN}")
        body, pairs, runtimes, accs = [], [], [], []
        for ref, target in refs.items():
            paper = target.values[dataset]
            ours = [r for r in rows if r.get(PAPER_REF) == ref]
            for row in ours or [{}]:
                acc, runtime = estimate(row, "acc"), estimate(row, "runtime_s")
                label = target.label + (f" ({row['inner']})" if row.get("inner") and len(ours) > 1 else "")
                body.append([label, _paper(paper.get("acc")), _text(acc), _paper(paper.get("runtime_s")),
                             NOT_RUN if runtime is None else f"{runtime.mean:.3g}"])
                if acc is not None and "acc" in paper:
                    pairs.append((acc, paper["acc"]))
                    accs.append(acc)
                if runtime is not None and paper.get("runtime_s"):
                    runtimes.append(runtime.mean / paper["runtime_s"])
        context: dict[str, Estimate] = {}
        for row in rows:
            label = E1_CONTEXT.get((row.get("method"), row.get("unit"), row.get("mode")))
            acc = estimate(row, "acc")
            if label and acc is not None and PAPER_REF not in row:
                context[f"ours only: {label}" + (f" ({row['inner']})" if row.get("inner") else "")] = acc
        metrics = result["aggregate"]["metrics"] if result else {}
        for name, cell in sorted(metrics.items()):
            inner, _, rest = name.partition(".")
            label = f"ours only: {E1_CONTEXT_METRICS.get(rest, '')} ({inner})"
            if rest in E1_CONTEXT_METRICS and label not in context:
                context[label] = over_seeds(cell, metrics.get(f"{name}_ci95"))
        body += [[label, "", acc.text(), "", ""] for label, acc in context.items()]
        lines += [heading, "", *markdown_table(["row", "paper acc", "ours acc [95% CI]", "paper RT (s)",
                                                "ours runtime (s)"], body), ""]
        if result is None:
            lines += [f"Verdict: {NOT_RUN} (no {dataset} result; with the data: "
                      f"`{not_run_command('E1', dataset)}`).", ""]
            continue
        verdict = paper_verdict(pairs) + apart_clause(accs)
        if runtimes:
            verdict += f"; runtime ours/paper {min(runtimes):.2g}× to {max(runtimes):.2g}×"
        lines += [f"CI: {basis_note(accs)}. Verdict (accuracy): {verdict}.", ""]
    return lines


def _e2(found: Found) -> list[str]:
    lines = ["## E2: harmful-data detection (MNIST, labels flipped)", ""]
    for dataset in dict.fromkeys(d for t in paper_targets.PAPER_TARGETS.values() if t.experiment == "E2"
                                 for d in t.values):
        refs = paper_targets.targets_for("E2", dataset)
        metrics = list(dict.fromkeys(m for t in refs.values() for m in t.values[dataset]))
        result = preferred(found, "E2", dataset)
        rows = table_rows(result, lambda rs: any(PAPER_REF in r for r in rs)) if result else []
        settings = {r.get("setting") for r in rows if PAPER_REF in r}
        rows = [r for r in rows if r.get("setting") in settings]
        header = ["method", "unit", *[h for m in metrics for h in (f"paper {m}", f"ours {m}")], "ours auc"]
        if not rows:
            body = [[t.label, "", *[c for m in metrics for c in (_paper(t.values[dataset].get(m)), NOT_RUN)],
                     NOT_RUN] for t in refs.values()]
            lines += [f"### E2 {dataset}: {NOT_RUN}", "", *markdown_table(header, body), "",
                      f"Verdict: {NOT_RUN} (`{not_run_command('E2', dataset)}`).", ""]
            continue
        body, pairs, aucs = [], [], []
        for row in rows:
            target = refs.get(row.get(PAPER_REF, ""))
            paper = target.values[dataset] if target else {}
            cells = []
            for metric in metrics:
                ours = estimate(row, metric)
                cells += [_paper(paper.get(metric)), "" if ours is None else ours.text()]
                if ours is not None and metric in paper:
                    pairs.append((ours, paper[metric]))
            auc = estimate(row, "auc")
            aucs += [auc] if auc is not None else []
            body.append([row.get("method", ""), row.get("unit", ""), *cells, _text(auc)])
        lines += [f"### E2 {dataset} ({result['scale']} scale, setting {', '.join(map(str, sorted(settings)))}, "
                  f"seeds {', '.join(map(str, result['seeds']))})", "", *markdown_table(header, body), "",
                  "Paper values are approximate (read off a figure). auc: area under the found-vs-inspected curve. "
                  f"CI: {basis_note(aucs)}.",
                  f"Verdict: {paper_verdict(pairs)}{apart_clause(aucs)}.", ""]
    return lines


def _e3(found: Found) -> list[str]:
    lines = ["## E3: agreement with converged leave-one-out retraining (Spearman)", "",
             "The paper reports no correlation table; its claim is that task-IF tracks leave-one-out retraining "
             "better than the baselines. Columns: inner problem and unit kind.", ""]
    by_dataset = found.get("E3", {})
    if not by_dataset:
        return [*lines, f"E3: {NOT_RUN}.", ""]
    for dataset in by_dataset:
        result = preferred(found, "E3", dataset)
        rows = [r for r in table_rows(result, lambda rs: any("spearman" in r for r in rs))
                if r.get("ground_truth", "converged") == "converged"]
        if not rows:
            lines += [f"### E3 {dataset}: {NOT_RUN} (no Spearman table)", ""]
            continue
        columns = list(dict.fromkeys((r.get("problem", r.get("inner", "")), r.get("unit", "")) for r in rows))
        methods = list(dict.fromkeys(r.get("method", "") for r in rows))
        cells: dict[tuple[str, tuple[str, str]], Estimate] = {}
        for r in rows:
            cells[r.get("method", ""), (r.get("problem", r.get("inner", "")), r.get("unit", ""))] = spearman(
                r["spearman"], r.get("n"))
        body = [[m, *[_text(cells.get((m, c))) if (m, c) in cells else "" for c in columns]] for m in methods]
        verdicts = []
        top = sep = 0
        for column in columns:
            ours = cells.get(("task_if", column))
            others = [e for (m, c), e in cells.items() if c == column and not m.startswith("task_if")]
            if ours is None or not others:
                continue
            best = max(others, key=lambda e: e.mean)
            top += ours.mean >= best.mean
            sep += ours.mean > best.mean and separated(ours, best)
            verdicts.append(ours)
        claim = ("reproduced" if verdicts and sep == len(verdicts) else "reproduced in the means" if verdicts and
                 top == len(verdicts) else "differs") + (
            f": task-IF's Spearman is the highest in {top} of {len(verdicts)} columns, above the best baseline "
            f"beyond both 95% CIs in {sep}" + (f" (in the other {len(verdicts) - sep} this result cannot tell "
                                               "task-IF from the best baseline)" if sep < len(verdicts) else ""))
        apart = all(indistinguishable([e for (_, c), e in cells.items() if c == column]) for column in columns)
        config = result["config"]
        lines += [f"### E3 {dataset} ({result['scale']} scale, {config.get('model', '?')} "
                  f"{config.get('hidden', '')}, seeds {', '.join(map(str, result['seeds']))})", "",
                  *markdown_table(["method", *[f"{p} {u}" for p, u in columns]], body), "",
                  f"CI: {basis_note(list(cells.values()))}. Verdict: {claim}"
                  + ("; in every column all rows lie within each other's 95% CI: this result cannot tell the "
                     "methods apart" if apart else "") + ".", ""]
    return [*lines, *_lds(found)]


def mean_estimate_bound(ceiling: float) -> float:
    """The highest LDS a method can expect against the mean of the two estimates A and B, from the ceiling
    r = Spearman(A, B): sqrt(2r / (1 + r)) (Spearman-Brown: the mean of two parallel estimates with independent
    retraining noise has reliability 2r / (1 + r); a correlation with it is at most the square root of that). Taken
    as exact for Pearson correlations and approximate for Spearman's; NaN for r <= 0."""
    return math.sqrt(2 * ceiling / (1 + ceiling)) if ceiling > 0 else float("nan")


def _lds(found: Found) -> list[str]:
    lines = ["### LDS (linear datamodeling score) with its ceiling", "",
             "The ceiling is Spearman(A, B) of two independent retraining estimates of the subsets' losses; methods "
             "are scored against their mean, for which the bound is sqrt(2r / (1 + r)) (Spearman-Brown). The "
             "columns *per evaluation task* average the Spearman of each evaluation task's loss; a method ranks them "
             "by its scores for the mean evaluation loss, or, in the rows marked *own scores*, by its scores for "
             "that evaluation task alone (one solve each).", ""]
    rows: dict[str, dict[str, Estimate]] = {}
    columns: list[str] = []
    for exp_id, by_dataset in sorted(found.items()):
        for dataset in by_dataset:
            result = preferred(found, exp_id, dataset)
            metrics = result["aggregate"]["metrics"] if result else {}
            for name, cell in metrics.items():
                match = LDS.match(name) or LDS_CEILING.match(name)
                if not match:
                    continue
                parts = match.groupdict()
                column = (f"{exp_id} {dataset} {parts['inner']} {parts.get('unit', 'task')}"
                          + (" partial (corrupted count regressed out)" if parts["partial"] else "")
                          + (", per evaluation task" if parts["per_eval"] else ""))
                label = parts["method"] if "method" in parts else f"ceiling ({parts['truth']})"
                if parts.get("own"):
                    label += " (each evaluation task's own scores)"
                columns.append(column)
                rows.setdefault(label, {})[column] = bootstrap(cell, metrics.get(f"{name}_ci95_low"),
                                                               metrics.get(f"{name}_ci95_high"))
    if not rows:
        return [*lines, f"LDS: {NOT_RUN} (no `<inner>.<method>.task_lds` metric in the results).", ""]
    # per problem: the mean evaluation loss, per evaluation task, then the same two partial
    columns = sorted(dict.fromkeys(columns), key=lambda c: (c.split(" partial")[0].split(", per")[0],
                                                            "partial" in c, "per evaluation" in c))

    def order(label: str) -> tuple[int, float]:  # the ceiling, the oracle, then by the first column's LDS
        first = next((rows[label][c].mean for c in columns if c in rows[label]), 0.0)
        return (0 if label.startswith("ceiling") else 1 if label == "oracle" else 2, -first)

    body = [[label, *[rows[label][c].text() if c in rows[label] else "" for c in columns]]
            for label in sorted(rows, key=order)]
    verdicts = []
    for column in columns:
        ceiling = next((v[column] for k, v in rows.items() if k.startswith("ceiling") and column in v), None)
        name = next((m for m in TASK_IF_ROWS if column in rows.get(m, {})), None)
        ours = rows[name][column] if name else None
        if ceiling is not None and ours is not None and ceiling.mean:
            best = max((v[column] for k, v in rows.items() if column in v and not k.startswith("ceiling")
                        and not k.startswith("task_if") and k != "oracle"), key=lambda e: e.mean, default=None)
            versus = "" if best is None else (
                f", {'above' if ours.mean > best.mean else 'not above'} the best baseline"
                f"{' beyond both CIs' if separated(ours, best) else ' (within the CIs)'}")
            label = "task-IF" if name == "task_if" else name
            bound = mean_estimate_bound(ceiling.mean)
            verdicts.append(f"{column}: {label} {ours.mean:.3g}, against a bound of {bound:.3g} for the mean of both "
                            f"estimates{versus}" + (
                                "; the ceiling's interval includes 0, so this ground truth does not reliably rank "
                                "methods here" if ceiling.low is not None and ceiling.low <= 0 else ""))
    estimates = [e for v in rows.values() for e in v.values()]
    return [*lines, *markdown_table(["method", *columns], body), "",
            f"CI: {basis_note(estimates)}. Verdict: {'; '.join(verdicts) or 'no task-IF row beside a ceiling'}.", ""]


def _e5(found: Found) -> list[str]:
    lines = ["## E5: cost of scoring 100 tasks (meta-epochs: one F value and gradient over the tasks, as the trainer "
             "computes them: for MAML one reverse pass of the summed task losses)", ""]
    by_dataset = found.get("E5", {})
    if not by_dataset:
        return [*lines, f"E5: {NOT_RUN}.", ""]
    paper_ratios = []
    for dataset in ("omniglot", "miniimagenet"):
        retrain = paper_targets.PAPER_TARGETS.get("main/task/retrain")
        task_if = paper_targets.PAPER_TARGETS.get("main/task/task_if")
        if retrain and task_if and dataset in retrain.values and dataset in task_if.values:
            paper_ratios.append(f"{retrain.values[dataset]['runtime_s'] / task_if.values[dataset]['runtime_s']:.1f}× "
                                f"on {dataset}")
    for dataset in by_dataset:
        result = preferred(found, "E5", dataset)
        rows = table_rows(result, lambda rs: any("meta_epochs" in r for r in rs))
        sizes = sorted({as_float(r["tasks"]) for r in rows if "tasks" in r})
        size = 100.0 if 100.0 in sizes else (sizes[-1] if sizes else None)
        rows = [r for r in rows if "tasks" in r and as_float(r["tasks"]) == size and "meta_epochs" in r]
        if not rows:
            lines += [f"### E5 {dataset}: {NOT_RUN} (no meta-epoch table)", ""]
            continue
        params = list(dict.fromkeys(as_float(r.get("params", 0)) for r in rows))
        methods = list(dict.fromkeys(r.get("method", "") for r in rows))
        cells = {(r.get("method", ""), as_float(r.get("params", 0))): estimate(r, "meta_epochs") for r in rows}
        body = [[m, *[_text(cells[m, p]) if (m, p) in cells else "" for p in params]] for m in methods]
        verdicts, ratios = [], []
        for p in params:
            ours = cells.get(("task_if", p))
            loo = next((e for (m, q), e in cells.items() if q == p and m.startswith("loo") and e), None)
            if ours is not None and loo is not None and ours.mean > 0:
                ratios.append(loo.mean / ours.mean)
                verdicts.append(f"{p:.0f} parameters: task-IF {ours.mean:.3g} meta-epochs against "
                                f"{loo.mean:.3g} for leave-one-out ({ratios[-1]:.3g}× cheaper)")
        claim = ("reproduced (task-IF is cheaper than retraining): " if ratios and min(ratios) > 1 else "differs: "
                 ) + ("; ".join(verdicts) or "no task-IF or leave-one-out row")
        strict = [f"{as_float(r['params']):.0f} parameters {as_float(r['summed_grad_passes']):.2f}" for r in rows
                  if r.get("method") == "task_if_fast" and "summed_grad_passes" in r]
        if strict:
            claim += (". In the stricter unit of one reverse pass of the summed task losses (F and its gradient at "
                      "once, the cheapest meta-epoch; one finite-difference HVP costs one), "
                      "task_if_fast (mean over seeds): "
                      + ", ".join(strict))
        lines += [f"### E5 {dataset} ({result['scale']} scale, {size:.0f} tasks, seeds "
                  f"{', '.join(map(str, result['seeds']))})", "",
                  *markdown_table(["method", *[f"meta-epochs, {p:.0f} params" for p in params]], body), "",
                  f"CI: {basis_note([e for e in cells.values() if e is not None])}. Verdict: {claim}. Paper: "
                  f"Retrain (GT) runtime / Task-IF runtime = {', '.join(paper_ratios)}.", ""]
    return lines


def render_front_page(results_dir: Path, detail_links: Mapping[str, str]) -> str:
    """The markdown text of ``REPRODUCE.md``; ``detail_links`` maps an experiment to its page's link."""
    found, titles, datasets = collect(results_dir)
    lines = [
        '# Reproducing "Evaluating Data Influence in Meta Learning"',
        "",
        "Generated by `metainf-repro report` from the JSON files in the results folder; do not edit by hand. "
        "Paper values come from a secondary source (provenance in `replication/paper_targets.py`); our columns hold "
        "measured values only, with 95% confidence intervals `mean [low, high]` (the basis is named under each "
        "table). Everything at once: `metainf-repro all --scale quick --jobs 2` (what `make reproduce` runs).",
        "",
        *_how_run(found, datasets, detail_links, measured_budget(results_dir)),
        *_e1(found),
        *_e2(found),
        *_e3(found),
        *_e5(found),
        "## Every experiment in detail",
        "",
    ]
    lines += [f"- [{exp_id}: {titles.get(exp_id, '')}]({detail_links[exp_id]})" for exp_id in sorted(datasets)]
    return "\n".join(lines).rstrip() + "\n"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_report(results_dir: Path, report_path: Path) -> Path:
    """Write ``REPRODUCE.md`` and its detail pages ``docs/results/<EXP>.md`` beside it, each atomically."""
    report_path = Path(report_path)
    found, titles, datasets = collect(results_dir)
    detail_dir = report_path.resolve().parent / DETAIL_DIR
    links = {}
    for exp_id in sorted(datasets):
        page = detail_dir / f"{exp_id}.md"
        _write(page, render_page(exp_id, titles.get(exp_id, ""), datasets[exp_id], found.get(exp_id, {}),
                                 Path(results_dir), page, report_path))
        links[exp_id] = relative_link(page, report_path.resolve().parent)
    _write(report_path, render_front_page(results_dir, links))
    return report_path
