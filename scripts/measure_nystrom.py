"""Measure ``task_if_nystrom`` (sketched total Hessian, ``metainf.linalg.nystrom``) against exact task-IF (issue #7).

Part 1, the E5 set-up (``experiments/e5_cost.py``, config ``quick``: MNIST digits 8x8, 5-way 1-shot 2-query,
unrolled MAML 1 step, delta 0.1), 100 training tasks, hidden 8 and 16, seeds 0 and 1, all in this one process:

- ``epoch_s``: one meta-epoch (F value + gradient over the 100 tasks; E5's ``median_time``, at lam*);
- exact task-IF (``task_if``: CG on the exact total Hessian, E5's reference) time and scores, the dense-solve
  scores (sanity: Spearman of CG vs dense) and ``task_if_fisher`` for reference;
- ``task_if_nystrom`` for k in {10, 20, 40, 80}, power 0/1, PCG iterations 0/2/5, probes ``span`` with the
  Rayleigh-Ritz model (``ritz``) and probes ``gauss`` with the Nystrom model (``nystrom``); and truncated plain CG
  (n total HVPs, n = 1..5, same task and evaluation gradients) as the baseline trade-off.
  Time of each = ``run_method`` wall time (task gradients + evaluation gradient + sketch + solve + scores), median
  of ``--repeats``, in meta-epochs; accuracy = Spearman / Pearson with the exact task-IF scores.

Part 2 (``--loo``): the E4 MNIST problem (``experiments/e4_ablations.py``, quick: 40 tasks, 83 parameters), rebuilt
as E4 does; the converged leave-one-out effects are read from ``results/E4/mnist-quick.json`` when the rebuilt exact
scores match the stored ones (else recomputed with ``metainf.groundtruth.converged.retrain``), and every setting is
scored by Spearman with LOO next to the exact path's.

Usage: OMP_NUM_THREADS=1 .venv/bin/python scripts/measure_nystrom.py [--quick] [--loo] [--repeats 3]
Prints tables and writes JSON to /tmp/nystrom_measure.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import setups  # noqa: E402
from experiments.base import RunContext  # noqa: E402
from experiments.e5_cost import CONFIGS as E5_CONFIGS  # noqa: E402
from experiments.e5_cost import median_time  # noqa: E402
from metainf.linalg.cg import cg  # noqa: E402
from metainf.methods import AttributionProblem, get_method, run_method  # noqa: E402
from metainf.metrics import correlations  # noqa: E402

OUT = Path("/tmp/nystrom_measure.json")
ROOT = Path(__file__).resolve().parents[1]


def context(exp: str, cfg: dict, seed: int) -> RunContext:
    cfg = {k: v for k, v in cfg.items() if k != "by_dataset"}
    return RunContext(exp, "mnist", "quick", cfg, seed, (), Path(tempfile.gettempdir()), None, "serial", None,
                      Path(tempfile.mkdtemp(prefix="nystrom-measure-")), lambda *a: None)


def settings(quick: bool) -> list[dict]:
    ks = (10, 20) if quick else (10, 20, 40, 80)
    out = []
    for probes, approx in (("span", "ritz"), ("gauss", "nystrom")):
        for k in ks:
            for power in (0, 1):
                for it in (0, 2, 5):
                    out.append({"method": "task_if_nystrom", "k": k, "power": power, "pcg_iters": it,
                                "probes": probes, "approx": approx})
    # below the brief's grid: the small ranks that could fit a 3-meta-epoch budget
    out += [{"method": "task_if_nystrom", "k": k, "power": power, "pcg_iters": 0, "probes": "span", "approx": "ritz"}
            for k in (3, 5) for power in (0, 1)]
    return out


def label(s: dict) -> str:
    if s["method"] == "cg_trunc":
        return f"cg_trunc n_hvp={s['n_hvp']}"
    if s["method"] != "task_if_nystrom":
        return s["method"]
    return f"{s['approx']}/{s['probes']} k={s['k']} p={s['power']} pcg={s['pcg_iters']}"


class TruncatedCG:
    """Task-IF with v from n plain CG iterations (n total HVPs) from 0: the sequential baseline, same scores path."""

    kinds = ("task",)
    needs_trajectory = False

    def __init__(self, n_hvp: int) -> None:
        self.name, self.n_hvp, self.last_info = f"cg_trunc{n_hvp}", n_hvp, None

    def score(self, problem: AttributionProblem, kind: str) -> torch.Tensor:
        obj, lam = problem.objective, problem.lam
        grads, b = obj.task_grads(lam), problem.eval_objective.mean_loss_grad(lam)
        v, self.last_info = cg(lambda u: obj.hvp(lam, u), b, tol=0.0, max_iter=self.n_hvp)
        return grads @ v / obj.n_tasks


def timed_scores(make, problem: AttributionProblem, repeats: int) -> tuple[np.ndarray, float, object]:
    """(scores, median seconds over ``repeats`` fresh instances, the last instance)."""
    times, method, values = [], None, None
    for _ in range(repeats):
        method = make()
        sc = run_method(method, problem, "task")
        times.append(sc.seconds)
        values = sc.values.numpy()
    return values, statistics.median(times), method


def info_fields(method) -> dict:
    info = getattr(method, "last_info", None)
    if info is None:
        return {}
    return {"iterations": info.iterations, "rel_residual": info.rel_residual, "converged": info.converged}


def evaluate(problem: AttributionProblem, exact: np.ndarray, epoch_s: float, cfgs: list[dict], repeats: int,
             loo: np.ndarray | None = None) -> list[dict]:
    rows = []
    for s in cfgs:
        if s["method"] == "cg_trunc":
            def make(s=s):
                return TruncatedCG(s["n_hvp"])
        else:
            opts = {k: v for k, v in s.items() if k != "method"}

            def make(s=s, opts=opts):
                return get_method(s["method"], **opts)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                values, seconds, method = timed_scores(make, problem, repeats)
        except Exception as error:  # report, do not stop the sweep
            rows.append({**s, "label": label(s), "error": f"{type(error).__name__}: {error}"})
            continue
        c = correlations(values, exact)
        row = {**s, "label": label(s), "seconds": seconds, "meta_epochs": seconds / epoch_s,
               "spearman": c["spearman"], "pearson": c["pearson"],
               "rel_err": float(np.linalg.norm(values - exact) / np.linalg.norm(exact)), **info_fields(method)}
        if loo is not None:
            row["spearman_loo"] = correlations(values, loo)["spearman"]
        rows.append(row)
        print(f"    {row['label']:<40s} {row['meta_epochs']:7.2f} ep  spearman {row['spearman']:.4f}"
              + (f"  loo {row['spearman_loo']:.4f}" if loo is not None else ""), flush=True)
    return rows


def e5_point(seed: int, hidden: int, cfgs: list[dict], repeats: int) -> dict:
    cfg = {**E5_CONFIGS["quick"], "n_train_tasks": 100, "hidden": [hidden]}
    ctx = context("E5", cfg, seed)
    setup = setups.build_setup(ctx, "unrolled")
    fitted = setups.fit(setup, ctx.config, seed)
    problem = setups.problems(setup, fitted, seed)["converged"]
    obj, lam = problem.objective, problem.lam
    epoch_s = median_time(lambda: obj.value_and_grad(lam), 5)
    out: dict = {"seed": seed, "hidden": hidden, "n_params": lam.numel(), "epoch_s": epoch_s,
                 "converged": fitted.converged, "grad_norm": fitted.grad_norm}
    exact, t_exact, _ = timed_scores(lambda: get_method("task_if"), problem, repeats)
    out["task_if_s"], out["task_if_epochs"] = t_exact, t_exact / epoch_s
    h = obj.dense_hessian(lam)
    b = problem.eval_objective.mean_loss_grad(lam)
    grads = obj.task_grads(lam)
    dense = (grads @ torch.linalg.solve(h, b) / obj.n_tasks).numpy()
    evals = torch.linalg.eigvalsh(h)
    out["dense_vs_cg_spearman"] = correlations(dense, exact)["spearman"]
    out["dense_vs_cg_rel_err"] = float(np.linalg.norm(dense - exact) / np.linalg.norm(exact))
    out["h_f_min_eig"], out["h_f_max_eig"] = float(evals[0]), float(evals[-1])
    out["h_data_negative_eigs"] = int((evals < obj.delta - 1e-3).sum())
    sk = torch.randn(lam.numel(), 20, dtype=lam.dtype)
    from metainf.linalg.nystrom import sketch
    out["sketch20_epochs"] = median_time(lambda: sketch(obj, lam, sk), 3) / epoch_s
    out["hvp_epochs"] = median_time(lambda: obj.hvp(lam, sk[:, 0]), 3) / epoch_s
    out["task_grads_epochs"] = median_time(lambda: obj.task_grads(lam), 3) / epoch_s
    out["eval_grad_epochs"] = median_time(lambda: problem.eval_objective.mean_loss_grad(lam), 3) / epoch_s
    print(f"== E5 seed {seed} hidden {hidden} (P={lam.numel()}): epoch {epoch_s * 1e3:.1f} ms, task_if "
          f"{out['task_if_epochs']:.1f} ep, HVP {out['hvp_epochs']:.2f} ep, sketch(20) {out['sketch20_epochs']:.2f} "
          f"ep, task grads {out['task_grads_epochs']:.2f} ep, eval grad {out['eval_grad_epochs']:.2f} ep; "
          f"H_F eig [{out['h_f_min_eig']:.4f}, {out['h_f_max_eig']:.4f}], dense vs CG spearman "
          f"{out['dense_vs_cg_spearman']:.6f}", flush=True)
    refs = [{"method": "task_if_fisher"}] + [{"method": "cg_trunc", "n_hvp": n} for n in (1, 2, 3, 4, 5)]
    out["rows"] = evaluate(problem, exact, epoch_s, refs + cfgs, repeats)
    return out


def e4_point(seed: int, kind: str, cfgs: list[dict], repeats: int) -> dict | None:
    from experiments.e4_ablations import CONFIGS as E4_CONFIGS
    from experiments.e4_ablations import _inner_variants
    from metainf.data.registry import load_split
    from metainf.data.tasks import sample_task_pool
    from metainf.groundtruth.converged import retrain
    from metainf.core.models import build_model
    from metainf.core.objective import MetaObjective, pool_tensors
    from metainf.train import train_converged

    cfg = {k: v for k, v in E4_CONFIGS["quick"].items()}
    data = {s: load_split("mnist", s, None, image_size=cfg["image_size"], source="digits") for s in ("train", "val")}
    ptr = sample_task_pool(data["train"], cfg["n_train_tasks"], cfg["n_way"], cfg["k_shot"], cfg["q_query"], seed=seed)
    pev = sample_task_pool(data["val"], cfg["n_eval_tasks"], cfg["n_way"], cfg["k_shot"], cfg["q_query"],
                           seed=seed + 1000)
    model = build_model("mlp", ptr.input_shape, cfg["n_way"], hidden=(cfg["hidden"],))
    inner = next(iter(_inner_variants(kind, cfg, ["dense"]).values()))
    obj = MetaObjective(model, inner, pool_tensors(ptr), delta=cfg["delta"], chunk=None)
    ev = MetaObjective(model, inner, pool_tensors(pev), chunk=None)
    lam = train_converged(obj, model.init(seed), tol=cfg["tol"], max_iter=cfg["max_iter"]).lam
    problem = AttributionProblem(obj, lam, ev, seed=seed)
    epoch_s = median_time(lambda: obj.value_and_grad(lam), 5)
    exact, t_exact, _ = timed_scores(lambda: get_method("task_if"), problem, repeats)
    h = obj.dense_hessian(lam)
    dense = (obj.task_grads(lam) @ torch.linalg.solve(h, ev.mean_loss_grad(lam)) / obj.n_tasks).numpy()
    stored = json.loads((ROOT / "results/E4/mnist-quick.json").read_text())["per_seed"].get(str(seed), {})
    series = stored.get("series", {}).get(kind, {})
    ref_name = "dense-dense-exact" if kind == "proximal" else "autodiff-dense-exact"
    loo, source = None, "recomputed"
    if series and ref_name in series.get("scores", {}):
        ref = np.asarray(series["scores"][ref_name], dtype=float)
        if np.all(np.isfinite(ref)) and np.linalg.norm(ref - dense) <= 1e-5 * np.linalg.norm(ref):
            loo, source = np.asarray(series["loo"], dtype=float), "results/E4/mnist-quick.json"
    if loo is None:
        loo = np.array([retrain(obj, lam, ev, "task", k, tol=cfg["tol"], max_iter=cfg["max_iter"], hessian=h).effect
                        for k in range(obj.n_tasks)])
    if not np.isfinite(loo).all() or loo.std() == 0:
        print(f"== E4 {kind} seed {seed}: LOO effects constant or non-finite (collapsed problem); skipped")
        return {"seed": seed, "inner": kind, "skipped": "LOO effects constant or non-finite"}
    out = {"seed": seed, "inner": kind, "n_params": lam.numel(), "epoch_s": epoch_s, "loo_source": source,
           "task_if_epochs": t_exact / epoch_s, "exact_spearman_loo": correlations(exact, loo)["spearman"],
           "dense_spearman_loo": correlations(dense, loo)["spearman"]}
    print(f"== E4 {kind} seed {seed} (P={lam.numel()}, M={obj.n_tasks}, LOO from {source}): exact task-IF "
          f"{out['task_if_epochs']:.1f} ep, Spearman with LOO {out['exact_spearman_loo']:.4f}", flush=True)
    refs = [{"method": "task_if_fisher"}] + [{"method": "cg_trunc", "n_hvp": n} for n in (1, 2, 3, 5)]
    e4_cfgs = [s for s in cfgs if s["k"] < lam.numel()]
    out["rows"] = evaluate(problem, exact, epoch_s, refs + e4_cfgs, repeats, loo)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="k in {10, 20} only, seed 0, hidden 8")
    parser.add_argument("--loo", action="store_true", help="also score against LOO on the E4 MNIST problem")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfgs = settings(args.quick)
    grid = [(0, 8)] if args.quick else [(s, h) for h in (8, 16) for s in (0, 1)]
    result: dict = {"e5": [], "e4": [], "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for seed, hidden in grid:
        result["e5"].append(e5_point(seed, hidden, cfgs, args.repeats))
        OUT.write_text(json.dumps(result, indent=1))
    if args.loo:
        for kind in ("unrolled", "proximal"):
            for seed in (0, 1):
                result["e4"].append(e4_point(seed, kind, cfgs, args.repeats))
                OUT.write_text(json.dumps(result, indent=1))
    print("\nSummary (meta-epochs / Spearman vs exact task-IF), E5 100 tasks")
    for p in result["e5"]:
        print(f"-- seed {p['seed']} hidden {p['hidden']}: exact task-IF {p['task_if_epochs']:.1f} ep")
        for r in p["rows"]:
            if "error" in r:
                print(f"   {r['label']:<40s} ERROR {r['error']}")
            else:
                print(f"   {r['label']:<40s} {r['meta_epochs']:7.2f} {r['spearman']:.4f}")
    OUT.write_text(json.dumps(result, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
