"""E4's accuracy-cost frontier (``experiments.e4_frontier``) on a tiny trained problem of E4 (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from experiments import e4_frontier
from experiments.e4_ablations import CONFIGS, frontier_speedups
from experiments.setups import load_opts
from metainf.core.bilevel import make_inner
from metainf.core.models import build_model
from metainf.core.objective import MetaObjective, pool_tensors
from metainf.data.registry import load_split
from metainf.data.tasks import sample_task_pool
from metainf.influence import instance_scores
from metainf.linalg.types import IndefiniteHessianError
from metainf.methods import AttributionProblem, get_method, run_method
from metainf.metrics import correlations
from metainf.train import train_converged

pytestmark = pytest.mark.usefixtures("one_thread")
DT = torch.float64
#: E4's smoke config with a smaller frontier (the test times every row ``repeats`` times per timed kind)
CFG = {**CONFIGS["smoke"], "lissa": {"depth": 5, "batch_size": 2, "repeats": 1},
       "frontier": {**CONFIGS["smoke"]["frontier"], "cg_iters": [1, 3], "nystrom_ranks": [3], "nystrom_pcg": [2],
                    "neumann_depths": [5], "repeats": 3, "timed_kinds": ["task", "support"]}}


def trained(kind: str) -> tuple[MetaObjective, MetaObjective, torch.Tensor, torch.Tensor]:
    """(training objective, evaluation objective, lam*, lam0) of E4's smoke problem on the 8x8 digits at 4x4."""
    cfg = CFG
    data = {s: load_split("mnist", s, None, **load_opts(cfg, "mnist")) for s in ("train", "val")}
    ptr = sample_task_pool(data["train"], cfg["n_train_tasks"], cfg["n_way"], cfg["k_shot"], cfg["q_query"], seed=0)
    pev = sample_task_pool(data["val"], cfg["n_eval_tasks"], cfg["n_way"], cfg["k_shot"], cfg["q_query"], seed=1000)
    model = build_model("mlp", ptr.input_shape, cfg["n_way"], hidden=(cfg["hidden"],))
    opts = {**cfg["proximal"], "inner_solver": "dense"} if kind == "proximal" else cfg["unrolled"]
    inner = make_inner(kind, **opts)
    obj = MetaObjective(model, inner, pool_tensors(ptr, DT, "cpu"), delta=cfg["delta"], chunk=None)
    ev = MetaObjective(model, inner, pool_tensors(pev, DT, "cpu"), chunk=None)
    lam0 = model.init(0, DT)
    lam = train_converged(obj, lam0, tol=cfg["tol"], max_iter=cfg["max_iter"]).lam
    ev.state_at(lam)
    return obj, ev, lam, lam0


@pytest.fixture(scope="module", params=["unrolled", "proximal"])
def run(request) -> dict:
    kind = request.param
    obj, ev, lam, lam0 = trained(kind)
    loo = np.random.default_rng(0).normal(size=obj.n_tasks)  # any effects: the structure is tested, not the values
    metrics, series, table = e4_frontier.frontier(obj, ev, lam, lam0, loo, CFG, kind, 0)
    return {"kind": kind, "obj": obj, "ev": ev, "lam": lam, "loo": loo, "metrics": metrics, "series": series,
            "table": table}


def test_every_row_is_computed(run: dict) -> None:
    fr = CFG["frontier"]
    cg_rows = {f"cg{k}" + ("" if pre == "none" else f"_{pre}") for k in (1, 3)
               for pre in ("none", "fisher", "diag_fisher", "diag_hutchinson", "ekfac")}
    expected = {"exact", "task_if_cg", "fisher", "fast", "gn", "nystrom3", "nystrom3_pcg2", "neumann5",
                "lissa5"} | cg_rows | ({"ekfac"} if run["kind"] == "proximal" else set())
    assert set(run["metrics"]) == expected
    assert [r["estimator"] for r in run["table"]] == list(run["metrics"])
    for name, m in run["metrics"].items():
        assert m["status"] == "ok", (name, m.get("error"))
        for key in ("task_spearman", "task_spearman_loo", "support_spearman", "query_spearman"):
            assert -1.0 <= m[key] <= 1.0, (name, key)
        scores = run["series"][name]["scores"]
        assert len(scores["task"]) == run["obj"].n_tasks
        assert len(scores["support"]) == run["obj"].tasks.ws.numel()
        assert m["task_epochs_q25"] <= m["task_epochs_median"] <= m["task_epochs_q75"]
        assert m["task_epochs_median"] > 0 and m["peak_mb"] > 0
        for kind in ("task", "support", "query"):
            assert m[f"{kind}_pareto"] in (0, 1)
    assert all(fr["repeats"] == run["metrics"][n]["repeats"] for n in run["metrics"])


def test_timings_carry_the_configured_repeats(run: dict) -> None:
    repeats = CFG["frontier"]["repeats"]
    for name, raw in run["series"].items():
        for prefix in ("task", "instance"):
            seconds, ratios = raw[f"{prefix}_seconds"], raw[f"{prefix}_epoch_ratios"]
            assert len(seconds) == len(ratios) >= repeats, name
            m = run["metrics"][name]
            assert m[f"{prefix}_seconds_median"] == pytest.approx(float(np.median(seconds)))
            assert m[f"{prefix}_epochs_median"] == pytest.approx(float(np.median(ratios)))
            q25, q75 = np.percentile(ratios, [25, 75])
            assert m[f"{prefix}_epochs_iqr"] == pytest.approx(q75 - q25)


