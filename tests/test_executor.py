"""run_units: bitwise-equal results across executors, resume from the cache, retry of failing and dying jobs."""

from __future__ import annotations

import importlib.util
import os
import time
import uuid
from pathlib import Path

import pytest
import torch

import metainf.runtime.executor as executor_module
from metainf.runtime.executor import (CacheMismatchError, SchedulerUnreachableError, UnitFailedError, check_scheduler,
                                      deterministic_call, run_units, unit_file_name)

HAS_DASK = importlib.util.find_spec("distributed") is not None
needs_dask = pytest.mark.skipif(not HAS_DASK,
                                reason="dask.distributed is not installed (pip install 'dask[distributed]')")
UNITS = {f"task/{i}": (i,) for i in range(16)}


def lsq_job(seed: int, steps: int = 300) -> torch.Tensor:
    """Gradient descent on a random least-squares problem seeded by the unit itself (float64)."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(40, 8, generator=gen, dtype=torch.float64)
    b = torch.randn(40, generator=gen, dtype=torch.float64)
    x = torch.zeros(8, dtype=torch.float64)
    for _ in range(steps):
        x = x - 0.01 * (a.T @ (a @ x - b))
    return x


def counting_job(seed: int, calls: str) -> torch.Tensor:
    """``lsq_job`` that leaves one marker file per call in ``calls``."""
    (Path(calls) / f"{seed}-{uuid.uuid4().hex}").touch()
    return lsq_job(seed)


def flaky_job(seed: int, markers: str) -> torch.Tensor:
    """Raises on its first call for each seed, succeeds afterwards."""
    marker = Path(markers) / f"{seed}.failed"
    if not marker.exists():
        marker.touch()
        raise RuntimeError(f"transient failure of {seed}")
    return lsq_job(seed)


def broken_job(seed: int, bad: int) -> torch.Tensor:
    """Always raises for seed ``bad``."""
    if seed == bad:
        raise ValueError(f"unit {seed} is broken")
    return lsq_job(seed)


def dying_job(seed: int, markers: str, dies: str) -> torch.Tensor:
    """Kills its worker process when ``dies`` is ``"always"``, ``"once"`` (on its first call only), or
    ``"once-late"`` (on its first call, half a second in)."""
    marker = Path(markers) / f"{seed}.died"
    if dies == "always" or (dies.startswith("once") and not marker.exists()):
        marker.touch()
        if dies == "once-late":
            time.sleep(0.5)
        os._exit(1)
    return lsq_job(seed)


def probe_job() -> tuple[int, bool]:
    """The torch thread count and deterministic flag a job sees."""
    return torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()


def probed_lsq_job(seed: int) -> tuple[torch.Tensor, tuple[int, bool]]:
    """``lsq_job`` plus what ``probe_job`` sees in the same call."""
    return lsq_job(seed), probe_job()


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return run_units(lsq_job, UNITS, progress=False)


def assert_bitwise(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_serial_wraps_each_call_and_restores_torch_state() -> None:
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(False)  # a known state before the call (an earlier run may have seeded)
    try:
        assert run_units(probe_job, {"a": ()}, progress=False) == {"a": (1, True)}
        assert torch.get_num_threads() == 2 and not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=True)


def test_serial_equals_direct_deterministic_calls(reference: dict[str, torch.Tensor]) -> None:
    direct = {uid: deterministic_call(lsq_job, args) for uid, args in UNITS.items()}
    assert_bitwise(reference, direct)
    assert not torch.allclose(reference["task/0"], reference["task/1"])  # units really differ


@pytest.mark.parametrize("executor", ["local", pytest.param("dask", marks=needs_dask)])
def test_parallel_executor_is_bitwise_equal_to_serial(executor: str, reference: dict[str, torch.Tensor]) -> None:
    got = run_units(probed_lsq_job, UNITS, executor=executor, n_workers=2, progress=False)
    assert {probe for _, probe in got.values()} == {(1, True)}
    assert_bitwise({uid: x for uid, (x, _) in got.items()}, reference)


@needs_dask
def test_dask_scheduler_address_retries_failing_job(tmp_path: Path, reference: dict[str, torch.Tensor]) -> None:
    from distributed import LocalCluster

    units = {uid: (seed, str(tmp_path)) for uid, (seed,) in list(UNITS.items())[:4]}
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        got = run_units(flaky_job, units, executor="dask", scheduler=cluster.scheduler_address, progress=False)
    assert_bitwise(got, {uid: reference[uid] for uid in units})
    assert len(list(tmp_path.glob("*.failed"))) == 4


def test_resume_recomputes_only_missing_units(tmp_path: Path, reference: dict[str, torch.Tensor]) -> None:
    calls, cache = tmp_path / "calls", tmp_path / "cache"
    calls.mkdir()
    units = {uid: (seed, str(calls)) for uid, (seed,) in UNITS.items()}
    run_units(counting_job, units, cache_dir=cache, cache_key="k", progress=False)
    assert len(list(calls.iterdir())) == len(units)
    assert sorted(p.name for p in cache.glob("*.pt")) == sorted(unit_file_name(uid) for uid in units)
    assert not list(cache.glob(".tmp-*"))
    (cache / unit_file_name("task/5")).unlink()
    for marker in calls.iterdir():
        marker.unlink()
    got = run_units(counting_job, units, cache_dir=cache, cache_key="k", progress=False)
    assert [p.name.split("-")[0] for p in calls.iterdir()] == ["5"]
    assert_bitwise(got, reference)


def test_cache_bound_to_key_and_function(tmp_path: Path) -> None:
    units = dict(list(UNITS.items())[:2])
    run_units(lsq_job, units, cache_dir=tmp_path, cache_key="lr=0.1", progress=False)
    with pytest.raises(CacheMismatchError, match="delete the folder or use another cache_dir"):
        run_units(lsq_job, units, cache_dir=tmp_path, cache_key="lr=0.2", progress=False)
    with pytest.raises(CacheMismatchError, match="probe_job"):
        run_units(probe_job, {"a": ()}, cache_dir=tmp_path, cache_key="lr=0.1", progress=False)


def test_unit_file_names_are_safe_and_distinct() -> None:
    names = {unit_file_name(uid) for uid in ("a/b", "a_b", "../x", "a b")}
    assert len(names) == 4 and not any("/" in n or n.startswith(".") for n in names)


def test_transient_error_is_retried(tmp_path: Path, reference: dict[str, torch.Tensor]) -> None:
    units = {uid: (seed, str(tmp_path)) for uid, (seed,) in UNITS.items()}
    assert_bitwise(run_units(flaky_job, units, retries=1, progress=False), reference)
    for marker in tmp_path.iterdir():
        marker.unlink()
    with pytest.raises(UnitFailedError, match="transient failure"):
        run_units(flaky_job, units, retries=0, progress=False)


def test_permanent_failure_names_unit_after_caching_the_others(tmp_path: Path) -> None:
    units = {uid: (seed, 3) for uid, (seed,) in UNITS.items()}
    with pytest.raises(UnitFailedError, match=r"task/3.*ValueError: unit 3 is broken") as info:
        run_units(broken_job, units, cache_dir=tmp_path, progress=False)
    assert info.value.unit_id == "task/3" and list(info.value.failures) == ["task/3"]
    cached = {p.name for p in tmp_path.glob("*.pt")}
    assert cached == {unit_file_name(uid) for uid in units if uid != "task/3"}


def test_local_dead_workers_are_retried_and_charged_to_their_unit_only(
        tmp_path: Path, reference: dict[str, torch.Tensor]) -> None:
    dies = {0: "never", 1: "always", 2: "once", 3: "never", 4: "never"}
    units = {f"task/{seed}": (seed, str(tmp_path), mode) for seed, mode in dies.items()}
    with pytest.raises(UnitFailedError, match="task/1.*worker died") as info:
        run_units(dying_job, units, executor="local", n_workers=2, retries=1, cache_dir=tmp_path / "c",
                  progress=False)
    assert list(info.value.failures) == ["task/1"]
    assert (tmp_path / "2.died").exists()
    for uid in units.keys() - {"task/1"}:
        assert torch.equal(torch.load(tmp_path / "c" / unit_file_name(uid)), reference[uid])
    assert not (tmp_path / "c" / unit_file_name("task/1")).exists()


def test_local_pool_broken_between_wait_and_submit_is_recovered(
        tmp_path: Path, reference: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that dies after ``wait`` returned breaks the pool before the next ``submit``: the unit it ran is
    retried, the unit being submitted goes back to the queue, and every result is exact."""
    real_wait = executor_module.wait

    def slow_wait(futures, return_when="ALL_COMPLETED"):  # noqa: ANN001, ANN202 - as concurrent.futures.wait
        finished, pending = real_wait(futures, return_when=return_when)
        if any(f.exception() is None for f in finished):
            time.sleep(1.5)  # long enough for the late death of the job still in flight
        return finished, pending

    monkeypatch.setattr(executor_module, "wait", slow_wait)
    dies = {0: "never", 1: "once-late", 2: "never", 3: "never"}
    units = {f"task/{seed}": (seed, str(tmp_path), mode) for seed, mode in dies.items()}
    got = run_units(dying_job, units, executor="local", n_workers=2, retries=1, progress=False)
    assert (tmp_path / "1.died").exists()
    assert_bitwise(got, {uid: reference[uid] for uid in units})


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"executor": "threads"}, ValueError),
    ({"executor": "local", "scheduler": "tcp://127.0.0.1:8786"}, ValueError),
    ({"retries": -1}, ValueError),
])
def test_bad_arguments_are_rejected(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        run_units(lsq_job, UNITS, progress=False, **kwargs)


def test_units_must_map_ids_to_tuples() -> None:
    with pytest.raises(TypeError, match="tuples of args"):
        run_units(lsq_job, {"a": 1}, progress=False)  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="picklable"):
        run_units(lambda: 0, {"a": ()}, executor="local", progress=False)


@needs_dask
def test_unreachable_dask_scheduler_is_one_clear_error() -> None:
    """An address nothing listens on: SchedulerUnreachableError naming it (the CLI prints it on one line, exit 2)."""
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        with pytest.raises(SchedulerUnreachableError, match=r"tcp://127\.0\.0\.1:9 .*drop --scheduler"):
            run_units(lsq_job, {"a": (0,)}, executor="dask", scheduler="tcp://127.0.0.1:9", progress=False)


def test_check_scheduler_before_a_run() -> None:
    """Something listening passes; nothing listening, or an address that is not host:port, is one clear error."""
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        check_scheduler(f"tcp://127.0.0.1:{port}")
        check_scheduler(f"127.0.0.1:{port}")
    with pytest.raises(SchedulerUnreachableError, match=r"cannot reach the dask scheduler tcp://127\.0\.0\.1:9: .*"
                                                        r"drop --scheduler"):
        check_scheduler("tcp://127.0.0.1:9", timeout=2.0)
    for bad in ("tcp://nohost", "127.0.0.1:port"):
        with pytest.raises(SchedulerUnreachableError, match="is not tcp://host:port"):
            check_scheduler(bad)
