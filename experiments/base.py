"""The interface between one experiment module and the ``metainf-repro`` harness.

An experiment module (``experiments/e1_removal.py`` ...) defines one module-level ``EXPERIMENT = Experiment(...)``:

``id``
    ``"E1"`` ... ``"E6"``.
``title``
    One line, used as the section heading of ``REPRODUCE.md``.
``datasets``
    The datasets it runs on, a subset of :data:`DATASETS`.
``configs``
    ``scale -> config dict`` for the scales in :data:`SCALES`. A config may hold a ``"by_dataset"`` mapping
    ``dataset -> partial config``; the harness merges it (recursively) into the base config and drops the key, so
    the stored config is exactly what ran. ``--set key=value`` overrides come last (dotted keys reach nested dicts).
``run(ctx) -> payload``
    Runs one seed. ``payload`` is a dict with up to three keys, all JSON-able (numpy/torch scalars and arrays are
    converted):

    - ``"metrics"``: nested dict whose leaves are numbers (or strings), conventionally
      ``{method: {metric: value}}``, e.g. ``{"task_if": {"acc": 0.78, "spearman": 0.91}}``. Keys must not contain
      dots: the harness names a leaf by its dotted path (``"task_if.acc"``) in aggregates, floors and reports.
    - ``"tables"``: ``name -> list of row dicts``, rendered generically as markdown in ``REPRODUCE.md``. A row may
      carry ``"paper_ref": <id in replication.paper_targets.PAPER_TARGETS>``; the report then puts the paper's
      value beside every column whose name matches one of the target's metrics (``"acc"``, ``"runtime_s"``).
    - ``"series"``: anything a figure needs (curves, score vectors); stored, never compared.
``default_methods``
    Methods run when the user names none with ``--method``.
``seeds``
    ``scale -> seeds``; each seed is one call of ``run``; several seeds are aggregated as mean and std.
``dataset_seeds``
    Optional; ``dataset -> {scale -> seeds}``, overriding ``seeds`` for that dataset (e.g. fewer seeds where one
    seed is costly). :meth:`Experiment.seeds_for` resolves the default seeds of a run.
``reproduce_datasets``
    Optional; the datasets ``metainf-repro all`` runs this experiment on (when available offline). Default: all of
    ``datasets``. ``metainf-repro run --dataset`` accepts any of ``datasets``.
``undefined_ok``
    Optional; names of payload keys below which NaN means "undefined" (a correlation with a constant input, a
    residual a direct solver does not have, a config that failed). Anywhere else the harness fails a run whose
    payload holds NaN; inf and exploded numbers (``abs >= 1e30``) always fail it.
``validate(scale, config)``
    Optional; raises :class:`ConfigError` for a config that cannot run (e.g. more ways than classes). Called
    before anything runs, with the resolved config.
``train_steps(config, methods) -> tuple[Workload, ...]``
    Optional; the outer meta-gradient steps one seed takes on each Conv-4 model of the resolved ``config`` with
    the run's ``methods`` (:class:`Workload`), from which ``metainf-repro`` estimates a paper-scale run's time and
    memory before it starts (``replication.estimate``). Empty for a config without Conv-4 parts; an experiment
    without the hook (MLP only) gets no estimate.

:class:`RunContext` is what ``run`` receives; see its docstring.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import torch
from tqdm.auto import tqdm

from metainf.runtime.device import resolve_device, resolve_dtype

SCALES: tuple[str, ...] = ("smoke", "quick", "paper")
DATASETS: tuple[str, ...] = ("omniglot", "mnist", "miniimagenet", "fc100")

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration that cannot run; the CLI reports it in one line and exits with status 2."""


@dataclass(frozen=True)
class Workload:
    """The outer meta-gradient steps one seed of a run takes on one Conv-4 model: the input of a cost estimate.

    ``config`` describes the model and one step in E1's regime keys: ``model`` and the Conv-4 keys (``width``,
    ``norm``, ``activation``, ``pool``, ``zero_head``), ``n_way``, ``k_shot``, ``q_query``, ``image_size``,
    ``dtype``, ``delta``, ``chunk`` and the ``inner`` problem's section (``config[inner]``). One step is the
    meta-gradient over ``batch`` tasks and the optimiser's update. ``steps`` counts the seed's training and every
    retraining or replay on that model (B vmapped runs of T steps count B * T); ``recorded`` is the number of
    parameter vectors the seed holds at once in recorded trajectories. Scoring, evaluation and data loading are
    not counted.
    """

    part: str
    config: Mapping[str, Any]
    steps: int
    batch: int
    inner: str = "unrolled"
    recorded: int = 0


