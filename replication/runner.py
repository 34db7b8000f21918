"""Running one (experiment, dataset, scale): validate everything first, then run each seed, resumably.

:func:`prepare` checks the request and raises :class:`~replication.errors.UsageError` or
:class:`~experiments.base.ConfigError` before anything is written. :func:`execute` runs the seeds; each finished
seed is kept as ``<results>/.cache/<EXP>/<dataset>-<scale>-<run_key>/seed-<N>.json`` so a restarted run with the
same config skips it, and experiments get ``seed-<N>/units/<name>/`` folders for finer-grained resume. Once the
result JSON and its figures are written, the run's cache folder is deleted.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import shlex
import shutil
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from tqdm.auto import tqdm

from experiments import registry
from experiments.base import SCALES, Experiment, RunContext
from metainf.data.roots import portable_path
from metainf.runtime.device import resolve_device, resolve_dtype
from metainf.runtime.executor import UnitFailedError, check_scheduler, run_units
from metainf.runtime.interrupts import reraise_interruption
from metainf.runtime.seeding import seed_everything
from replication import benchmark, capabilities, figures, results
from replication.config import parse_overrides, resolve_config, run_key
from replication.errors import UsageError
from replication.estimate import Estimate, estimate_run
from replication.wandb_mirror import WandbMirror

EXECUTORS: tuple[str, ...] = ("serial", "local", "dask")
CACHE = ".cache"
#: torch's own deprecation notice, printed on the first forward-mode derivative of every run; not the user's concern
TORCH_JIT_NOTICE = r"`torch\.jit\.script` is deprecated"


@dataclass(frozen=True)
class RunRequest:
    """What the user asked for; empty ``methods`` / ``seeds`` mean the experiment's defaults."""

    exp_id: str
    dataset: str
    scale: str = "quick"
    methods: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()
    set_items: tuple[str, ...] = ()
    results_dir: Path = Path("results")
    data_root: str | None = None
    executor: str = "serial"
    scheduler: str | None = None
    wandb_mode: str = "offline"
    argv: tuple[str, ...] = ()
    device: str = "cpu"
    dtype: str | None = None
    reuse: bool = False  # keep the seeds the existing result file holds for the same run key (adopt_result_seeds)
    replace: bool = False  # let a run with explicit methods write over a result that holds other methods


@dataclass(frozen=True)
class PreparedRun:
    """A validated request: the resolved config, methods, seeds, run key and where everything goes."""

    request: RunRequest
    experiment: Experiment
    config: dict[str, Any]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    key: str
    command: str
    path: Path
    cache_dir: Path
    data: dict[str, Any]
    estimate: dict[str, Any] | None = None  # the cost estimate printed before the run (provenance.estimate)


def get_experiment(exp_id: str) -> Experiment:
    """The registered experiment ``exp_id`` (case-insensitive)."""
    experiment = registry.EXPERIMENTS.get(exp_id.upper())
    if experiment is None:
        known = ", ".join(sorted(registry.EXPERIMENTS)) or "none registered yet"
        raise UsageError(f"unknown experiment {exp_id!r}; known: {known}")
    return experiment


def _command(request: RunRequest, experiment: Experiment, methods: tuple[str, ...], seeds: tuple[int, ...]) -> str:
    parts = ["metainf-repro", "run", experiment.id, "--dataset", request.dataset, "--scale", request.scale]
    if methods != experiment.default_methods:
        parts += ["--method", *methods]
    if seeds != experiment.seeds_for(request.scale, request.dataset):
        parts += ["--seed", *map(str, seeds)]
    for item in request.set_items:
        parts += ["--set", item]
    return shlex.join(parts)


