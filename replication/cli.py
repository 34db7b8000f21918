"""``metainf-repro``: run experiments, regenerate figures and REPRODUCE.md, guard metrics, describe datasets.

::

    metainf-repro run E1 [--dataset D] [--scale smoke|quick|paper] [--method NAME ...] [--seed N ...]
                         [--set key=value ...] [--out DIR] [--data-root DIR] [--executor serial|local|dask]
                         [--scheduler ADDR] [--wandb offline|online|disabled] [--jobs N]
                         [--device cpu|cuda|auto] [--dtype float64|float32] [--estimate-only] [--yes] [--reuse]
                         [--replace]
    metainf-repro all [--scale quick] [--out results] [--report REPRODUCE.md] [--skip-done] [--reuse] [--jobs N]
                      [--estimate-only] [--yes] [...]
    metainf-repro figures [--results DIR]
    metainf-repro report [--results DIR] [--out FILE]
    metainf-repro check [--floors FILE] [--out DIR] [--data-root DIR] [--results DIR]
    metainf-repro data info DATASET [--data-root DIR]
    metainf-repro leaderboard --method MODULE:CLASS [--scale quick] [--dataset mnist] [--experiment E ...]
                              [--baseline NAME ...] [--results DIR] [--out DIR] [--data-root DIR]

Bad input (unknown experiment, dataset, method or scale; a config that breaks its schema or cannot run; a missing,
empty or malformed data root or dataset file; an unwritable output folder, or a disk that fills or turns read-only
mid-run; a bad floors file) and numerical failures (non-finite or exploded numbers, divergence) print one line on
stderr and exit with status 2, without a traceback and without touching earlier results. Ctrl-C and SIGTERM stop the
run with one line and exit 130 and 143; the next run resumes. A failed ``check`` exits with 1, as does ``all`` when
an experiment failed for another reason. ``--wandb`` defaults to ``$WANDB_MODE`` if set, else ``offline``.

A run with ``--method`` does not write over a result file that holds other methods (exit 2; ``--out DIR`` or
``--replace``). Scorings an experiment skipped (a method that raised or returned non-finite scores or scores of the
wrong shape; an indefinite total Hessian) are recorded in the result and counted in one warning line; a method given
with ``--method`` whose every scoring was skipped makes ``run`` exit 2 with its first reason.

At ``--scale paper`` (the GPU scale) ``run`` and ``all`` print each run's estimated time and memory before anything
runs (``replication.estimate``: one measured outer step of each Conv-4 model, times the steps the run takes) and
record it in the result's ``provenance.estimate``. With ``--device cpu`` the estimate is a warning and the run goes
on only with ``--yes`` (else exit 2). ``--estimate-only`` (any scale) prints the estimate and exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import signal
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from experiments import registry
from experiments.base import DATASETS, SCALES, ConfigError
from metainf.data.roots import DataFormatError, DataNotFoundError
from metainf.runtime.device import DTYPES
from metainf.runtime.device import resolve_device
from metainf.runtime.executor import SchedulerUnreachableError
from metainf.runtime.interrupts import reraise_interruption
from replication import benchmark, capabilities, check, figures, leaderboard, report, results, runner, wandb_mirror
from replication.estimate import format_estimate
from replication.errors import UsageError

PROG = "metainf-repro"
#: errors that are the input's fault or a numerical failure of the configured problem: one line, exit 2
BAD_INPUT: tuple[type[BaseException], ...] = (UsageError, ConfigError, DataNotFoundError, DataFormatError,
                                              results.CorruptFileError, results.NumericalError, FloatingPointError,
                                              SchedulerUnreachableError)


class Stopped(BaseException):
    """SIGTERM arrived; raised in the main thread so that ``finally`` blocks clean up (temp files, workers).

    A ``BaseException``, as ``KeyboardInterrupt`` is: the ``except Exception`` that records a failed scoring and goes
    on must not catch it, or the run would finish (exit 0) with that scoring recorded as failed."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Stopped


#: OSError numbers that are the machine's state, not a bug: no space, read-only or forbidden paths (one line, exit 2)
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EISDIR,
                                errno.ENOTDIR})


