"""Result files: ``<results>/<EXP>/<dataset>-<scale>.json``, the single source of truth.

Layout of one result (keys sorted on disk, floats rounded to :data:`SIGNIFICANT` significant digits, so re-runs
with the same config compare byte-for-byte outside ``provenance``)::

    schema        1
    experiment    "E1";  title, dataset, scale
    config        the resolved config that ran
    methods       [...];  seeds [0, 1, 2];  run_key  hash of experiment, dataset, scale, config, methods
    command       the equivalent ``metainf-repro run ...`` line
    per_seed      {"0": {"metrics": ..., "tables": ..., "series": ...}, ...}
    aggregate     {"metrics": {"task_if.acc": {"mean", "std", "n"}, ...},
                   "tables": {name: rows with numeric cells as {"mean", "std", "n"}, or null if seeds disagree}}
    table_columns {name: column names in the experiment's order} (rows themselves are stored with sorted keys)
    figures       PNG paths relative to the results folder
    provenance    {"argv", "versions", "runtime_s": {"seeds": {...}, "total"}, "resumed_seeds", "pooled_seeds",
                  "reused_seeds", "finished_utc", and at paper scale "estimate" (``replication.estimate``)}

Only ``provenance`` varies between identical re-runs; ``check`` and ``report`` never compare numbers in it.
``std`` is the sample standard deviation (ddof=1), 0 for one seed. Non-finite floats are stored as the strings
``"nan"``, ``"inf"``, ``"-inf"`` (strict JSON).

Files are written atomically with the user's umask (typically 0644). A file that does not parse is a
:class:`CorruptFileError` naming it; :func:`read_or_set_aside` moves it aside to ``<name>.corrupt`` so that it is
recomputed, and :func:`iter_results` skips it the same way with a one-line message.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from importlib import metadata
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SCHEMA = 1
SIGNIFICANT = 6
PAYLOAD_KEYS = ("metrics", "tables", "series")


def result_path(results_dir: Path, exp_id: str, dataset: str, scale: str) -> Path:
    """Where the result of one (experiment, dataset, scale) lives."""
    return Path(results_dir) / exp_id / f"{dataset}-{scale}.json"


def utc_now() -> str:
    """The current UTC time as results record it (``2026-01-01T00:00:00Z``)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def all_run_path(results_dir: Path, scale: str) -> Path:
    """Where ``metainf-repro all --scale <scale>`` records its own wall time and what it ran (the measured budget of
    ``make reproduce``)."""
    return Path(results_dir) / f"all-{scale}.json"


def to_jsonable(value: Any) -> Any:
    """Plain JSON types with floats rounded; numpy/torch scalars and arrays become numbers and lists."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (bool, str, int)) or value is None:
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return float(f"{value:.{SIGNIFICANT}g}")
    if hasattr(value, "tolist"):  # numpy and torch scalars and arrays
        return to_jsonable(value.tolist())
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store a {type(value).__name__} in a result JSON: {value!r}")


def dumps(data: Mapping[str, Any]) -> str:
    """Deterministic JSON text of ``data``."""
    return json.dumps(to_jsonable(data), sort_keys=True, indent=1, allow_nan=False) + "\n"


TMP_SUFFIX = ".tmp"
CORRUPT_SUFFIX = ".corrupt"


class CorruptFileError(ValueError):
    """A results or cache file that exists but does not parse; the message names the file."""


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path: Path, data: Mapping[str, Any]) -> Path:
    """Write ``data`` atomically: a temp file in the same folder, fsync, then ``os.replace``; the file gets the
    mode a plain ``open`` would give it (0666 minus the umask), and the temp file never outlives an exception."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = dumps(data)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_json(path: Path) -> dict[str, Any]:
    """Load a JSON object from ``path``; :class:`CorruptFileError` (naming the file) if it is not one."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CorruptFileError(f"{path} is corrupt (not valid JSON: {error})") from None
    if not isinstance(data, dict):
        raise CorruptFileError(f"{path} is corrupt (a JSON {type(data).__name__}, not an object)")
    return data


def set_aside(path: Path, reason: str, then: str) -> Path:
    """Move a corrupt file to ``<name>.corrupt`` (replacing an older one) and say so in one line on stderr."""
    path = Path(path)
    target = path.with_name(path.name + CORRUPT_SUFFIX)
    os.replace(path, target)
    print(f"metainf-repro: warning: {reason}; moved to {target.name}, {then}", file=sys.stderr)
    return target


def read_or_set_aside(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or ``None`` if there is none: a missing file, or a corrupt one (moved aside
    by :func:`set_aside`, so that the caller recomputes it)."""
    if not Path(path).exists():
        return None
    try:
        return read_json(path)
    except CorruptFileError as error:
        set_aside(path, str(error), "recomputing it")
        return None