def _check_writable(folder: Path) -> None:
    """Raise :class:`UsageError` unless a file can be written in ``folder``; the folders made to find out are
    removed again, so a request refused later (or only estimated) leaves no empty folders behind."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{time.monotonic_ns()}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise UsageError(f"output folder {folder} is not writable: {error.strerror or error}") from None
    finally:
        for made in missing:  # deepest first
            with contextlib.suppress(OSError):
                made.rmdir()


def _importable_method(name: str) -> bool:
    """A plug-in method named ``module:Class`` that imports and implements the attribution interface."""
    if ":" not in name:
        return False
    module = capabilities.optional_module("metainf.methods")
    if module is None:
        return False
    try:
        module.get_method(name)
    except module.UnknownMethodError as error:
        raise UsageError(str(error)) from None
    except Exception as error:  # noqa: BLE001 - a plug-in's own import or constructor failed: the input's fault
        raise UsageError(f"method {name!r} cannot be loaded: {type(error).__name__}: {error}") from None
    return True


#: the seeds numpy's and torch's generators accept (``seed_everything``)
SEED_RANGE = range(0, 2**32)


def check_seeds(seeds: Sequence[int]) -> None:
    """Raise :class:`UsageError` for a seed outside :data:`SEED_RANGE` or a seed given twice."""
    bad = [s for s in seeds if s not in SEED_RANGE]
    if bad:
        raise UsageError(f"--seed {bad[0]}: a seed must be an integer in 0..{SEED_RANGE.stop - 1}")
    repeated = sorted({s for s in seeds if list(seeds).count(s) > 1})
    if repeated:
        raise UsageError(f"--seed {repeated[0]} is given twice; list each seed once")


def check_no_methods_dropped(request: RunRequest, path: Path, methods: Sequence[str]) -> None:
    """A run with explicit ``--method`` must not write over a result holding methods it lacks (a plug-in run into
    the committed ``results/`` would replace every baseline): raise :class:`UsageError` naming them, unless
    ``request.replace``. A run of the experiment's default methods writes over its result as documented."""
    if not request.methods or request.replace or not path.is_file():
        return
    try:
        held = results.read_json(path).get("methods", [])
    except results.CorruptFileError:
        return  # set aside and recomputed by execute, as without --method
    dropped = [m for m in held if m not in methods]
    if dropped:
        raise UsageError(f"{path} holds the results of {len(dropped)} other method(s) ({', '.join(dropped[:4])}"
                         f"{', ...' if len(dropped) > 4 else ''}), which this run would replace: write elsewhere "
                         "with --out DIR, or pass --replace")


def prepare(request: RunRequest, availability: Mapping[str, tuple[bool, str]] | None = None) -> PreparedRun:
    """Validate ``request`` completely; nothing is written (the output folder is only probed for writing)."""
    experiment = get_experiment(request.exp_id)
    if request.scale not in SCALES:
        raise UsageError(f"unknown scale {request.scale!r}; scales: {', '.join(SCALES)}")
    if request.dataset not in experiment.datasets:
        raise UsageError(f"{experiment.id} does not run on dataset {request.dataset!r}; "
                         f"datasets: {', '.join(experiment.datasets)}")
    methods = request.methods or experiment.default_methods
    allowed = capabilities.known_methods() | set(experiment.default_methods)
    unknown = [m for m in methods if m not in allowed and not _importable_method(m)]
    if unknown:
        raise UsageError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed)) or 'none'}")
    if request.executor not in EXECUTORS:
        raise UsageError(f"unknown executor {request.executor!r}; executors: {', '.join(EXECUTORS)}")
    if request.scheduler and request.executor != "dask":
        raise UsageError("--scheduler needs --executor dask")
    if request.scheduler:
        check_scheduler(request.scheduler)
    try:
        resolve_device(request.device)
        resolve_dtype(request.dtype)
    except ValueError as error:  # includes DeviceUnavailableError
        raise UsageError(str(error)) from None
    config = resolve_config(experiment, request.scale, request.dataset, parse_overrides(request.set_items))
    if experiment.validate is not None:
        experiment.validate(request.scale, config)
    check_data_root(request.data_root)
    status = capabilities.dataset_status(request.data_root) if availability is None else availability
    available, note = status.get(request.dataset, (False, "unknown to metainf.data.registry"))
    if not available:
        raise UsageError(f"dataset {request.dataset} is not available: {note}; `metainf-repro data info "
                         f"{request.dataset}` says where it is looked for and the layout it needs, then pass "
                         "--data-root DIR")
    if request.data_root is not None and Path(note).is_absolute() and not _inside(Path(note), request.data_root):
        raise UsageError(f"dataset {request.dataset} is not under --data-root {request.data_root} (found only at "
                         f"{note}); put it there or drop --data-root")
    seeds = request.seeds or experiment.seeds_for(request.scale, request.dataset)
    check_seeds(seeds)
    keyed = config if request.dtype is None else {**config, "dtype": request.dtype}  # another dtype, other numbers
    key = run_key(experiment.id, request.dataset, request.scale, keyed, methods)
    results_dir = Path(request.results_dir)
    path = results.result_path(results_dir, experiment.id, request.dataset, request.scale)
    check_no_methods_dropped(request, path, methods)
    _check_writable(path.parent)
    return PreparedRun(
        request=request,
        experiment=experiment,
        config=config,
        methods=tuple(methods),
        seeds=tuple(seeds),
        key=key,
        command=_command(request, experiment, tuple(methods), tuple(seeds)),
        path=path,
        cache_dir=results_dir / CACHE / experiment.id / f"{request.dataset}-{request.scale}-{key}",
        data=data_record(request.dataset, note),
    )