def one_line(error: BaseException) -> str:
    """``error``'s message on one line (whitespace collapsed), or its type name."""
    return " ".join(str(error).split()) or type(error).__name__


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors become a one-line :class:`UsageError`."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _run_options(parser: argparse.ArgumentParser, default_scale: str) -> None:
    parser.add_argument("--scale", choices=SCALES, default=default_scale, help=f"default: {default_scale}")
    parser.add_argument("--out", type=Path, default=Path("results"), help="results folder (default: results)")
    parser.add_argument("--data-root", default=None, help="dataset root (default: metainf's search order)")
    parser.add_argument("--executor", choices=runner.EXECUTORS, default="serial")
    parser.add_argument("--scheduler", default=None, help="dask scheduler address (with --executor dask)")
    parser.add_argument("--jobs", type=_positive_int, default=1,
                        help="seeds run at once, each in its own single-threaded process (default: 1, in process)")
    env_mode = os.environ.get("WANDB_MODE", "")
    parser.add_argument("--wandb", choices=wandb_mirror.MODES,
                        default=env_mode if env_mode in wandb_mirror.MODES else "offline")
    parser.add_argument("--device", default="cpu", metavar="{cpu,cuda,auto}",
                        help="where tensors live: cpu (default), cuda (or cuda:N; exit 2 if there is none) or auto")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=None,
                        help="floating-point type (default: the config's: float32 for E0 and the Conv-4 learning "
                             "regime, float64 for the MLP exact layer)")
    parser.add_argument("--estimate-only", action="store_true",
                        help="print the estimated time and memory (one measured outer step x the run's steps), exit")
    parser.add_argument("--yes", action="store_true",
                        help="run the paper (GPU) scale on a CPU anyway, after its estimate")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the seeds an existing result already holds for the same config and methods and "
                             "compute only the others (default: recompute every seed)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``metainf-repro``."""
    parser = _Parser(prog=PROG, description="Replication harness for Evaluating Data Influence in Meta Learning.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run one experiment on one dataset")
    run.add_argument("experiment", help="experiment id, e.g. E1")
    run.add_argument("--dataset", choices=DATASETS, default=None, help="default: the experiment's first dataset")
    run.add_argument("--method", nargs="+", action="extend", default=[], help="attribution methods to run")
    run.add_argument("--seed", nargs="+", action="extend", type=int, default=[], help="seeds (default: the scale's)")
    run.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                     help="override config keys (dotted for nested keys; JSON values)")
    run.add_argument("--replace", action="store_true",
                     help="with --method: write over a result file that holds other methods (default: refuse)")
    _run_options(run, "quick")
    run.set_defaults(handler=_cmd_run)

    run_all = commands.add_parser("all", help="every experiment on every dataset available offline")
    _run_options(run_all, "quick")
    run_all.add_argument("--report", type=Path, default=Path("REPRODUCE.md"))
    run_all.add_argument("--skip-done", action="store_true",
                         help="skip runs whose result already exists with the same config, methods and seeds")
    run_all.set_defaults(handler=_cmd_all)

    figs = commands.add_parser("figures", help="regenerate all figures from the result JSON files")
    figs.add_argument("--results", type=Path, default=Path("results"))
    figs.set_defaults(handler=_cmd_figures)

    rep = commands.add_parser("report", help="regenerate REPRODUCE.md from the result JSON files")
    rep.add_argument("--results", type=Path, default=Path("results"))
    rep.add_argument("--out", type=Path, default=None,
                     help="the report; its pages go to docs/results/ beside it (default: REPRODUCE.md for "
                          "--results results, else DIR/REPRODUCE.md)")
    rep.set_defaults(handler=_cmd_report)

    chk = commands.add_parser("check", help="rerun the floors file's experiments and guard their metrics")
    chk.add_argument("--floors", type=Path, default=check.DEFAULT_FLOORS)
    chk.add_argument("--out", type=Path, default=None, help="keep the fresh results here (default: a temp dir)")
    chk.add_argument("--data-root", default=None)
    chk.add_argument("--executor", choices=runner.EXECUTORS, default="serial")
    chk.add_argument("--results", type=Path, default=None,
                     help="check only the result files in DIR against replication/committed_floors.json, the "
                          "floors of the committed quick-scale results (default: rerun the smoke floors, then "
                          "check results/)")
    chk.set_defaults(handler=_cmd_check)

    board = commands.add_parser("leaderboard", help="a new method's row on the benchmark beside the baselines")
    board.add_argument("--method", required=True, help="the method: module:Class, an entry point or a built-in")
    board.add_argument("--scale", choices=SCALES, default="quick")
    board.add_argument("--dataset", choices=DATASETS, default=benchmark.DATASET)
    board.add_argument("--experiment", nargs="+", choices=sorted(benchmark.METRICS),
                       default=sorted(benchmark.METRICS), help="restrict the benchmark (default: all)")
    board.add_argument("--baseline", nargs="+", action="extend", default=[],
                       help="baselines to run where nothing is committed (default: each experiment's methods)")
    board.add_argument("--results", type=Path, default=Path("results"), help="committed baselines (default: results)")
    board.add_argument("--out", type=Path, default=Path("leaderboard"))
    board.add_argument("--data-root", default=None)
    board.set_defaults(handler=_cmd_leaderboard)

    data = commands.add_parser("data", help="dataset information")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    info = data_commands.add_parser("info", help="describe a dataset and where it was found")
    info.add_argument("dataset")
    info.add_argument("--data-root", default=None)
    info.set_defaults(handler=_cmd_data_info)
    return parser