def sweep_tmp(folder: Path) -> int:
    """Delete temp files (``.<name>.*.tmp``) an interrupted write left under ``folder``; returns how many.

    Only call this when no other process writes under ``folder``."""
    stale = [p for p in Path(folder).rglob(f".*{TMP_SUFFIX}") if p.is_file()] if Path(folder).is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def normalize_payload(payload: Any, where: str) -> dict[str, Any]:
    """Check the shape of what an experiment's ``run`` returned and make it JSON-able."""
    if not isinstance(payload, Mapping):
        raise TypeError(f"{where}: run() must return a dict, got {type(payload).__name__}")
    extra = set(payload) - set(PAYLOAD_KEYS)
    if extra:
        raise TypeError(f"{where}: unexpected payload keys {sorted(extra)}; allowed: {list(PAYLOAD_KEYS)}")
    tables = payload.get("tables", {})
    for name, rows in tables.items():
        if not isinstance(rows, (list, tuple)) or not all(isinstance(r, Mapping) for r in rows):
            raise TypeError(f"{where}: table {name!r} must be a list of row dicts")
    return to_jsonable({key: payload.get(key, {}) for key in PAYLOAD_KEYS})


#: a number this large in a result is a diverged computation, not a measurement
EXPLODED = 1e30


class NumericalError(ValueError):
    """A result holds a non-finite or exploded number outside a row marked failed; the message names it."""


def _marked_failed(node: Mapping[str, Any]) -> bool:
    return "error" in node or node.get("status", "ok") not in ("ok", "truncated")


def bad_numbers(tree: Any, path: str = "", undefined_ok: frozenset[str] = frozenset(),
                nan_ok: bool = False) -> Iterator[tuple[str, Any]]:
    """``(dotted.path, value)`` of every non-finite (``"nan"``, ``"inf"``, ``"-inf"`` once JSON-able) or exploded
    (``abs >= EXPLODED``) number in a JSON-able payload, except inside a dict marked failed (an ``"error"`` key,
    or a ``"status"`` other than ``"ok"`` / ``"truncated"``), where NaN stands for "no value". NaN (never inf or
    an exploded number) is also accepted below a key in ``undefined_ok``: values an experiment declares may be
    undefined (:attr:`experiments.base.Experiment.undefined_ok`, e.g. a correlation with a constant input)."""
    if isinstance(tree, Mapping):
        if not _marked_failed(tree):
            for key, value in tree.items():
                yield from bad_numbers(value, f"{path}.{key}" if path else str(key), undefined_ok,
                                       nan_ok or str(key) in undefined_ok)
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from bad_numbers(value, f"{path}[{index}]", undefined_ok, nan_ok)
    elif (tree in ("inf", "-inf") or (tree == "nan" and not nan_ok)
          or (_is_number(tree) and abs(tree) >= EXPLODED)):
        yield path, tree