def estimate(run: PreparedRun) -> Estimate:
    """The run's cost estimate (``replication.estimate``): its Conv-4 steps per seed, measured on its device."""
    return estimate_run(run.experiment, run.request.dataset, run.config, run.methods, len(run.seeds),
                        resolve_device(run.request.device), run.request.dtype)


def check_data_root(data_root: str | None) -> None:
    """A ``--data-root`` (or, without one, a set ``$METAINF_DATA``) must be an existing, non-empty folder: the
    search order would silently skip it and find the data elsewhere."""
    given, name, fix = data_root, "--data-root", "pass"
    if given is None:
        given, name, fix = os.environ.get("METAINF_DATA") or None, "$METAINF_DATA", "set it to (or unset it)"
    if given is None:
        return
    root = Path(given).expanduser()
    if not root.is_dir():
        raise UsageError(f"{name} {given} does not exist or is not a folder; {fix} the folder that holds the "
                         "dataset folders (e.g. omniglot/)")
    if not any(root.iterdir()):
        raise UsageError(f"{name} {given} is empty; put the dataset folders (e.g. omniglot/) in it")


def _inside(path: Path, root: str) -> bool:
    return path.resolve().is_relative_to(Path(root).expanduser().resolve())


def portable_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` without machine-specific paths: every absolute path as :func:`metainf.data.roots.portable_path`
    records it (relative to the project when it lies in it or beside it, else ``<outside>/<its last part>``)."""
    return [portable_path(arg) if Path(arg).is_absolute() else arg for arg in argv]


def data_record(dataset: str, note: str) -> dict[str, Any]:
    """Where a run's data came from, without machine-specific paths: ``{"dataset", "source"}``, the source being
    the folder relative to the project when it lies inside it, else ``"<folder name> (files sha256:<12 hex>)"``, a
    checksum of the sorted relative names and sizes of its files; a non-folder source (the MNIST stand-in) as is."""
    folder = Path(note)
    if not folder.is_absolute() or not folder.is_dir():
        return {"dataset": dataset, "source": note}
    project = Path(__file__).resolve().parents[1]
    if folder.resolve().is_relative_to(project):
        return {"dataset": dataset, "source": folder.resolve().relative_to(project).as_posix()}
    listing = sorted(f"{p.relative_to(folder).as_posix()}:{p.stat().st_size}" for p in folder.rglob("*") if p.is_file())
    digest = hashlib.sha256("\n".join(listing).encode()).hexdigest()[:12]
    return {"dataset": dataset, "source": f"{folder.name} (files sha256:{digest})"}


def _make_cache_dir(run: PreparedRun) -> None:
    root = Path(run.request.results_dir) / CACHE
    root.mkdir(parents=True, exist_ok=True)
    ignore = root / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")  # resume state is never committed
    run.cache_dir.mkdir(parents=True, exist_ok=True)


class _LogRecorder:
    """Stands in for the W&B mirror in a pool worker: keeps the logged rows, replayed by :func:`execute`."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def log(self, row: Mapping[str, Any]) -> None:
        self.rows.append(dict(row))


def _run_seed(run: PreparedRun, seed: int,
              mirror: WandbMirror | _LogRecorder) -> tuple[dict[str, Any], float, dict[str, list]]:
    """Run one seed; returns the normalized payload, its wall time and each table's column order."""
    request = run.request

    def logger(metrics: Mapping[str, Any], step: int | None) -> None:
        row = {f"seed{seed}/{name}": value for name, value in metrics.items()}
        if step is not None:
            row[f"seed{seed}/step"] = step
        mirror.log(row)

    ctx = RunContext(
        exp_id=run.experiment.id,
        dataset=request.dataset,
        scale=request.scale,
        config=copy.deepcopy(run.config),
        seed=seed,
        methods=run.methods,
        out_dir=Path(request.results_dir),
        data_root=request.data_root,
        executor=request.executor,
        scheduler=request.scheduler,
        cache_dir=run.cache_dir / f"seed-{seed}",
        logger=logger,
        device=request.device,
        dtype=request.dtype,
    )
    seed_everything(seed)
    start = time.perf_counter()
    raw = run.experiment.run(ctx)
    runtime = time.perf_counter() - start
    payload = results.normalize_payload(raw, f"{run.experiment.id} seed {seed}")
    results.check_numbers(payload, f"{run.experiment.id} {request.dataset} seed {seed}",
                          frozenset(run.experiment.undefined_ok))
    return payload, runtime, results.table_columns(raw.get("tables", {}))


def _seed_file(run: PreparedRun, seed: int) -> Path:
    return run.cache_dir / f"seed-{seed}.json"


def adopt_result_seeds(run: PreparedRun) -> list[int]:
    """With ``request.reuse`` (``--reuse``), the seeds that the run's existing result file already holds for the
    same run key (experiment, dataset, scale, config and methods) become seed files, so that a run asking for more
    seeds (``--seed 0 1 2 --reuse`` after ``--seed 0 1``) computes only the new ones. Without it nothing is adopted:
    a run recomputes every seed, so a reproduction on a clone recomputes the committed results instead of copying
    them. Returns the seeds adopted; ``provenance.reused_seeds`` lists them."""
    if not run.request.reuse or not Path(run.path).exists():
        return []
    previous = results.read_or_set_aside(Path(run.path))
    if previous is None or previous.get("run_key") != run.key:
        return []
    per_seed = previous.get("per_seed", {})
    if not isinstance(per_seed, dict) or not all(isinstance(p, dict) for p in per_seed.values()):
        results.set_aside(Path(run.path), "its per_seed is not a JSON object of seed results", "recomputing it")
        return []
    runtimes = previous.get("provenance", {}).get("runtime_s", {}).get("seeds", {})
    adopted = []
    for seed in run.seeds:
        payload = per_seed.get(str(seed))
        if payload is None or _seed_file(run, seed).exists():
            continue
        results.write_json(_seed_file(run, seed), {"payload": payload, "runtime_s": runtimes.get(str(seed), 0.0),
                                                   "columns": previous.get("table_columns", {}),
                                                   "from_result": True})
        adopted.append(seed)
    return adopted


def _pooled_seed(request: RunRequest, availability: Mapping[str, tuple[bool, str]], seed: int, jobs: int) -> float:
    """Pool worker: prepare ``request`` again (a prepared run holds unpicklable parts), run one seed and save it
    as the seed file :func:`execute` resumes from, with the rows it logged and the pool size ``jobs``; returns
    the seed's wall time."""
    warnings.filterwarnings("ignore", message=TORCH_JIT_NOTICE, category=FutureWarning)
    run = prepare(request, availability)
    _make_cache_dir(run)
    recorder = _LogRecorder()
    payload, runtime, columns = _run_seed(run, seed, recorder)
    results.write_json(_seed_file(run, seed), {"payload": payload, "runtime_s": runtime, "columns": columns,
                                                "logged": recorder.rows, "pooled": jobs})
    return runtime


def _expected_runtime(run: PreparedRun, seed: int) -> float:
    """The seed's runtime in an existing result of the same experiment, dataset and scale (inf if unknown)."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError):
        seeds = results.read_json(run.path)["provenance"]["runtime_s"]["seeds"]
        return float(seeds.get(str(seed), sum(seeds.values()) / len(seeds)))
    return float("inf")


def run_seeds_in_pool(runs: list[PreparedRun], jobs: int,
                      availability: Mapping[str, tuple[bool, str]]) -> dict[str, BaseException]:
    """Run every unfinished seed of ``runs`` on a pool of ``jobs`` single-threaded processes.

    Seeds are independent, seeded runs (:func:`seed_everything`, one torch thread), so their numbers do not depend
    on the process or the order; the longest seeds (by the runtime of an existing result) start first. Each
    finished seed is saved as the seed file that :func:`execute` then loads, so an interrupted pool resumes like a
    serial run. Returns ``{"<EXP> <dataset>": error}`` for runs with a seed that failed (after one retry).
    """
    todo: dict[str, tuple] = {}
    owner: dict[str, PreparedRun] = {}
    for run in runs:
        _make_cache_dir(run)
        results.sweep_tmp(run.cache_dir)
        adopt_result_seeds(run)
        for seed in run.seeds:
            if results.read_or_set_aside(_seed_file(run, seed)) is None:
                uid = f"{run.experiment.id} {run.request.dataset} {run.request.scale} seed {seed}"
                todo[uid], owner[uid] = (run.request, dict(availability), seed, jobs), run
    order = sorted(todo, key=lambda uid: -_expected_runtime(owner[uid], todo[uid][2]))
    if not order:
        return {}
    try:
        run_units(_pooled_seed, {uid: todo[uid] for uid in order}, executor="local",
                  n_workers=min(jobs, len(order)), retries=1, desc=f"seeds on {jobs} processes")
    except UnitFailedError as error:
        return {f"{owner[uid].experiment.id} {owner[uid].request.dataset}": exc
                for uid, exc in error.failures.items()}
    return {}


def execute(run: PreparedRun) -> dict[str, Any]:
    """Run (or resume) every seed, write the result JSON and figures, mirror to W&B; returns the result.

    Seeds already saved in the run's cache folder are loaded, not rerun: those of an interrupted run
    (``provenance.resumed_seeds``), those run by :func:`run_seeds_in_pool` (``provenance.pooled_seeds``) and those
    the existing result file holds for the same run key, with ``--reuse`` (:func:`adopt_result_seeds`,
    ``provenance.reused_seeds``).
    """
    request = run.request
    name = f"{run.experiment.id}-{request.dataset}-{request.scale}"
    _make_cache_dir(run)
    results.sweep_tmp(run.cache_dir)
    adopt_result_seeds(run)
    mirror = WandbMirror(request.wandb_mode, Path(request.results_dir))  # runs go to <results>/wandb/
    mirror.start(name=name, group=run.experiment.id, config={
        "experiment": run.experiment.id, "dataset": request.dataset, "scale": request.scale,
        "config": run.config, "methods": list(run.methods), "seeds": list(run.seeds), "run_key": run.key})
    try:
        per_seed: dict[str, Any] = {}
        runtimes: dict[str, float] = {}
        resumed: list[int] = []
        pooled: list[int] = []
        reused: list[int] = []
        jobs = 1
        columns: dict[str, list[str]] = {}
        for seed in tqdm(run.seeds, desc=f"{name} seeds", leave=False, disable=None):
            partial = _seed_file(run, seed)
            saved = results.read_or_set_aside(partial)
            if saved is not None:
                payload, runtime, seed_columns = saved["payload"], saved["runtime_s"], saved["columns"]
                (reused if saved.get("from_result") else pooled if saved.get("pooled") else resumed).append(seed)
                jobs = max(jobs, int(saved.get("pooled", 1)))
                for row in saved.get("logged", []):
                    mirror.log(row)
            else:
                payload, runtime, seed_columns = _run_seed(run, seed, mirror)
                results.write_json(partial, {"payload": payload, "runtime_s": runtime, "columns": seed_columns})
            for table, names in seed_columns.items():
                columns[table] = list(dict.fromkeys([*columns.get(table, []), *names]))
            per_seed[str(seed)] = payload
            runtimes[str(seed)] = runtime
            mirror.log_tables(payload["tables"], prefix=f"seed{seed}/")
        result = {
            "schema": results.SCHEMA,
            "experiment": run.experiment.id,
            "title": run.experiment.title,
            "dataset": request.dataset,
            "scale": request.scale,
            "config": run.config,
            "methods": list(run.methods),
            "seeds": list(run.seeds),
            "run_key": run.key,
            "benchmark_version": benchmark.BENCHMARK_VERSION,
            "command": run.command,
            "per_seed": per_seed,
            "aggregate": results.aggregate(per_seed),
            "table_columns": columns,
            "figures": [],
            "data": run.data,
            "provenance": {
                "argv": portable_argv(request.argv),
                "versions": results.library_versions(),
                "runtime_s": {"seeds": runtimes, "total": sum(runtimes.values())},
                "resumed_seeds": resumed,
                "pooled_seeds": pooled,
                "reused_seeds": reused,
                "jobs": jobs,
                "executor": request.executor,
                **({"estimate": run.estimate} if run.estimate is not None else {}),
                "finished_utc": results.utc_now(),
            },
        }
        existing = results.read_or_set_aside(run.path)  # a corrupt file is moved aside, not overwritten
        if existing is not None and "schema" not in existing:
            results.set_aside(run.path, f"{run.path} is JSON but not a metainf result (no 'schema')",
                              "writing the new result in its place")
        results.write_json(run.path, result)
        result = results.read_json(run.path)
        try:
            result["figures"] = figures.render_result(run.experiment, result, Path(request.results_dir))
        except Exception as error:  # noqa: BLE001 - the result is written; a figure must not fail the run
            reraise_interruption(error)
            print(f"metainf-repro: warning: {run.path}: figures not drawn ({type(error).__name__}: {error}); the "
                  "result is kept, redraw with 'metainf-repro figures'", file=sys.stderr)
        results.write_json(run.path, result)
        mirror.summarize({path: stats["mean"] for path, stats in result["aggregate"]["metrics"].items()})
        mirror.log_images([Path(request.results_dir) / p for p in result["figures"]])
    finally:
        mirror.finish()
    shutil.rmtree(run.cache_dir)
    with contextlib.suppress(OSError):  # the experiment's folder, if no other run of it is cached
        run.cache_dir.parent.rmdir()
    return result


class Skipped(NamedTuple):
    """A scoring an experiment skipped: its ``seed``, the ``path`` of its ``skipped`` map under
    ``per_seed.<seed>.metrics``, the entry's ``key`` (its parts joined by ``__``: method, unit kind, ...) and
    ``reason``."""

    seed: str
    path: str
    key: str
    reason: str

    def names(self, method: str) -> bool:
        """Whether the entry is ``method``'s (its name, or with dots made ``_`` as some experiments record it)."""
        return bool({method, method.replace(".", "_")} & set(self.key.split("__")))


def skipped_scorings(result: Mapping[str, Any]) -> list[Skipped]:
    """Every scoring the experiment recorded as skipped (a method that raised, returned non-finite scores or scores
    of the wrong shape; an indefinite total Hessian): the ``skipped`` maps of its per-seed metrics."""
    found: list[Skipped] = []

    def walk(node: Any, path: list[str], seed: str) -> None:
        if not isinstance(node, Mapping):
            return
        for key, value in node.items():
            if key == "skipped" and isinstance(value, Mapping):
                found.extend(Skipped(seed, ".".join(path), str(k), str(v)) for k, v in value.items())
            else:
                walk(value, [*path, str(key)], seed)

    for seed, payload in result.get("per_seed", {}).items():
        walk(payload.get("metrics", {}), [], seed)
    return found


def methods_without_scores(result: Mapping[str, Any], methods: Sequence[str]) -> dict[str, str]:
    """Of ``methods``, those whose every scoring was skipped, each with its first skip's reason: named by a skipped
    entry and by no aggregate metric (whose paths join their parts with ``.``, a method's dots made ``_``). A method
    the experiment does not run at all is in neither and is not reported."""
    metric_parts = {part for path in result.get("aggregate", {}).get("metrics", {}) for part in path.split(".")}
    failed: dict[str, str] = {}
    for entry in skipped_scorings(result):
        for m in methods:
            if m not in failed and entry.names(m) and not {m, m.replace(".", "_")} & metric_parts:
                failed[m] = entry.reason
    return failed


def summary_lines(result: Mapping[str, Any]) -> list[str]:
    """The end-of-run summary: one line per metric (mean ± std over seeds), then runtime."""
    metrics = result["aggregate"]["metrics"]
    width = max([len("metric"), *map(len, metrics)])
    seeds = result["seeds"]
    lines = [f"{result['experiment']} on {result['dataset']} ({result['scale']}), seeds {seeds}",
             f"{'metric'.ljust(width)}  value"]
    for path in sorted(metrics):
        lines.append(f"{path.ljust(width)}  {format_stats(metrics[path])}")
    provenance = result["provenance"]
    for key, what in (("resumed_seeds", "resumed from an interrupted run"),
                      ("reused_seeds", "kept from the existing result (--reuse)")):
        if provenance.get(key):
            lines.append(f"seeds {provenance[key]}: {what}")
    lines.append(f"runtime: {provenance['runtime_s']['total']:.1f} s (the seeds' recorded runtimes)")
    return lines


def format_stats(stats: Mapping[str, Any]) -> str:
    """``mean`` alone for one seed, ``mean ± std`` for several."""
    if stats["n"] > 1:
        return f"{stats['mean']:.4g} ± {stats['std']:.2g}"
    return f"{stats['mean']:.4g}"

