"""LDS ground truth (metainf.groundtruth.lds): subsets, the vmapped ensemble trainer against train_stochastic, and
LDS / ceiling on problems where the answer is known."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from metainf.core.bilevel import ProximalInner, UnrolledInner
from metainf.core.models import build_model
from metainf.core.objective import MetaObjective
from metainf.groundtruth.lds import (EnsembleTrainer, PerRun, draw_subsets, subset_losses, subset_objective)
from metainf.train import train_stochastic
from tests.fixtures_tasks import DT, INPUT, N_WAY, make_tasks


pytestmark = pytest.mark.usefixtures("one_thread")



def test_draw_subsets_sizes_seeded_and_stratified():
    masks = draw_subsets(20, 24, 0.5, seed=3)
    assert masks.shape == (24, 20) and masks.dtype == torch.bool
    assert (masks.sum(1) == 10).all()
    assert torch.equal(masks, draw_subsets(20, 24, 0.5, seed=3))
    assert not torch.equal(masks, draw_subsets(20, 24, 0.5, seed=4))
    bad = np.arange(20) < 8  # 8 corrupted, 12 clean: 0..8 corrupted per subset of 10
    strat = draw_subsets(20, 24, 0.5, seed=3, corrupted=bad)
    counts = strat[:, torch.from_numpy(bad)].sum(1)
    assert (strat.sum(1) == 10).all() and int(counts.min()) == 0 and int(counts.max()) == 8
    assert sorted(counts.tolist()) == np.rint(np.linspace(0, 8, 24)).astype(int).tolist()
    with pytest.raises(ValueError, match="alpha"):
        draw_subsets(20, 24, 0.0)


INNERS = {"unrolled": lambda: UnrolledInner(steps=1, lr=0.4),  # one vmapped pass over every run's tasks
          "proximal": lambda: ProximalInner(beta=4.0, inner_solver="dense")}  # per-run objectives (stateful)


@pytest.mark.parametrize("optimizer,inner", [("sgd", "unrolled"), ("adam", "unrolled"), ("adam", "proximal")])
def test_ensemble_trainer_equals_train_stochastic_per_subset(optimizer, inner):
    model = build_model("mlp", INPUT, N_WAY, hidden=(4,))
    obj = MetaObjective(model, INNERS[inner](), make_tasks(0, 10), delta=0.01)
    ev = MetaObjective(model, INNERS[inner](), make_tasks(1, 5))
    lam0 = model.init(0, dtype=DT)
    masks, seeds = draw_subsets(10, 3, 0.5, seed=1), [11, 12, 13]
    trainer = EnsembleTrainer(obj, ev, lam0, steps=7, batch=2, lr=0.3 if optimizer == "sgd" else 0.05,
                              optimizer=optimizer)
    lams = trainer.train(masks, seeds)
    losses = trainer(masks, seeds)
    for b in range(3):
        ref, _ = train_stochastic(subset_objective(obj, masks[b]), lam0, 7, 2, trainer.lr, optimizer, seed=seeds[b])
        torch.testing.assert_close(lams[b], ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(losses[b], ev.task_losses(ref), rtol=1e-12, atol=1e-12)
    seeded = EnsembleTrainer(obj, ev, lambda s: model.init(s, dtype=DT), steps=7, batch=2, lr=trainer.lr,
                             optimizer=optimizer)
    ref, _ = train_stochastic(subset_objective(obj, masks[1]), model.init(12, dtype=DT), 7, 2, trainer.lr, optimizer,
                              seed=12)
    torch.testing.assert_close(seeded.train(masks, seeds)[1], ref, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="at least batch"):
        EnsembleTrainer(obj, ev, lam0, steps=1, batch=6, lr=0.1).train(masks, seeds)


@dataclass
class additive_run:
    """Retraining whose eval losses are exactly additive in the subset, plus seed noise of std sigma."""

    weights: np.ndarray
    sigma: float

    def __call__(self, mask: torch.Tensor, seed: int) -> torch.Tensor:
        noise = np.random.default_rng(seed).normal(scale=self.sigma, size=self.weights.shape[1])
        return torch.tensor(2.0 - mask.double().numpy() @ self.weights + noise)


def test_subset_losses_exact_when_losses_are_additive():
    rng = np.random.default_rng(0)
    helps = rng.normal(size=(16, 3))  # unit u lowers eval task j's loss by helps[u, j]
    masks = draw_subsets(16, 24, 0.5, seed=0)
    gt = subset_losses(PerRun(additive_run(helps, 0.0)), masks, n_seeds=2, seed=5, batch=7)
    assert gt.losses.shape == (24, 3) and gt.alpha == 0.5
    assert set(gt.seeds_a.ravel()).isdisjoint(gt.seeds_b.ravel()) and gt.seeds_a.shape == (24, 2)
    ceiling = gt.ceiling()
    assert ceiling.mean == pytest.approx(1.0) and ceiling.per_eval == pytest.approx(1.0)
    exact = gt.score(helps)  # the additive truth: per-eval scores
    assert exact.mean == pytest.approx(1.0) and exact.per_eval == pytest.approx(1.0)
    assert gt.score(helps.mean(1)).mean == pytest.approx(1.0)  # mean-loss LDS of the averaged scores
    assert gt.score(-helps.mean(1)).mean == pytest.approx(-1.0)  # opposite sign convention: -1


def test_seed_averaging_raises_the_ceiling():
    rng = np.random.default_rng(1)
    helps = rng.normal(size=(20, 1))
    masks = draw_subsets(20, 40, 0.5, seed=1)
    # subset signal std ~1.0 against noise std 1.5: reliability ~0.3 with one seed, ~0.9 with 16
    run = PerRun(additive_run(helps, 1.5))
    one = subset_losses(run, masks, n_seeds=1, seed=0).ceiling()
    many = subset_losses(run, masks, n_seeds=16, seed=0).ceiling()
    assert many.mean > one.mean + 0.2 and many.mean > 0.75
    assert many.mean_ci95[0] <= many.mean <= many.mean_ci95[1]


def test_subset_losses_through_the_local_executor():
    rng = np.random.default_rng(2)
    helps = rng.normal(size=(12, 2))
    masks = draw_subsets(12, 6, 0.5, seed=2)
    run = PerRun(additive_run(helps, 0.1))
    serial = subset_losses(run, masks, seed=3, batch=4)
    local = subset_losses(run, masks, seed=3, batch=4, executor="local", n_workers=2)
    torch.testing.assert_close(serial.losses, local.losses)