def check_numbers(payload: Mapping[str, Any], where: str, undefined_ok: frozenset[str] = frozenset()) -> None:
    """Raise :class:`NumericalError` if ``payload`` holds a number :func:`bad_numbers` finds."""
    bad = list(bad_numbers(payload, undefined_ok=undefined_ok))
    if bad:
        shown = ", ".join(f"{p} = {v}" for p, v in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise NumericalError(f"{where}: non-finite or exploded numbers ({shown}); the run diverged or its "
                             "problem is degenerate: lower outer_lr or the inner lr (unrolled.lr), raise delta, "
                             "or raise image_size (--set key=value)")


def table_columns(tables: Mapping[str, Any]) -> dict[str, list[str]]:
    """Each table's column names in order of first appearance (the JSON itself stores keys sorted)."""
    return {str(name): list(dict.fromkeys(str(k) for row in rows for k in row)) for name, rows in tables.items()}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def flatten_numbers(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """Every numeric leaf of a nested dict as ``(dotted.path, value)``; other leaves are skipped."""
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from flatten_numbers(value, f"{path}.")
        elif _is_number(value):
            yield path, float(value)


def mean_std(values: list[float]) -> dict[str, float | int]:
    """Mean, sample std (ddof=1; 0 for a single value) and count."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n}


def _aggregate_table(tables: list[list[dict[str, Any]]]) -> list[dict[str, Any]] | None:
    """Rows with numeric cells pooled over seeds, or ``None`` when the seeds' tables differ in shape or labels."""
    first = tables[0]
    if any(len(t) != len(first) for t in tables):
        return None
    rows = []
    for index, row in enumerate(first):
        others = [t[index] for t in tables]
        if any(set(o) != set(row) for o in others):
            return None
        pooled: dict[str, Any] = {}
        for column, cell in row.items():
            cells = [o[column] for o in others]
            if all(_is_number(c) for c in cells):
                pooled[column] = mean_std([float(c) for c in cells])
            elif all(c == cell for c in cells):
                pooled[column] = cell
            else:
                return None
        rows.append(pooled)
    return rows


def aggregate(per_seed: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and std of every numeric metric leaf over seeds, and pooled tables."""
    payloads = list(per_seed.values())
    leaves: dict[str, list[float]] = {}
    for payload in payloads:
        for path, value in flatten_numbers(payload["metrics"]):
            leaves.setdefault(path, []).append(value)
    names = sorted({name for payload in payloads for name in payload["tables"]})
    tables = {}
    for name in names:
        present = [p["tables"][name] for p in payloads if name in p["tables"]]
        tables[name] = _aggregate_table(present) if len(present) == len(payloads) else None
    return {"metrics": {path: mean_std(values) for path, values in leaves.items()}, "tables": tables}


#: files a run or a report writes into the repository; their changes do not make the provenance "dirty"
OUTPUTS = ("results", "REPRODUCE.md", "docs/results")


def git_state(root: Path = Path(__file__).resolve().parent.parent) -> dict[str, Any]:
    """``{"commit", "dirty"}`` of the checkout at ``root``; changes to :data:`OUTPUTS` alone are not dirty."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        # the run's own outputs (results/, REPRODUCE.md) are not code: a reproduction rewriting them is still clean
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                *(f":(exclude){output}" for output in OUTPUTS)], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def library_versions() -> dict[str, Any]:
    """Python, torch, numpy, metainf and platform versions, CPU count and git commit, for provenance."""
    import metainf

    return {
        "python": platform.python_version(),
        "torch": _version("torch"),
        "numpy": _version("numpy"),
        "metainf": metainf.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "git": git_state(),
    }


def iter_results(results_dir: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every result JSON under ``results_dir`` (``<EXP>/<dataset>-<scale>.json``), sorted by path; a corrupt one
    is skipped with a one-line message and moved aside (:func:`set_aside`)."""
    for path in sorted(Path(results_dir).glob("E*/*.json")):
        try:
            data = read_json(path)
        except CorruptFileError as error:
            set_aside(path, str(error), "skipped (rerun its experiment to recompute it)")
            continue
        if data.get("schema") == SCHEMA and "experiment" in data:
            yield path, data