def _request(args: argparse.Namespace, exp_id: str, dataset: str, argv: Sequence[str]) -> runner.RunRequest:
    return runner.RunRequest(
        exp_id=exp_id,
        dataset=dataset,
        scale=args.scale,
        methods=tuple(getattr(args, "method", ())),
        seeds=tuple(getattr(args, "seed", ())),
        set_items=tuple(getattr(args, "set", ())),
        results_dir=args.out,
        data_root=args.data_root,
        executor=args.executor,
        scheduler=args.scheduler,
        wandb_mode=args.wandb,
        argv=(PROG, *argv),
        device=args.device,
        dtype=args.dtype,
        reuse=args.reuse,
        replace=getattr(args, "replace", False),
    )


def _print_result(run: runner.PreparedRun, result: dict) -> None:
    print("\n".join(runner.summary_lines(result)))
    print(f"result: {run.path}")
    skipped = runner.skipped_scorings(result)
    if skipped:
        first = skipped[0]
        print(f"{PROG}: warning: {len(skipped)} scoring(s) skipped, recorded in {run.path} under "
              f"per_seed.<seed>.metrics (keys 'skipped'); the first: seed {first.seed} {first.path} {first.key}: "
              f"{one_line(first.reason)}", file=sys.stderr)


def _fail_on_methods_without_scores(run: runner.PreparedRun, result: dict) -> None:
    """Exit 2 (:class:`UsageError`) when a method given with ``--method`` produced no score at all."""
    failed = runner.methods_without_scores(result, run.request.methods)
    if failed:
        method, reason = next(iter(failed.items()))
        raise UsageError(f"method {method} produced no scores ({one_line(reason)}); "
                         f"the reasons are recorded in {run.path}")


def _estimate_gate(runs: list[runner.PreparedRun],
                   args: argparse.Namespace) -> tuple[list[runner.PreparedRun], int | None]:
    """At paper scale or with ``--estimate-only``: print every run's estimate and attach it to the run (its
    provenance). Returns the runs and the status to stop with: 0 for ``--estimate-only``, 2 for the paper scale on a
    CPU without ``--yes`` (the estimate printed as a warning), None to go on."""
    if not (args.estimate_only or args.scale == "paper"):
        return runs, None
    on_cpu = resolve_device(args.device).type == "cpu"
    warn = args.scale == "paper" and on_cpu and not args.estimate_only
    out = sys.stderr if warn else sys.stdout
    if warn:
        print(f"{PROG}: warning: --scale paper is the GPU scale (--device cuda); estimated on this CPU:", file=out)
    estimated = []
    hours = 0.0
    for run in runs:
        est = runner.estimate(run)
        print("\n".join(format_estimate(est)), file=out, flush=True)
        estimated.append(dataclasses.replace(run, estimate=est.as_dict()))
        hours += est.hours
    if len(runs) > 1:
        print(f"all {len(runs)} runs: {hours:.3g} h estimated (the runs above with an estimate)", file=out)
    if args.estimate_only:
        return estimated, 0
    if warn and not args.yes:
        print(f"{PROG}: error: not started: rerun with --device cuda, or add --yes to run the paper scale on this "
              "CPU anyway", file=sys.stderr)
        return estimated, 2
    return estimated, None


