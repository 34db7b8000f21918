"""``metainf-repro check``: rerun the experiments named in a floors file and guard their metrics.

Floors file (``replication/floors.json`` by default)::

    {"scale": "smoke",
     "entries": [
       {"experiment": "E3", "dataset": "omniglot",
        "floors": [{"metric": "task_if.spearman", "floor": 0.8, "tolerance": 0.05},
                   {"metric": "task_if.runtime_ratio", "ceiling": 0.5, "tolerance": 0.1}],
        "claims": ["task_if.spearman > tracin.spearman"]}]}

``metric`` is a dotted path into the payload's ``metrics``; with several seeds the mean is used. A floor passes
when ``value >= floor - tolerance``, a ceiling when ``value <= ceiling + tolerance``. A claim ``A op B`` with ``op``
one of ``> >= < <=`` compares two metrics of the same run. A missing or non-numeric metric fails. Runs go to a
temporary folder (or ``--out``), never over ``results/``.
"""

from __future__ import annotations

import math
import operator
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from replication import capabilities, results, runner
from replication.errors import UsageError

DEFAULT_FLOORS = Path(__file__).with_name("floors.json")
OPERATORS: Mapping[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
}


@dataclass(frozen=True)
class Outcome:
    """One checked line: what was checked, the value found, the bound, and whether it passed."""

    experiment: str
    dataset: str
    check: str
    value: str
    bound: str
    ok: bool


def load_floors(path: Path) -> dict[str, Any]:
    """Read and validate a floors file; any problem is a :class:`UsageError`."""
    try:
        data = results.read_json(path)
    except OSError as error:
        raise UsageError(f"cannot read floors file {path}: {error.strerror or error}") from None
    except ValueError as error:
        raise UsageError(f"floors file {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise UsageError(f"floors file {path} must be an object with an 'entries' list")
    for entry in data["entries"]:
        if not isinstance(entry, dict) or not {"experiment", "dataset"} <= set(entry):
            raise UsageError(f"floors file {path}: every entry needs 'experiment' and 'dataset'")
        for floor in entry.get("floors", []):
            if "metric" not in floor or not {"floor", "ceiling"} & set(floor):
                raise UsageError(f"floors file {path}: {floor} needs 'metric' and 'floor' or 'ceiling'")
        for claim in entry.get("claims", []):
            _parse_claim(claim)
    return data


def _parse_claim(claim: str) -> tuple[str, str, str]:
    for symbol in (">=", "<=", ">", "<"):  # two-character operators first
        left, found, right = str(claim).partition(f" {symbol} ")
        if found and left.strip() and right.strip():
            return left.strip(), symbol, right.strip()
    raise UsageError(f"claim {claim!r} must read 'metric.path OP metric.path' with OP one of > >= < <=")


def _value(result: Mapping[str, Any], metric: str) -> float | None:
    stats = result["aggregate"]["metrics"].get(metric)
    if stats is None or not isinstance(stats.get("mean"), (int, float)) or math.isnan(stats["mean"]):
        return None
    return float(stats["mean"])


def evaluate(entry: Mapping[str, Any], result: Mapping[str, Any]) -> list[Outcome]:
    """Check one result against the floors and claims of its entry."""
    exp, dataset = entry["experiment"], entry["dataset"]
    outcomes = []
    for floor in entry.get("floors", []):
        value = _value(result, floor["metric"])
        tolerance = float(floor.get("tolerance", 0.0))
        for kind, op in (("floor", operator.ge), ("ceiling", operator.le)):
            if kind not in floor:
                continue
            limit = floor[kind] - tolerance if kind == "floor" else floor[kind] + tolerance
            ok = value is not None and op(value, limit)
            bound = f"{'>=' if kind == 'floor' else '<='} {floor[kind]:.4g} (tol {tolerance:.2g})"
            shown = "missing" if value is None else f"{value:.4g}"
            outcomes.append(Outcome(exp, dataset, floor["metric"], shown, bound, ok))
    for claim in entry.get("claims", []):
        left, symbol, right = _parse_claim(claim)
        a, b = _value(result, left), _value(result, right)
        ok = a is not None and b is not None and OPERATORS[symbol](a, b)
        shown = f"{'missing' if a is None else f'{a:.4g}'} vs {'missing' if b is None else f'{b:.4g}'}"
        outcomes.append(Outcome(exp, dataset, f"claim {left} {symbol} {right}", shown, "", ok))
    return outcomes


def format_outcomes(outcomes: list[Outcome]) -> list[str]:
    """A plain-text table of outcomes."""
    rows = [("status", "experiment", "dataset", "check", "value", "bound")]
    rows += [("ok" if o.ok else "FAIL", o.experiment, o.dataset, o.check, o.value, o.bound) for o in outcomes]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def run_check(floors_path: Path, out: Path | None, data_root: str | None, executor: str) -> int:
    """Run every entry of the floors file at its scale and print the outcome; 0 if all pass, 1 otherwise."""
    floors = load_floors(floors_path)
    entries = floors["entries"]
    if not entries:
        print(f"no floors in {floors_path}: nothing to check")
        return 0
    scale = floors.get("scale", "smoke")
    with tempfile.TemporaryDirectory(prefix="metainf-check-") as scratch:
        results_dir = Path(out) if out is not None else Path(scratch)
        availability = capabilities.dataset_status(data_root)
        pairs = list(dict.fromkeys((e["experiment"], e["dataset"]) for e in entries))
        prepared = {
            pair: runner.prepare(runner.RunRequest(exp_id=pair[0], dataset=pair[1], scale=scale,
                                                   results_dir=results_dir, data_root=data_root,
                                                   executor=executor, wandb_mode="disabled"), availability)
            for pair in pairs
        }
        fresh = {pair: runner.execute(run) for pair, run in prepared.items()}
    outcomes = [o for e in entries for o in evaluate(e, fresh[(e["experiment"], e["dataset"])])]
    print("\n".join(format_outcomes(outcomes)))
    failed = sum(not o.ok for o in outcomes)
    print(f"{len(outcomes) - failed} passed, {failed} failed")
    return 1 if failed else 0
