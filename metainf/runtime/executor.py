"""Fan out independent per-unit jobs (leave-one-out retraining, ...) with retry and resume.

``run_units(fn, units)`` computes ``{unit_id: fn(*args)}`` serially, on a local process pool (``forkserver``
with torch preloaded, else ``spawn``: torch and ``fork`` do not mix) or on a Dask cluster. Every call runs under
:func:`deterministic_call` (one intra-op thread, deterministic algorithms), so with an ``fn`` that seeds its own
generators the numbers are bitwise identical whatever the executor and the number of workers. With ``cache_dir``
each finished unit is saved atomically and a restart loads it instead of recomputing it; a unit file that does not
load (a truncated write) is moved aside to ``<name>.corrupt`` with a one-line warning and recomputed.

Pool workers ignore SIGINT (Ctrl-C reaches the whole process group; the parent alone handles it), and each watches
the parent: when the parent is gone (killed, even with SIGKILL) the worker exits within
:data:`PARENT_POLL_S` seconds. When the parent stops on an exception or a signal, it terminates its workers.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import pickle
import re
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch
from tqdm.auto import tqdm

from metainf.runtime.interrupts import reraise_interruption

EXECUTORS: tuple[str, ...] = ("serial", "local", "dask")
MANIFEST = "_manifest.json"
TMP_PREFIX = ".tmp-"
#: how often a pool worker checks that its parent is still alive
PARENT_POLL_S = 0.5


class UnitFailedError(RuntimeError):
    """Units that still failed after all retries; ``failures`` maps each unit id to its last exception."""

    def __init__(self, failures: Mapping[str, BaseException]) -> None:
        self.failures = dict(failures)
        self.unit_id = next(iter(self.failures))
        last = self.failures[self.unit_id]
        super().__init__(f"{len(self.failures)} unit(s) failed after retries: {', '.join(self.failures)}; "
                         f"last error of unit {self.unit_id!r}: {type(last).__name__}: {last}")


class CacheMismatchError(ValueError):
    """The cache folder holds results of another function or configuration."""


def deterministic_call(fn: Callable[..., Any], args: tuple) -> Any:
    """``fn(*args)`` with one torch thread and deterministic algorithms (warn-only); restores both afterwards."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def unit_file_name(unit_id: str) -> str:
    """A file-system-safe, collision-free file name for a unit id (readable slug plus a hash of the id)."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", unit_id)[:80]
    return f"{slug}-{hashlib.sha1(unit_id.encode()).hexdigest()[:10]}.pt"


def _atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """Write via ``write(tmp_path)`` to a temp file beside ``path``, then move it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX, suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _set_aside(path: Path, reason: str) -> None:
    """Move a corrupt cache file to ``<name>.corrupt`` and say so in one line on stderr."""
    target = path.with_name(path.name + ".corrupt")
    os.replace(path, target)
    print(f"metainf-repro: warning: {reason}; moved to {target.name}, recomputing it", file=sys.stderr)


def _load_unit(path: Path) -> tuple[bool, Any]:
    """``(True, value)`` from a unit file, or ``(False, None)`` when it does not load (then it is set aside)."""
    try:
        return True, torch.load(path, weights_only=False)  # our own files, written by run_units
    except (EOFError, RuntimeError, pickle.UnpicklingError, ValueError, OSError) as exc:
        _set_aside(path, f"unit cache file {path} is corrupt ({type(exc).__name__}: {exc})")
        return False, None


def _worker_init(parent: int) -> None:
    """Pool worker start: ignore SIGINT, and exit as soon as process ``parent`` is gone (polled by a thread)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while True:
            time.sleep(PARENT_POLL_S)
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                os._exit(1)  # the parent is gone: no one will read this worker's result
            except PermissionError:
                pass

    threading.Thread(target=watch, daemon=True).start()


def _main_modules() -> list[str]:
    """With ``python -m pkg.mod``: the modules of ``pkg`` imported so far, except ``pkg.mod`` itself. Every worker
    re-runs the main module before its first job; with its imports preloaded in the forkserver that costs nothing
    (the main module itself is left out: runpy warns when the module it runs is already imported)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(spec, "name", None)
    if not name or name.endswith("__main__"):
        return []
    package = name.split(".")[0]
    return sorted(m for m in list(sys.modules) if m.split(".")[0] == package and m != name)


