"""E4's accuracy-cost frontier on E3's Conv-4 problem, scored against E3's LDS (issue "Fast task-IF", item 1).

E4's frontier (``experiments.e4_frontier``) runs on MLP problems, where the ground truth is converged leave-one-out
and the reference is a dense solve. At Conv-4 scale neither exists; the ground truth there is E3's LDS
(``experiments.e3_conv4``), whose 24 subsets x 2 retrainings take about 16 minutes. This script does not retrain
them: it reads the committed LDS ground truth of ``results/E3/omniglot-<scale>.json`` (seed 0: the subset masks,
the two estimates A and B of every subset's evaluation losses and the corrupted-task flags) and rebuilds E3's
Conv-4 problem (``regime.fit_regime``: 16 px Omniglot, seed 0, lam_T after the fixed Adam budget, float32, E1's
damping rule). It first checks the rebuild: ``task_if_fast`` must reproduce the committed task scores (Spearman).

Rows: E4's frontier rows (``e4_frontier.frontier_rows``, the ``ROWS`` settings below) without the dense ``exact``
row (7,333 parameters: forming H_F would take 7,333 HVPs); the reference is ``task_if_cg``, CG to relative residual
``ROWS["solve_tol"]`` on the same damped total Hessian. Per row:

- accuracy: the LDS of its task scores against E3's ground truth (mean of A and B, Spearman over the 24 subsets,
  bootstrap 95% CI over subsets) and the partial LDS with each subset's count of corrupted tasks regressed out
  (what a method predicts beyond detecting the corrupted tasks; E3's partial ceiling says whether the ground truth
  can rank methods at all); the Spearman of its task scores with the reference row's;
- cost: ``repeats`` timed runs after one untimed run (whose scores are the ones scored), each with a fresh method
  (``e4_frontier.time_row``), each divided by one meta-epoch (``value_and_grad`` of a copy of the training objective
  at lam_T) timed just before it: median, quartiles and IQR; the largest peak RSS;
- ``lds_pareto`` / ``reference_pareto``: on the Pareto frontier of (median meta-epochs, LDS) / (median meta-epochs,
  Spearman with the reference) (``e4_frontier.pareto_mask``).

Writes ``results/probes/frontier-conv4-omniglot-<scale>.json`` (atomically) and the figure beside it, and prints a
table. Usage: OMP_NUM_THREADS=1 python scripts/frontier_conv4.py [scale]
(quick, the default: about 40 minutes on one core; smoke: a plumbing check, against a smoke E3 result in ``--results``
given as the second argument). ``python scripts/frontier_conv4.py --plot [scale]`` draws the figure again from the
written JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from experiments import regime  # noqa: E402
from experiments.e4_frontier import FRONTIER, frontier_rows, pareto_mask, time_row  # noqa: E402
from metainf.core.objective import MetaObjective  # noqa: E402
from metainf.groundtruth.lds import SubsetLosses  # noqa: E402
from metainf.methods import get_method, run_method  # noqa: E402
from metainf.metrics import correlations  # noqa: E402
from probe_preconditioners import rebuild_conv4  # noqa: E402
from replication import results  # noqa: E402

#: the frontier settings at Conv-4 (``e4_frontier.frontier_rows`` reads them): E4's rows, thinned to fit an hour on
#: one core: no 2-step CG; no diagonal preconditioners (the Fisher diagonal is within 0.01 Spearman of plain CG at
#: the same cost on every E4 problem; the Hutchinson diagonal on this problem is in
#: ``results/probes/preconditioners-omniglot-quick.json``); one Neumann depth
ROWS = {"frontier": {**FRONTIER, "cg_iters": [1, 3, 5, 10], "preconds": ["none", "fisher", "ekfac"],
                     "nystrom_ranks": [3], "nystrom_pcg": [3], "neumann_depths": [5], "repeats": 5},
        "solve_tol": 1e-4, "cg_max_iter": 300, "power_iters": 10,
        "lissa": {"depth": 20, "batch_size": 20, "repeats": 1}}
OUT = ROOT / "results" / "probes"


def ground_truth(stored: dict) -> tuple[SubsetLosses, np.ndarray, dict]:
    """(E3's LDS ground truth, the corrupted-task flags, the committed task scores) of seed 0's Conv-4 problem."""
    series = stored["per_seed"]["0"]["series"]["unrolled_conv4"]
    truth = SubsetLosses(torch.tensor(series["masks"]).bool(), torch.tensor(series["losses_a"]),
                         torch.tensor(series["losses_b"]), np.empty((0, 0)), np.empty((0, 0)))
    return truth, np.asarray(series["corrupted"], dtype=float), series["scores"]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return correlations(a, b)["spearman"] if np.std(a) > 0 and np.std(b) > 0 else float("nan")


FAMILIES = (("CG", "C0"), ("CG + Fisher", "C1"), ("CG + EK-FAC", "C2"), ("CG + diagonal", "C8"),
            ("Nystrom", "C4"), ("Neumann / LiSSA", "C3"), ("curvature model", "C5"), ("task_if_fast / reference", "k"))


def family(estimator: str) -> str:
    """The estimator family of a frontier row's name (its colour in the figure)."""
    if estimator in ("fast", "task_if_cg"):
        return "task_if_fast / reference"
    if estimator.startswith("cg"):
        for suffix, name in (("_fisher", "CG + Fisher"), ("_ekfac", "CG + EK-FAC"), ("_diag", "CG + diagonal")):
            if suffix in estimator:
                return name
        return "CG"
    if estimator.startswith("nystrom"):
        return "Nystrom"
    if estimator.startswith(("neumann", "lissa")):
        return "Neumann / LiSSA"
    return "curvature model"


def figure(rows: list[dict], ceiling: dict, path: Path) -> None:
    """Two panels over the median meta-epochs (IQR as horizontal bars): LDS with its 95% CI (E3's ceiling as a band)
    and the Spearman with the reference. Colour: the estimator family; filled and named: the panel's Pareto rows
    (and ``fast`` and the reference, always named)."""
    ok = [dict(r) for r in rows if r["status"] == "ok"]  # copies: the figure adds its own keys
    colours = dict(FAMILIES)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), sharex=True)
    for r in ok:  # 1 - Spearman on a log axis spreads the rows that agree with the reference to 1e-3 and better
        r["_gap"] = max(1.0 - r["spearman_vs_reference"], 1e-6)
    for ax, key, pareto, label in ((axes[0], "lds", "lds_pareto", "LDS (E3's ground truth, 95% CI)"),
                                   (axes[1], "_gap", "reference_pareto",
                                    "1 - Spearman with the reference (CG to 1e-4; log, better is up)")):
        if key == "lds":
            ax.axhspan(ceiling["low"], ceiling["high"], color="0.92", label="LDS ceiling (A vs B), 95% CI")
        named = sorted((r for r in ok if r[pareto] or r["estimator"] in ("fast", "task_if_cg")),
                       key=lambda r: r["task_epochs_median"])
        # a label above its point when the point lies above its neighbour in cost, else below: fewer overlaps
        sign = -1 if key == "_gap" else 1  # the gap axis is inverted
        offsets = {r["estimator"]: (4, 5 if sign * r[key] >= sign * named[i - 1 if i else min(1, len(named) - 1)][key]
                                    else -11) for i, r in enumerate(named)}
        for r in ok:
            x, c = r["task_epochs_median"], colours[family(r["estimator"])]
            xerr = [[x - r["task_epochs_q25"]], [r["task_epochs_q75"] - x]]
            yerr = ([[r["lds"] - r["lds_ci95_low"]], [r["lds_ci95_high"] - r["lds"]]] if key == "lds" else None)
            ax.errorbar(x, r[key], xerr=xerr, yerr=yerr, fmt="o", ms=6, capsize=2, elinewidth=0.8,
                        mfc=c if r[pareto] else "white", mec=c, ecolor="0.75", zorder=3)
            if r["estimator"] in offsets:
                text = r["estimator"]
                if key == "_gap" and text == "task_if_cg":
                    text += " (the reference: gap 0)"
                right_end = r is named[-1]  # the costliest named row: its label goes to the left, inside the frame
                dx, dy = offsets[r["estimator"]]
                ax.annotate(text, (x, r[key]), fontsize=7.5, xytext=(-dx if right_end else dx, dy),
                            ha="right" if right_end else "left", textcoords="offset points", zorder=4)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 1, 2, 5, 10, ...: no crowded minor labels
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        if key == "_gap":
            ax.set_yscale("log")
            ax.invert_yaxis()
        ax.set_xlabel("cost: meta-epochs (median, IQR of 5 runs)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=name) for name, c in FAMILIES
               if any(family(r["estimator"]) == name for r in ok)]
    axes[1].legend(handles=handles, loc="upper left", fontsize=8, title="filled, named: Pareto", title_fontsize=8)
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle("Task-IF estimators on E3's Conv-4 problem (Omniglot, 7,333 parameters, float32)")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def redraw(scale: str = "quick") -> None:
    """Draw the figure again from the written JSON (no rebuild, no timing)."""
    out = OUT / f"frontier-conv4-omniglot-{scale}.json"
    stored = json.loads(out.read_text())
    figure(stored["rows"], stored["lds_ceiling"], out.with_suffix(".png"))
    print(f"drawn: {out.with_suffix('.png').relative_to(ROOT)}")