def _cmd_run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    experiment = runner.get_experiment(args.experiment)
    request = _request(args, experiment.id, args.dataset or experiment.datasets[0], argv)
    availability = capabilities.dataset_status(args.data_root)
    (prepared,), stop = _estimate_gate([runner.prepare(request, availability)], args)
    if stop is not None:
        return stop
    if args.jobs > 1:
        failures = runner.run_seeds_in_pool([prepared], args.jobs, availability)
        for error in failures.values():
            raise error
    result = runner.execute(prepared)
    _print_result(prepared, result)
    _fail_on_methods_without_scores(prepared, result)
    return 0


def _up_to_date(run: runner.PreparedRun) -> bool:
    old = results.read_or_set_aside(run.path)
    return old is not None and old.get("run_key") == run.key and old.get("seeds") == list(run.seeds)


def _record_all_run(args: argparse.Namespace, argv: Sequence[str], todo: list[runner.PreparedRun], started: str,
                    wall_s: float, up_to_date: list[str], failed: list[str]) -> None:
    """``results/all-<scale>.json``: this invocation's wall time, what it ran and on which code and machine; it is
    *complete* when every run it prepared was made (none skipped as up to date, none failed, no seed kept from an
    earlier result with ``--reuse``)."""
    reused = [f"{r.experiment.id} {r.request.dataset} seed {seed}" for r in todo if r.path.is_file()
              for seed in results.read_json(r.path).get("provenance", {}).get("reused_seeds", [])]
    results.write_json(results.all_run_path(args.out, args.scale), {
        "command": " ".join(["metainf-repro", *runner.portable_argv(argv)]), "scale": args.scale, "jobs": args.jobs,
        "started_utc": started, "finished_utc": results.utc_now(), "wall_s": wall_s,
        "runs": [{"experiment": r.experiment.id, "dataset": r.request.dataset, "seeds": list(r.seeds)} for r in todo],
        "skipped_up_to_date": up_to_date, "failed": failed, "reused_seeds": reused,
        "complete": not (up_to_date or failed or reused),
        "versions": results.library_versions(),
    })


def _cmd_all(args: argparse.Namespace, argv: Sequence[str]) -> int:
    started, t0 = results.utc_now(), time.perf_counter()
    availability = capabilities.dataset_status(args.data_root)
    up_to_date: list[str] = []
    skipped: list[str] = []
    failed: list[str] = []
    bad_input = False
    todo: list[runner.PreparedRun] = []
    for exp_id in sorted(registry.EXPERIMENTS):
        experiment = registry.EXPERIMENTS[exp_id]
        for dataset in experiment.reproduce_datasets or experiment.datasets:
            available, note = availability.get(dataset, (False, "unknown to metainf.data.registry"))
            if not available:
                skipped.append(f"{exp_id} {dataset}: {note}")
                continue
            try:
                prepared = runner.prepare(_request(args, exp_id, dataset, argv), availability)
            except ConfigError as error:
                skipped.append(f"{exp_id} {dataset}: config cannot run: {error}")
                continue
            if args.skip_done and _up_to_date(prepared):
                print(f"{exp_id} {dataset} {args.scale}: up to date, skipped")
                up_to_date.append(f"{exp_id} {dataset}")
                continue
            todo.append(prepared)
    todo, stop = _estimate_gate(todo, args)
    if stop is not None:
        return stop
    pool_failures = runner.run_seeds_in_pool(todo, args.jobs, availability) if args.jobs > 1 else {}
    for prepared in todo:
        name = f"{prepared.experiment.id} {prepared.request.dataset}"
        try:
            if name in pool_failures:
                raise pool_failures[name]
            _print_result(prepared, runner.execute(prepared))
        except Exception as error:  # noqa: BLE001 - report, go on with the other experiments, fail at the end
            reraise_interruption(error)
            failed.append(f"{name}: {type(error).__name__}: {one_line(error)}")
            bad_input = bad_input or isinstance(error, BAD_INPUT)
    if todo:
        _record_all_run(args, argv, todo, started, time.perf_counter() - t0, up_to_date, failed)
    figures.regenerate_all(args.out)
    print(f"report: {report.write_report(args.out, args.report)}")
    if not registry.EXPERIMENTS:
        print("no experiments registered")
    for line in skipped:
        print(f"skipped {line}")
    for line in failed:
        print(f"FAILED {line}", file=sys.stderr)
    return (2 if bad_input else 1) if failed else 0


