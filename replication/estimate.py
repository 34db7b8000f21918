"""What a run will cost, measured before it starts: one outer step of each Conv-4 model it trains, times its steps.

An experiment declares its outer steps per seed (``Experiment.train_steps`` -> :class:`~experiments.base.Workload`
per Conv-4 model). For each workload :func:`measure_step` builds the config's real model at full size on the run's
device and dtype, with random inputs of the dataset's shape (the cost of a step does not depend on pixel values),
takes one warm-up step, then times one more step on ``batch`` tasks (wall time, the device synchronised; one torch
thread, as the experiments set) and records its peak memory (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the
process's peak resident set size, ``metainf.runtime.memory.PeakSampler``). Then

    hours = step seconds x steps per seed x seeds / 3600   (seeds one after another, one device)
    memory = peak of one step + recorded trajectories (recorded x n_params x bytes per number)

Scoring, evaluation and data loading are not counted, so the time is a lower bound; parts without the hook
(MLP models) are named as not estimated.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from experiments.base import Experiment, Workload
from experiments.setups import CONV4_KEYS, DTYPES, model_from_config
from metainf.core.bilevel import make_inner
from metainf.core.objective import MetaObjective
from metainf.core.taskdata import TaskData
from metainf.runtime.memory import PeakSampler
from metainf.train import train_stochastic

#: image channels of each dataset (grey Omniglot and MNIST, RGB Mini-ImageNet and FC100)
CHANNELS = {"omniglot": 1, "mnist": 1, "miniimagenet": 3, "fc100": 3}


@dataclass(frozen=True)
class StepCost:
    """One measured outer step: wall seconds, peak memory (MiB; ``memory_kind`` says which), parameter count."""

    seconds: float
    peak_mb: float
    memory_kind: str
    n_params: int


@dataclass(frozen=True)
class PartEstimate:
    """One workload's estimate: its measured step, steps per seed, and the totals over the run's seeds."""

    part: str
    n_params: int
    step_s: float
    batch: int
    steps_per_seed: int
    hours: float
    peak_mb: float
    memory_kind: str
    trajectory_mb: float


@dataclass(frozen=True)
class Estimate:
    """A run's estimate: ``parts`` (one per Conv-4 workload), and ``note`` on what is not estimated (or "")."""

    exp_id: str
    dataset: str
    device: str
    dtype: str
    seeds: int
    parts: tuple[PartEstimate, ...]
    note: str
    measure_s: float

    @property
    def hours(self) -> float:
        """Estimated hours of training and retraining over all seeds (the parts one after another)."""
        return sum(p.hours for p in self.parts)

    @property
    def memory_mb(self) -> float:
        """Largest estimated memory of a part: one step's peak plus its recorded trajectories (MiB)."""
        return max((p.peak_mb + p.trajectory_mb for p in self.parts), default=0.0)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for the result's provenance."""
        return {**asdict(self), "parts": [asdict(p) for p in self.parts], "hours": self.hours,
                "memory_mb": self.memory_mb}


def synthetic_tasks(n_tasks: int, n_way: int, k_shot: int, q_query: int, shape: tuple[int, ...],
                    dtype: torch.dtype, device: torch.device) -> TaskData:
    """``n_tasks`` tasks of random inputs of ``shape`` with balanced labels, all point weights 1."""
    gen = torch.Generator().manual_seed(0)
    ys = torch.arange(n_way).repeat_interleave(k_shot).expand(n_tasks, -1)
    yq = torch.arange(n_way).repeat_interleave(q_query).expand(n_tasks, -1)
    xs = torch.randn(n_tasks, ys.shape[1], *shape, generator=gen)
    xq = torch.randn(n_tasks, yq.shape[1], *shape, generator=gen)
    return TaskData(xs=xs.to(device, dtype), ys=ys.to(device), ws=torch.ones(ys.shape, dtype=dtype, device=device),
                    xq=xq.to(device, dtype), yq=yq.to(device), wq=torch.ones(yq.shape, dtype=dtype, device=device))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_step(workload: Workload, dataset: str, device: torch.device, dtype: torch.dtype) -> StepCost:
    """Time one Adam step of ``workload.batch`` tasks on its model at full size, after a warm-up step."""
    cfg = dict(workload.config)
    shape = (CHANNELS[dataset], cfg["image_size"], cfg["image_size"])
    model = model_from_config(cfg, shape)
    model.module.to(device)
    inner = make_inner(workload.inner, **cfg[workload.inner])
    tasks = synthetic_tasks(workload.batch, cfg["n_way"], cfg["k_shot"], cfg["q_query"], shape, dtype, device)
    obj = MetaObjective(model, inner, tasks, delta=cfg.get("delta", 0.0), chunk=cfg.get("chunk"))
    lam0 = model.init(0, dtype).to(device)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the experiments run (each sets one torch thread)
    try:
        return _timed_step(obj, lam0, workload.batch, device, model.n_params)
    finally:
        torch.set_num_threads(threads)