def main(scale: str = "quick", results_dir: str | None = None) -> None:
    torch.set_num_threads(1)
    stored = json.loads((Path(results_dir or ROOT / "results") / "E3" / f"omniglot-{scale}.json").read_text())
    truth, corrupted, committed = ground_truth(stored)
    cfg, fit = rebuild_conv4(scale)
    problem, obj, lam = fit.problem, fit.problem.objective, fit.problem.lam
    options = regime.method_options(cfg, fit.damping).get("task_if_fast", {})
    rebuilt = run_method(get_method("task_if_fast", **options), problem, "task").values.double().numpy()
    check = spearman(rebuilt, np.asarray(committed["task_if_fast"]))
    print(f"lam_T: {lam.numel()} parameters, {lam.dtype}, damping {fit.damping:.4g}; rebuilt task_if_fast vs "
          f"committed: Spearman {check:.6f}", flush=True)
    n_corrupted = truth.masks.double().numpy() @ corrupted
    ceiling = truth.ceiling(seed=0)
    partial_ceiling = truth.ceiling(seed=0, covariates=n_corrupted)

    ref = MetaObjective(obj.model, obj.inner, obj.tasks, obj.delta, obj.tau, obj.chunk)
    ref.value_and_grad(lam)  # warm-up
    epoch = lambda: ref.value_and_grad(lam)  # noqa: E731
    rows_cfg = {**ROWS, "damping": fit.damping}
    rows, scores = [], {}
    for row in (r for r in frontier_rows(obj, fit.setup.eval_objective, lam, rows_cfg, "unrolled", 0)
                if r.name != "exact"):
        try:
            scores[row.name] = run_method(row.make(), row.problem, "task").values.detach().double().numpy()
            seconds, ratios, peak = time_row(row, epoch, "task", ROWS["frontier"]["repeats"])
        except Exception as error:  # noqa: BLE001 - an indefinite model or a diverging series: recorded, rows go on
            rows.append({"estimator": row.name, "status": "failed", "error": f"{type(error).__name__}: {error}"})
            print(f"{row.name:>22}: {rows[-1]['error']}", flush=True)
            continue
        q25, q50, q75 = np.percentile(ratios, [25, 50, 75])
        lds, partial = truth.score(scores[row.name], seed=0), truth.score(scores[row.name], seed=0,
                                                                          covariates=n_corrupted)
        rows.append({"estimator": row.name, "status": "ok", "lds": lds.mean, "lds_ci95_low": lds.mean_ci95[0],
                     "lds_ci95_high": lds.mean_ci95[1], "lds_partial": partial.mean,
                     "lds_partial_ci95_low": partial.mean_ci95[0], "lds_partial_ci95_high": partial.mean_ci95[1],
                     "task_epochs_median": float(q50), "task_epochs_q25": float(q25), "task_epochs_q75": float(q75),
                     "task_epochs_iqr": float(q75 - q25), "task_seconds_median": float(np.median(seconds)),
                     "epoch_ratios": ratios, "seconds": seconds, "peak_mb": peak})
        print(f"{row.name:>22}: LDS {lds.mean:.3f} [{lds.mean_ci95[0]:.3f}, {lds.mean_ci95[1]:.3f}], partial "
              f"{partial.mean:+.3f}; {q50:7.2f} meta-epochs (IQR {q75 - q25:.2f})", flush=True)
    reference = scores.get("task_if_cg")
    ok = [r for r in rows if r["status"] == "ok"]
    for r in ok:
        r["spearman_vs_reference"] = (spearman(scores[r["estimator"]], reference) if reference is not None
                                      else float("nan"))
    cost = [r["task_epochs_median"] for r in ok]
    for key, accuracy in (("lds_pareto", "lds"), ("reference_pareto", "spearman_vs_reference")):
        for r, on in zip(ok, pareto_mask(cost, [r[accuracy] for r in ok])):
            r[key] = int(on)
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / f"frontier-conv4-omniglot-{scale}.json"
    ceil = {"mean": ceiling.mean, "low": ceiling.mean_ci95[0], "high": ceiling.mean_ci95[1]}
    results.write_json(out, {
        "command": " ".join(["OMP_NUM_THREADS=1 python scripts/frontier_conv4.py", *sys.argv[1:]]),
        "problem": f"E3 {scale} Conv-4, omniglot, seed 0", "ground_truth": f"results/E3/omniglot-{scale}.json, seed 0",
        "n_params": lam.numel(), "dtype": str(lam.dtype), "damping": fit.damping, "settings": ROWS,
        "rebuild_check_spearman": check, "lds_ceiling": ceil,
        "lds_ceiling_partial": {"mean": partial_ceiling.mean, "low": partial_ceiling.mean_ci95[0],
                                "high": partial_ceiling.mean_ci95[1]},
        "rows": rows, "scores": {k: v.tolist() for k, v in scores.items()},
        "finished_utc": results.utc_now(), "versions": results.library_versions()})
    figure(rows, ceil, out.with_suffix(".png"))
    print(f"written: {out.relative_to(ROOT)} and its figure")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--plot"]:
        redraw(*sys.argv[2:3])
    else:
        main(*sys.argv[1:3])