def _terminate(pool: ProcessPoolExecutor) -> None:
    """Stop every worker of ``pool`` now (``shutdown`` alone would wait for the running jobs)."""
    processes = getattr(pool, "_processes", None) or {}  # the stdlib's pid -> Process map, present since 3.2
    for process in list(processes.values()):
        process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def _open_cache(cache_dir: Path, fn: Callable[..., Any], cache_key: str | None) -> None:
    """Create the cache folder and its manifest, or check that an existing manifest matches ``fn`` and the key."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"fn": f"{fn.__module__}.{fn.__qualname__}", "cache_key": cache_key}
    path = cache_dir / MANIFEST
    for stale in cache_dir.glob(f"{TMP_PREFIX}*"):  # left by a killed run; only this process writes here now
        stale.unlink(missing_ok=True)
    found = None
    if path.exists():
        try:
            found = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            _set_aside(path, f"{path} is corrupt ({exc})")
    if found is not None:
        if found != manifest:
            raise CacheMismatchError(f"cache folder {cache_dir} holds results of {found}, not of {manifest}; "
                                     "delete the folder or use another cache_dir")
    else:
        _atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=1)))


class _Tracker:
    """Counts failed attempts per unit and decides whether to retry."""

    def __init__(self, retries: int, done: Callable[[str, Any], None]) -> None:
        self.retries, self.done = retries, done
        self.errors: dict[str, int] = {}
        self.failed: dict[str, BaseException] = {}

    def error(self, uid: str, exc: BaseException) -> bool:
        """Charge one failed attempt to ``uid``; True when it should run again."""
        self.errors[uid] = self.errors.get(uid, 0) + 1
        if self.errors[uid] > self.retries:
            self.failed[uid] = exc
            return False
        return True


def _run_serial(fn: Callable[..., Any], todo: Mapping[str, tuple], track: _Tracker) -> None:
    for uid, args in todo.items():
        while True:
            try:
                value = deterministic_call(fn, args)
            except Exception as exc:  # noqa: BLE001 - any job error is retried, then reported
                reraise_interruption(exc)
                if track.error(uid, exc):
                    continue
            else:
                track.done(uid, value)
            break


def _run_local(fn: Callable[..., Any], todo: Mapping[str, tuple], track: _Tracker, n_workers: int) -> None:
    """A forkserver (or spawn) process pool with at most ``n_workers`` jobs in flight.

    A dead worker breaks the whole pool and fails every job in flight. A job alone in flight is charged for it;
    otherwise the jobs in flight become suspects, each later run alone, so an innocent job is never charged.
    """
    queue, suspects = deque(todo), set[str]()
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    if method == "forkserver":  # workers, and replacements of dead ones, start fast
        multiprocessing.set_forkserver_preload(["torch", *_main_modules()])
    ctx = multiprocessing.get_context(method)
    def new_pool() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(n_workers, mp_context=ctx, initializer=_worker_init, initargs=(os.getpid(),))

    pool = new_pool()
    inflight: dict[Future, str] = {}
    try:
        while queue or inflight:
            while queue and len(inflight) < n_workers:
                if inflight and (queue[0] in suspects or suspects & set(inflight.values())):
                    break  # a suspect runs alone
                uid = queue[0]
                try:
                    inflight[pool.submit(deterministic_call, fn, todo[uid])] = uid
                except BrokenProcessPool:  # a worker died after the last wait: its job's future reports it
                    if not inflight:  # nothing in flight to charge: start a fresh pool and submit again
                        pool.shutdown(wait=True)
                        pool = new_pool()
                        continue
                    break
                queue.popleft()
            finished, _ = wait(inflight, return_when=FIRST_COMPLETED)
            if any(isinstance(f.exception(), BrokenProcessPool) for f in finished):
                finished, _ = wait(inflight)  # the pool is dead: every job in flight ends now
            lost = []
            for fut in finished:
                uid, exc = inflight.pop(fut), fut.exception()
                if exc is None:
                    track.done(uid, fut.result())
                elif isinstance(exc, BrokenProcessPool):
                    lost.append(uid)
                elif track.error(uid, exc):
                    queue.append(uid)
            if lost:
                pool.shutdown(wait=True)
                pool = new_pool()
                if len(lost) > 1:
                    suspects.update(lost)
                    queue.extendleft(lost)
                elif track.error(lost[0], BrokenProcessPool(f"worker died running unit {lost[0]!r}")):
                    queue.appendleft(lost[0])
    except BaseException:  # an error, Ctrl-C or SIGTERM in the parent: stop the workers, do not wait for them
        _terminate(pool)
        raise
    pool.shutdown(wait=True, cancel_futures=True)


class SchedulerUnreachableError(ConnectionError):
    """The dask scheduler at the given address cannot be reached."""


def check_scheduler(address: str, timeout: float = 5.0) -> None:
    """Raise :class:`SchedulerUnreachableError` unless something accepts TCP connections at the dask scheduler
    ``address`` (``tcp://host:port`` or ``host:port``) within ``timeout`` seconds: a cheap check before a run, which
    would otherwise find out when it first hands work to dask, possibly after training."""
    parsed = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        port = parsed.port
    except ValueError:
        port = None
    if parsed.hostname is None or port is None:
        raise SchedulerUnreachableError(f"the dask scheduler address {address!r} is not tcp://host:port")
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except OSError as exc:
        raise SchedulerUnreachableError(f"cannot reach the dask scheduler {address}: {exc}; start it ('dask "
                                        "scheduler') or drop --scheduler") from None


def _run_dask(fn: Callable[..., Any], todo: Mapping[str, tuple], track: _Tracker, n_workers: int,
              scheduler: str | None) -> None:
    """Dask futures; dead workers surface as ``KilledWorker`` after Dask's own retries and are retried here."""
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError as exc:
        raise ImportError("executor='dask' needs dask.distributed: pip install 'dask[distributed]'") from exc
    cluster = None if scheduler else LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                                  host="127.0.0.1", dashboard_address=None)
    try:
        try:
            client = Client(scheduler or cluster)
        except (OSError, TimeoutError) as exc:
            raise SchedulerUnreachableError(f"cannot reach the dask scheduler {scheduler or 'LocalCluster'}: {exc}; "
                                            "start it ('dask scheduler') or drop --scheduler") from None
        with client:
            futures = {client.submit(deterministic_call, fn, todo[uid], pure=False): uid for uid in todo}
            pending = as_completed(futures)
            for fut in pending:
                uid = futures.pop(fut)
                try:
                    value = fut.result()
                except Exception as exc:  # noqa: BLE001 - job errors and KilledWorker alike
                    if track.error(uid, exc):
                        retry = client.submit(deterministic_call, fn, todo[uid], pure=False)
                        futures[retry] = uid
                        pending.add(retry)
                else:
                    track.done(uid, value)
    finally:
        if cluster is not None:
            cluster.close()