def _results_folder(folder: Path) -> Path:
    if not folder.is_dir():
        raise UsageError(f"--results {folder}: no such folder")
    return folder


def _cmd_figures(args: argparse.Namespace, argv: Sequence[str]) -> int:
    try:
        written = figures.regenerate_all(_results_folder(args.results))
    except OSError as error:
        raise UsageError(f"cannot write the figures under {args.results}: {error.strerror or error}") from None
    print(f"{len(written)} figures written under {args.results / 'figures'}")
    return 0


def report_path(results_dir: Path, out: Path | None) -> Path:
    """Where ``report`` writes: ``out`` if given, else ``REPRODUCE.md`` for the default results folder and
    ``<results_dir>/REPRODUCE.md`` for any other (so reporting on another folder never replaces the repository's)."""
    if out is not None:
        return out
    return Path("REPRODUCE.md") if results_dir.resolve() == Path("results").resolve() else results_dir / "REPRODUCE.md"


def _cmd_report(args: argparse.Namespace, argv: Sequence[str]) -> int:
    out = report_path(_results_folder(args.results), args.out)
    try:
        written = report.write_report(args.results, out)
    except OSError as error:
        raise UsageError(f"cannot write the report {out}: {error.strerror or error}") from None
    print(f"report: {written} (its pages: {written.resolve().parent / report.DETAIL_DIR})")
    return 0


def _cmd_check(args: argparse.Namespace, argv: Sequence[str]) -> int:
    if args.results is not None:
        return check.report_outcomes(check.check_committed(_results_folder(args.results)))
    return check.run_check(args.floors, args.out, args.data_root, args.executor)


def _cmd_leaderboard(args: argparse.Namespace, argv: Sequence[str]) -> int:
    for path in leaderboard.run_leaderboard(args.method, args.scale, args.dataset, args.results, args.out,
                                            args.experiment, args.baseline, args.data_root):
        print(f"leaderboard: {path}")
    return 0


def _cmd_data_info(args: argparse.Namespace, argv: Sequence[str]) -> int:
    module = capabilities.optional_module("metainf.data.info")
    if module is None:
        raise UsageError("metainf.data.info is not installed")
    runner.check_data_root(args.data_root)  # as run does: a missing or empty root is not silently skipped
    try:
        print(module.format_info(module.dataset_info(args.dataset, args.data_root)))
    except (ValueError, KeyError, FileNotFoundError) as error:
        raise UsageError(str(error)) from None
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metainf-repro`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    warnings.filterwarnings("ignore", message=runner.TORCH_JIT_NOTICE, category=FutureWarning)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        args = build_parser().parse_args(argv)
        try:
            return args.handler(args, argv)
        except Exception as error:
            reraise_interruption(error)  # a stop that torch turned into its own error: one line, 130 / 143
            raise
        finally:
            wandb_mirror.close_service()  # here, not in W&B's atexit hook, where Ctrl-C prints a traceback
    except BAD_INPUT as error:
        print(f"{PROG}: error: {one_line(error)}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.errno not in ENVIRONMENT_ERRNOS:
            raise
        where = f": {error.filename}" if error.filename else ""
        print(f"{PROG}: error: {error.strerror}{where}; free space or fix the permissions (or choose another --out "
              "or --data-root); finished seeds and units are kept, rerun to resume", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; finished seeds and units are kept, rerun the same command to resume",
              file=sys.stderr)
        return 130
    except Stopped:
        print(f"{PROG}: terminated; finished seeds and units are kept, rerun the same command to resume",
              file=sys.stderr)
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
