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

The committed results are guarded too (``replication/committed_floors.json``, same format, at the scale of the
default run): every ``<exp>/<dataset>-<scale>.json`` under the results folder is read, must hold only finite
numbers, and must meet its entry's floors and claims; a file an entry names but the folder lacks fails. Plain
``check`` does both (the smoke rerun, then ``results/``); ``check --results DIR`` checks ``DIR`` only.
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
COMMITTED_FLOORS = Path(__file__).with_name("committed_floors.json")
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


def _non_finite(node: Any, path: str = "") -> list[str]:
    """Dotted paths of the NaN / infinite numbers in a loaded result (the ``series`` are included)."""
    if isinstance(node, float):
        return [] if math.isfinite(node) else [path.lstrip(".")]
    if isinstance(node, Mapping):
        return [bad for key, value in node.items() for bad in _non_finite(value, f"{path}.{key}")]
    if isinstance(node, list):
        return [bad for i, value in enumerate(node) for bad in _non_finite(value, f"{path}[{i}]")]
    return []


def check_committed(results_dir: Path, floors_path: Path = COMMITTED_FLOORS) -> list[Outcome]:
    """Guard the result files in ``results_dir``: finite numbers everywhere, and the committed floors."""
    floors = load_floors(floors_path)
    scale = floors.get("scale", "quick")
    outcomes: list[Outcome] = []
    for path in sorted(results_dir.glob("E*/*.json")):
        where = path.relative_to(results_dir).as_posix()
        try:
            bad = _non_finite(results.read_json(path))
        except (OSError, ValueError) as error:
            outcomes.append(Outcome(where, "-", "readable JSON", f"unreadable: {error}", "", False))
            continue
        shown = "none" if not bad else f"{len(bad)}: {', '.join(bad[:3])}"
        outcomes.append(Outcome(where, "-", "non-finite numbers", shown, "none", not bad))
    for entry in floors["entries"]:
        path = results_dir / entry["experiment"] / f"{entry['dataset']}-{scale}.json"
        where = path.relative_to(results_dir).as_posix()
        if not path.is_file():
            outcomes.append(Outcome(where, entry["dataset"], "committed result", "missing", "present", False))
            continue
        try:
            result = results.read_json(path)
        except (OSError, ValueError):
            continue  # already reported above
        outcomes += [Outcome(where, o.dataset, o.check, o.value, o.bound, o.ok) for o in evaluate(entry, result)]
    return outcomes


def report_outcomes(outcomes: list[Outcome]) -> int:
    """Print the outcome table and the closing count; 0 if all passed, 1 otherwise."""
    print("\n".join(format_outcomes(outcomes)))
    failed = sum(not o.ok for o in outcomes)
    print(f"{len(outcomes) - failed} passed, {failed} failed")
    return 1 if failed else 0


def run_check(floors_path: Path, out: Path | None, data_root: str | None, executor: str,
              committed: Path | None = Path("results")) -> int:
    """Rerun every entry of the floors file at its scale, then guard the committed results in ``committed``
    (skipped when ``None``); print the outcome; 0 if all pass, 1 otherwise."""
    floors = load_floors(floors_path)
    entries = floors["entries"]
    after = check_committed(committed) if committed is not None and committed.is_dir() else []
    if not entries:
        print(f"no floors in {floors_path}: nothing to rerun")
        return report_outcomes(after)
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
    return report_outcomes(outcomes + after)