def _timed_step(obj: MetaObjective, lam0: torch.Tensor, batch: int, device: torch.device, n_params: int) -> StepCost:
    train_stochastic(obj, lam0, 1, batch, 1e-3, "adam", record_every=1)  # warm-up: kernels, allocator
    _sync(device)
    with PeakSampler(device=device) as peak:
        start = time.perf_counter()
        train_stochastic(obj, lam0, 1, batch, 1e-3, "adam", record_every=1)
        _sync(device)
        seconds = time.perf_counter() - start
    if peak.gpu_peak is not None:
        return StepCost(seconds, peak.gpu_peak, "CUDA max allocated", n_params)
    return StepCost(seconds, peak.peak, "process RSS", n_params)


#: the config keys that determine one step's cost (with ``config[inner]``)
STEP_KEYS = ("model", *CONV4_KEYS, "n_way", "k_shot", "q_query", "image_size", "dtype", "delta", "chunk")
_MEASURED: dict[str, StepCost] = {}


def cached_step(workload: Workload, dataset: str, device: torch.device, dtype: torch.dtype) -> StepCost:
    """:func:`measure_step`, measured once per model and step (:data:`STEP_KEYS` and the inner problem's section),
    batch, input shape, device and dtype in this process (E1 and the Conv-4 parts of E2, E3, E6 share one)."""
    model = {k: workload.config.get(k) for k in (*STEP_KEYS, workload.inner)}
    key = json.dumps([model, workload.batch, workload.inner, CHANNELS[dataset], str(device), str(dtype)],
                     sort_keys=True, default=str)
    if key not in _MEASURED:
        _MEASURED[key] = measure_step(workload, dataset, device, dtype)
    return _MEASURED[key]


def estimate_run(experiment: Experiment, dataset: str, config: Mapping[str, Any], methods: tuple[str, ...],
                 n_seeds: int, device: torch.device, dtype_name: str | None) -> Estimate:
    """The estimate of a run (module docstring); ``dtype_name`` is ``--dtype`` (None: each workload's config)."""
    start = time.perf_counter()
    if experiment.train_steps is None:
        return Estimate(experiment.id, dataset, str(device), dtype_name or "-", n_seeds, (),
                        "no estimate available: it declares no Conv-4 training steps (MLP only)",
                        0.0)
    workloads = experiment.train_steps(config, methods)
    parts = []
    dtype_used = dtype_name or "-"
    for w in workloads:
        dtype_used = dtype_name or w.config.get("dtype", "float64")
        dtype = DTYPES[dtype_used]
        cost = cached_step(w, dataset, device, dtype)
        itemsize = torch.empty((), dtype=dtype).element_size()
        parts.append(PartEstimate(w.part, cost.n_params, cost.seconds, w.batch, w.steps,
                                  cost.seconds * w.steps * n_seeds / 3600, cost.peak_mb, cost.memory_kind,
                                  w.recorded * cost.n_params * itemsize / 2**20))
    note = "" if parts else "no estimate available: no Conv-4 part in this config"
    if parts and config.get("model") == "mlp":
        note = "its MLP parts are not estimated"
    return Estimate(experiment.id, dataset, str(device), dtype_used, n_seeds, tuple(parts), note,
                    time.perf_counter() - start)


def format_estimate(est: Estimate) -> list[str]:
    """The block printed before a run: device, params, step time, steps, hours, memory, per part."""
    if not est.parts:
        return [f"estimate for {est.exp_id} on {est.dataset}: {est.note}"]
    lines = [f"estimate for {est.exp_id} on {est.dataset}, {est.seeds} seed(s), device {est.device}, "
             f"dtype {est.dtype}:"]
    for p in est.parts:
        lines.append(f"  {p.part}: Conv-4 {p.n_params:,} params; one step of {p.batch} tasks {p.step_s:.3g} s; "
                     f"{p.steps_per_seed:,} steps per seed x {est.seeds} -> {p.hours:.3g} h; memory "
                     f"{p.peak_mb:,.0f} MiB ({p.memory_kind}, one step) + {p.trajectory_mb:,.0f} MiB recorded "
                     "trajectory")
    lines.append(f"  total: {est.hours:.3g} h of training and retraining (scoring and evaluation not included), "
                 f"about {est.memory_mb:,.0f} MiB at most; estimated in {est.measure_s:.1f} s")
    if est.note:
        lines.append(f"  {est.note}")
    return lines
