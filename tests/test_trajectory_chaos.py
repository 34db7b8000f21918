"""The chaos floor of trajectory-specific LOO (metainf.groundtruth.trajectory.chaos_floors / kick_size /
trajectory_reliable): exact properties on a tiny float64 problem, and the reliability flag on a grid of E3 configs on
digits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from metainf.groundtruth.trajectory import Lanes, chaos_floors, kick_size, replay, trajectory_reliable
from tests.test_methods_trajectory import make_problem

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def prob():
    return make_problem(steps=6, batch=2, lr=0.1)


def test_zero_perturbation_gives_zero_floor_and_small_ones_scale_linearly(prob):
    zero, small, double = chaos_floors(prob, [0.0, 1e-7, 2e-7], n_replays=3, seed=1)
    assert zero.floor == 0.0 and bool((zero.diffs == 0).all())
    assert small.floor > 0 and double.floor == pytest.approx(2 * small.floor, rel=1e-3)
    assert small.size == 1e-7


def test_kick_size_is_the_first_step_change_of_one_removal(prob):
    traj = prob.trajectory
    task = traj.schedule[0][0]
    lr, batch = traj.lrs[0], len(traj.schedule[0])
    g = prob.objective.task_grads(traj.lams[0])[task]
    assert kick_size(prob, "task", [(task, None)]) == pytest.approx(lr / batch * float(g.norm()), rel=1e-12)
    # a query weight enters the task's meta-gradient linearly: the one-step replay without it moves lam_1 by the kick
    for kind in ("task", "query"):
        point = None if kind == "task" else 1
        slots = torch.zeros(2, 1, batch, dtype=torch.bool)
        slots[1, 0, 0] = True
        onehot = None if kind == "task" else torch.tensor([[0.0] * 4, [0.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
        lam1 = replay(prob.objective, traj.lams[0], traj.schedule[:1], traj.lrs[:1], "sgd",
                      Lanes(kind, slots, onehot)).lams[-1]
        assert float((lam1[1] - lam1[0]).norm()) == pytest.approx(kick_size(prob, kind, [(task, point)]), rel=1e-9)


def test_reliability_rule():
    effects = torch.tensor([0.0, 1.0, 2.0, 3.0])  # std 1.29
    assert trajectory_reliable(0.6, effects) and not trajectory_reliable(0.7, effects)
    assert not trajectory_reliable(0.1, effects, ratio=0.05)


GRID = [  # (overrides of E3's quick digits config, expected flag)
    ({}, True),  # the committed config: DVEmb Spearman 0.93 (tasks) with trajectory LOO
    ({"n_way": 5, "k_shot": 2}, True),
    ({"n_way": 3, "k_shot": 1}, False),  # trajectory LOO chaotic: DVEmb Spearman about 0
    ({"n_way": 3, "k_shot": 2}, False),
]


@pytest.mark.slow
@pytest.mark.parametrize(("overrides", "reliable"), GRID)
def test_flag_on_a_grid_of_e3_configs(overrides, reliable):
    from experiments import ground_truth, scoring, setups
    from experiments.base import RunContext
    from experiments.e3_loo import CONFIGS, chaos_metrics, problem_configs

    cfg = problem_configs({**CONFIGS["quick"], **overrides})["unrolled"]
    ctx = RunContext("E3", "mnist", "quick", cfg, 0, (), Path("unused"), None, "serial", None, Path("unused"),
                     lambda *a: None)
    setup = setups.build_setup(ctx, "unrolled")
    problem = setups.problems(setup, setups.fit(setup, cfg, 0), 0)["trajectory"]
    truth = {}
    for kind in ("task", "query"):
        units = scoring.choose_units(setup.objective, kind, 24, 0)
        truth[kind] = {"units": units, "trajectory": ground_truth.trajectory_loo(problem, kind, units)}
    gt: dict = {}
    out = chaos_metrics(problem, truth, ("task", "query"), 0, gt)
    assert out["traj_reliable"] == float(reliable), (out, gt)