def test_exact_row_agrees_with_task_if_and_a_dense_solve(run: dict) -> None:
    """The exact row against registry ``task_if`` (CG to 1e-12) and against torch.linalg.solve of the dense total
    Hessian, all three unit kinds."""
    obj, ev, lam = run["obj"], run["ev"], run["lam"]
    problem = AttributionProblem(obj, lam, ev)
    exact = run["series"]["exact"]["scores"]
    v = torch.linalg.solve(obj.dense_hessian(lam), ev.mean_loss_grad(lam))
    support, query = instance_scores(obj, lam, v)
    dense = {"task": obj.task_grads(lam) @ v / obj.n_tasks, "support": support, "query": query}
    for kind in ("task", "support", "query"):
        cg = run_method(get_method("task_if", tol=1e-12, max_iter=2000), problem, kind).values.reshape(-1).numpy()
        assert correlations(exact[kind], cg)["spearman"] == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(exact[kind], dense[kind].reshape(-1).numpy(), rtol=1e-6, atol=1e-12)
    assert run["metrics"]["exact"]["task_spearman"] == pytest.approx(1.0)
    assert run["metrics"]["task_if_cg"]["task_spearman"] == pytest.approx(1.0, abs=1e-9)
    assert run["metrics"]["exact"]["task_spearman_loo"] == pytest.approx(
        correlations(exact["task"], run["loo"])["spearman"])


def test_pareto_marks_are_consistent_with_the_rows(run: dict) -> None:
    """A marked row is dominated by no other; an unmarked one by at least one (tasks: cost vs Spearman with LOO)."""
    m = run["metrics"]
    for name, row in m.items():
        dominated = any(o["task_epochs_median"] <= row["task_epochs_median"]
                        and o["task_spearman_loo"] >= row["task_spearman_loo"]
                        and (o["task_epochs_median"] < row["task_epochs_median"]
                             or o["task_spearman_loo"] > row["task_spearman_loo"]) for o in m.values())
        assert row["task_pareto"] == int(not dominated), name


def test_pareto_mask_on_a_hand_made_example() -> None:
    cost = [1.0, 2.0, 3.0, 4.0, 2.0, float("nan"), 0.5, 5.0]
    acc = [0.5, 0.7, 0.6, 0.9, 0.7, 1.0, float("nan"), 0.9]
    # 0: cheapest finite; 1 and 4 tie (neither dominates the other); 2 is dominated by 1; 3 the most accurate;
    # 5 and 6 have NaN; 7 is as accurate as 3 but costs more
    assert e4_frontier.pareto_mask(cost, acc) == [True, True, False, True, True, False, False, False]
    assert e4_frontier.pareto_mask([], []) == []


def test_frontier_speedups_pick_the_fastest_row_within_the_margin() -> None:
    def row(seconds: float, loo: float) -> dict:
        return {"status": "ok", "task_seconds_median": seconds, "task_spearman_loo": loo}

    rows = {"exact": row(4.0, 0.80), "cg1": row(0.5, 0.70), "cg5": row(1.0, 0.79), "fast": row(2.0, 0.81),
            "broken": {"status": "failed", "error": "indefinite"}, "lissa": row(0.1, float("nan"))}
    out = frontier_speedups(rows, ref_loo=0.80, margin=0.02, t_loo=10.0)
    # cg1 is too far below the exact path, lissa's Spearman is undefined: cg5 is the fastest within the margin
    assert out["fastest"] == {"estimator": "cg5", "seconds": 1.0, "spearman_loo": 0.79, "speedup_vs_loo": 10.0}
    assert out["fast"] == {"seconds": 2.0, "spearman_loo": 0.81, "speedup_vs_loo": 5.0, "within_margin": 1}
    none = frontier_speedups(rows, ref_loo=float("nan"), margin=0.02, t_loo=10.0)  # LOO undefined: no row qualifies
    assert none["fastest"]["estimator"] == "none" and np.isnan(none["fastest"]["speedup_vs_loo"])
    assert none["fast"]["within_margin"] == 0 and none["fast"]["speedup_vs_loo"] == 5.0


def test_a_failing_row_is_recorded_and_left_off_the_frontier() -> None:
    obj, ev, lam, lam0 = trained("unrolled")

    def fail(problem: AttributionProblem) -> torch.Tensor:
        raise IndefiniteHessianError("the damped total Hessian is indefinite")

    row = e4_frontier.Row("broken", lambda: e4_frontier.VectorIF("broken", fail), AttributionProblem(obj, lam, ev))
    metrics, scores, raw = e4_frontier.measure_row(row, lambda: obj.value_and_grad(lam0), CFG["frontier"])
    assert metrics["status"] == "failed" and "indefinite" in metrics["error"]
    assert scores == {} and raw == {}


@pytest.mark.parametrize("timed", [("task", "support"), ("task",)])
def test_frontier_figure_is_drawn(run: dict, tmp_path, timed: tuple[str, ...]) -> None:
    """The figure draws from the metrics alone, with instance timings or (smoke) with the tasks' cost only."""
    from replication.plots.e4_ablations import frontier_figure

    metrics = {n: {k: v for k, v in m.items() if k.split("_")[0] in timed or "epochs" not in k and "seconds" not in k}
               for n, m in run["metrics"].items()}
    path = frontier_figure(metrics, "test", tmp_path / "frontier.png")
    assert path.exists() and path.stat().st_size > 10_000