def _default_seeds() -> Mapping[str, tuple[int, ...]]:
    return MappingProxyType({"smoke": (0,), "quick": (0, 1, 2), "paper": (0, 1, 2)})


@dataclass(frozen=True)
class Experiment:
    """One scripted experiment; see the module docstring for the contract of every field."""

    id: str
    title: str
    datasets: tuple[str, ...]
    configs: Mapping[str, Mapping[str, Any]]
    run: Callable[[RunContext], dict]
    default_methods: tuple[str, ...] = ()
    seeds: Mapping[str, tuple[int, ...]] = field(default_factory=_default_seeds)
    validate: Callable[[str, Mapping[str, Any]], None] | None = None
    reproduce_datasets: tuple[str, ...] | None = None
    dataset_seeds: Mapping[str, Mapping[str, tuple[int, ...]]] = field(default_factory=dict)
    undefined_ok: frozenset[str] = frozenset()
    train_steps: Callable[[Mapping[str, Any], tuple[str, ...]], tuple[Workload, ...]] | None = None

    def __post_init__(self) -> None:
        unknown = [d for d in (*self.datasets, *(self.reproduce_datasets or ()), *self.dataset_seeds)
                   if d not in DATASETS]
        if unknown:
            raise ValueError(f"{self.id}: unknown datasets {unknown}; known: {list(DATASETS)}")
        for scale in (*self.configs, *self.seeds, *(s for by in self.dataset_seeds.values() for s in by)):
            if scale not in SCALES:
                raise ValueError(f"{self.id}: unknown scale {scale!r}; known: {list(SCALES)}")
        missing = [s for s in self.configs if not self.seeds.get(s)]
        empty = [f"{d}/{s}" for d, by in self.dataset_seeds.items() for s, seeds in by.items() if not seeds]
        if missing or empty:
            raise ValueError(f"{self.id}: no seeds for scales {missing + empty}")

    def seeds_for(self, scale: str, dataset: str) -> tuple[int, ...]:
        """The seeds a run of this experiment uses when the user names none: ``dataset_seeds`` first, then ``seeds``."""
        return tuple(self.dataset_seeds.get(dataset, {}).get(scale, self.seeds[scale]))


@dataclass(frozen=True)
class RunContext:
    """Everything one seed of one experiment run may use.

    ``config`` is the resolved config (a private copy). ``out_dir`` is the results root (``results/``).
    ``executor`` is ``"serial"``, ``"local"`` or ``"dask"`` (``scheduler`` is the dask address, if any).
    ``cache_dir`` is this seed's private folder, stable across restarts of the same run (its name is a hash of
    experiment, dataset, scale, config and methods, plus the seed); it is deleted once the run's result is written.
    ``device`` / ``dtype`` are the names ``--device`` / ``--dtype`` took (``dtype`` None: the experiment's own
    default); :attr:`torch_device` and :meth:`torch_dtype` resolve them.
    """

    exp_id: str
    dataset: str
    scale: str
    config: dict[str, Any]
    seed: int
    methods: tuple[str, ...]
    out_dir: Path
    data_root: str | None
    executor: str
    scheduler: str | None
    cache_dir: Path
    logger: Callable[[Mapping[str, Any], int | None], None]
    device: str = "cpu"
    dtype: str | None = None

    @property
    def torch_device(self) -> torch.device:
        """The run's device (``--device``; ``auto`` resolved)."""
        return resolve_device(self.device)

    def torch_dtype(self, default: torch.dtype = torch.float64) -> torch.dtype:
        """The run's dtype (``--dtype``), or the experiment's ``default`` when none was asked for."""
        return resolve_dtype(self.dtype, default)

    def progress(self, iterable: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
        """A tqdm progress bar over ``iterable`` (silent when stderr is not a terminal)."""
        label = f"{self.exp_id}/{self.dataset} seed {self.seed}: {desc}"
        return iter(tqdm(iterable, desc=label, total=total, leave=False, disable=None))

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Mirror intermediate metrics to W&B (never stored in the result JSON: return them in the payload)."""
        self.logger(metrics, step)

    def unit_cache(self, name: str) -> Path:
        """A folder for resumable per-unit results (e.g. one file per leave-one-out retraining), created on demand.

        Write files atomically (temp file + ``os.replace``) so an interrupted run never leaves a half file.
        """
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"unit cache name must be a plain folder name, got {name!r}")
        path = self.cache_dir / "units" / name
        path.mkdir(parents=True, exist_ok=True)
        return path