def run_units(fn: Callable[..., Any], units: Mapping[str, tuple], *, executor: str = "serial",
              n_workers: int | None = None, scheduler: str | None = None,
              cache_dir: str | os.PathLike | None = None, cache_key: str | None = None, retries: int = 2,
              progress: bool = True, desc: str = "") -> dict[str, Any]:
    """Compute ``{unit_id: fn(*args)}`` for ``units`` (ids to positional args), in the order of ``units``.

    ``executor``: ``"serial"`` (in process), ``"local"`` (process pool of ``n_workers``, default
    ``min(2, cpu_count)``) or ``"dask"`` (the cluster at ``scheduler``, else a loopback ``LocalCluster`` of
    ``n_workers`` single-threaded processes, closed afterwards). ``fn`` must be a picklable top-level function
    that does not read the global RNG. A unit that raises (or whose worker dies) runs up to ``retries`` more
    times; units still failing raise :class:`UnitFailedError` once every other unit has finished.
    ``cache_dir``: finished units are saved there (``torch.save``) and loaded, not recomputed, on a restart; the
    folder is bound to ``fn`` and ``cache_key`` (:class:`CacheMismatchError` on a mismatch).
    """
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; executors: {', '.join(EXECUTORS)}")
    if scheduler is not None and (executor != "dask" or n_workers is not None):
        raise ValueError("scheduler needs executor='dask' and no n_workers (the cluster has its own workers)")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    for uid, args in units.items():
        if not isinstance(uid, str) or not isinstance(args, tuple):
            raise TypeError(f"units must map str ids to tuples of args, got {uid!r}: {type(args).__name__}")
    if executor == "local":
        try:
            pickle.dumps(fn)
        except Exception as exc:
            raise TypeError(f"executor='local' needs a picklable top-level function, got {fn!r}") from exc
    n_workers = n_workers or min(2, os.cpu_count() or 1)

    cache = Path(cache_dir) if cache_dir is not None else None
    results: dict[str, Any] = {}
    if cache is not None:
        _open_cache(cache, fn, cache_key)
        for uid in units:
            path = cache / unit_file_name(uid)
            if path.exists():
                loaded, value = _load_unit(path)
                if loaded:
                    results[uid] = value
    todo = {uid: args for uid, args in units.items() if uid not in results}

    with tqdm(total=len(units), initial=len(results), desc=desc, disable=None if progress else True) as bar:
        def done(uid: str, value: Any) -> None:
            if cache is not None:
                _atomic_write(cache / unit_file_name(uid), lambda tmp: torch.save(value, tmp))
            results[uid] = value
            bar.update()

        track = _Tracker(retries, done)
        if executor == "serial" or not todo:  # nothing to fan out: start no pool or cluster
            _run_serial(fn, todo, track)
        elif executor == "local":
            _run_local(fn, todo, track, n_workers)
        else:
            _run_dask(fn, todo, track, n_workers, scheduler)
    if track.failed:
        raise UnitFailedError(track.failed)
    return {uid: results[uid] for uid in units}
