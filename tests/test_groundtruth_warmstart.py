"""Warm-start paired LOO (metainf.groundtruth.warmstart) against closed forms and train_stochastic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metainf.core.bilevel import UnrolledInner
from metainf.core.models import build_model
from metainf.core.objective import MetaObjective
from metainf.groundtruth.warmstart import warmstart_loo
from metainf.train import train_stochastic
from tests.test_groundtruth_lds import DT, INPUT, N_WAY, make_tasks

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup():
    model = build_model("mlp", INPUT, N_WAY, hidden=(4,))
    inner = UnrolledInner(steps=1, lr=0.4)
    obj = MetaObjective(model, inner, make_tasks(0, 8), delta=0.01)
    ev = MetaObjective(model, inner, make_tasks(1, 5))
    lam, _ = train_stochastic(obj, model.init(0, dtype=DT), 20, 4, 0.3, seed=0)
    return obj, ev, lam


def test_one_step_closed_form(setup):
    """K = 1 SGD: lam_1(without u) = lam_1(with u) + lr (c_u / |B|) tau_u g_u(lam*), c_u = u's slots in batch 0."""
    obj, ev, lam = setup
    batch, lr = 4, 0.3
    first = np.random.default_rng(7).permutation(obj.n_tasks)[:batch].tolist()
    res = warmstart_loo(obj, ev, lam, "task", [(k, None) for k in range(obj.n_tasks)], 1, batch, lr, seed=7,
                        n_control=1)
    g = obj.task_grads(lam)
    lam1 = lam - lr * (g[first].mean(0) + obj.delta * lam)
    base = ev.mean_loss(lam1)
    for k in range(obj.n_tasks):
        expected = ev.mean_loss(lam1 + lr * first.count(k) / batch * g[k]) - base
        torch.testing.assert_close(res.effects[k], expected.detach(), rtol=1e-9, atol=1e-13)
        assert (res.effects[k] == 0) == (k not in first)
    torch.testing.assert_close(torch.tensor(res.control_loss, dtype=DT), base.detach())


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_k_steps_equal_train_stochastic_with_the_task_weight_zero(setup, optimizer):
    obj, ev, lam = setup
    lr = 0.2 if optimizer == "sgd" else 0.02
    res = warmstart_loo(obj, ev, lam, "task", [(2, None), (5, None)], 6, 4, lr, optimizer, seed=3, n_control=2)
    with_all, _ = train_stochastic(obj, lam, 6, 4, lr, optimizer, seed=3)
    for i, k in enumerate((2, 5)):
        tau = obj.tau.clone()
        tau[k] = 0.0
        without, _ = train_stochastic(obj.with_weights(tau=tau), lam, 6, 4, lr, optimizer, seed=3)
        torch.testing.assert_close(res.effects[i], (ev.mean_loss(without) - ev.mean_loss(with_all)).detach(),
                                   rtol=1e-9, atol=1e-13)
    controls = [ev.mean_loss(train_stochastic(obj, lam, 6, 4, lr, optimizer, seed=s)[0]) for s in (4, 5, 6, 7)]
    diffs = torch.stack([controls[0] - controls[1], controls[2] - controls[3]]).detach()
    torch.testing.assert_close(res.control_diffs, diffs, rtol=1e-9, atol=1e-13)
    assert res.noise_floor == pytest.approx(float(diffs.pow(2).mean().sqrt())) and res.noise_floor > 0


@pytest.mark.parametrize("kind", ["task", "support", "query"])
def test_unit_of_zero_weight_has_exactly_zero_effect(setup, kind):
    obj, ev, lam = setup
    if kind == "task":
        tau = obj.tau.clone()
        tau[1] = 0.0
        zeroed = obj.with_weights(tau=tau)
    elif kind == "support":
        ws = obj.tasks.ws.clone()
        ws[1, 2] = 0.0
        zeroed = obj.with_weights(ws=ws)
    else:
        wq = obj.tasks.wq.clone()
        wq[1, 2] = 0.0
        zeroed = obj.with_weights(wq=wq)
    res = warmstart_loo(zeroed, ev, lam, kind, [(1, None if kind == "task" else 2), (0, None if kind == "task" else 1)],
                        8, 4, 0.2, seed=1, n_control=1)
    assert float(res.effects[0]) == 0.0
    assert float(res.effects[1]) != 0.0


def test_bad_units(setup):
    obj, ev, lam = setup
    with pytest.raises(ValueError, match="out of range"):
        warmstart_loo(obj, ev, lam, "task", [(99, None)], 2, 4, 0.1)
    with pytest.raises(ValueError, match="point index"):
        warmstart_loo(obj, ev, lam, "query", [(0, None)], 2, 4, 0.1)
