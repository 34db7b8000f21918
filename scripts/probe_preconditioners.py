"""Does a preconditioner factored once cut task_if_fast's CG iterations on E3's quick Conv-4 problem?

Rebuilds E3's Conv-4 part (``experiments.e3_conv4``: E1's learning regime on 16 px Omniglot, seed 0, lam_T after the
fixed Adam budget, float32, E1's damping rule), then runs ``task_if_fast`` (CG to relative residual 0.05, autodiff
total HVPs) with every preconditioner of ``metainf.methods.influence_methods.PRECONDITIONERS`` (issue "Fast task-IF",
items 1 and 3):

- the single solve for the mean evaluation loss (what ``score`` does): CG iterations, seconds and meta-epochs (one
  meta-epoch = ``value_and_grad`` of the training objective at lam_T, median of 5, timed in the same process), and
  the Spearman of the task scores with a reference solve (plain CG to ``REFERENCE_TOL``);
- the 20 per-evaluation-task solves of ``score_per_eval`` (each from the Galerkin projection onto the earlier ones),
  where a preconditioner factored once serves every solve: total CG iterations and seconds.

The seconds include building the preconditioner (``diag_hutchinson`` and ``nystrom``: ``precond_rank`` batched HVPs;
``ekfac``: one batched pass over the tasks' query points and two eigendecompositions per layer).
Writes ``results/probes/preconditioners-omniglot-<scale>.json`` (atomically) and prints a table.

Usage: OMP_NUM_THREADS=1 python scripts/probe_preconditioners.py [scale]
(quick, the default: about 25 minutes on one core; smoke: a plumbing check in seconds)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments import regime  # noqa: E402
from experiments.scoring import METHOD_ERRORS  # noqa: E402
from experiments.base import RunContext  # noqa: E402
from experiments.e3_loo import EXPERIMENT as E3  # noqa: E402
from metainf.core.objective import MetaObjective  # noqa: E402
from metainf.methods import get_method  # noqa: E402
from replication import results  # noqa: E402
from replication.config import resolve_config  # noqa: E402

#: (label, task_if_fast options) of every row
ROWS = (("none", {}), ("diag_fisher", {"precond": "diag_fisher"}),
        ("diag_hutchinson8", {"precond": "diag_hutchinson", "precond_rank": 8}),
        ("nystrom8", {"precond": "nystrom", "precond_rank": 8}),
        ("nystrom32", {"precond": "nystrom", "precond_rank": 32}), ("ekfac", {"precond": "ekfac"}))
OUT = ROOT / "results" / "probes"
#: the reference solve's relative residual (plain CG; E1's damping makes H_F + damping I positive definite at quick
#: scale, not at smoke scale, where this script is only a plumbing check)
REFERENCE_TOL = 1e-3


def meta_epoch_seconds(obj: MetaObjective, lam: torch.Tensor, repeats: int = 5) -> float:
    """Median seconds of one ``value_and_grad`` of the training objective (one meta-epoch)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        obj.value_and_grad(lam)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def rebuild_conv4(scale: str) -> tuple[dict, regime.Trained]:
    """(config, fit) of E3's Conv-4 part at ``scale``, seed 0, trained as E3 trains it (``regime.fit_regime``)."""
    cfg = resolve_config(E3, scale, "omniglot", {})["conv4"]
    folder = Path(tempfile.mkdtemp())
    ctx = RunContext("E3", "omniglot", scale, cfg, 0, ("task_if_fast",), folder, None, "serial", None,
                     folder / "cache", lambda metrics, step=None: None)
    return cfg, regime.fit_regime(ctx, cfg["inner"])


def main(scale: str = "quick") -> None:
    torch.set_num_threads(1)
    _, fit = rebuild_conv4(scale)
    problem, obj, lam = fit.problem, fit.problem.objective, fit.problem.lam
    base = {"damping": fit.damping, "hvp": "autodiff"}
    reference = get_method("task_if_fast", **base, tol=REFERENCE_TOL, cg_iters=500)
    try:
        ref_scores = reference.score(problem, "task").numpy()
        ref_iterations = reference.last_info.iterations
    except METHOD_ERRORS as error:
        ref_scores, ref_iterations = None, f"{type(error).__name__}: {error}"
    epoch = meta_epoch_seconds(obj, lam)
    print(f"lam_T: {lam.numel()} parameters, {lam.dtype}, damping {fit.damping:.4g}; one meta-epoch {epoch:.3f} s; "
          f"reference CG to {REFERENCE_TOL}: {ref_iterations} iterations")
    rows = []
    for label, options in ROWS:
        method = get_method("task_if_fast", **base, **options)
        try:
            t0 = time.perf_counter()
            scores = method.score(problem, "task").numpy()
            seconds = time.perf_counter() - t0
            single = method.last_info
            t0 = time.perf_counter()
            method.score_per_eval(problem)
            per_eval_s = time.perf_counter() - t0
        except METHOD_ERRORS as error:  # an indefinite model or operator: recorded, the other rows go on
            rows.append({"preconditioner": label, **options, "error": f"{type(error).__name__}: {error}"})
            print(f"{label:>17}: {rows[-1]['error']}")
            continue
        row = {"preconditioner": label, **options, "iterations": single.iterations,
               "rel_residual": single.rel_residual, "seconds": seconds, "meta_epochs": seconds / epoch,
               "spearman_vs_reference": (float(spearmanr(scores, ref_scores)[0]) if ref_scores is not None
                                         else float("nan")),
               "per_eval_iterations": sum(i.iterations for i in method.last_infos),
               "per_eval_converged": all(i.converged for i in method.last_infos),
               "per_eval_seconds": per_eval_s, "per_eval_meta_epochs": per_eval_s / epoch}
        rows.append(row)
        print(f"{label:>17}: {row['iterations']:3d} it, {row['meta_epochs']:5.1f} meta-epochs, Spearman "
              f"{row['spearman_vs_reference']:.3f}; per evaluation task: {row['per_eval_iterations']:4d} it, "
              f"{row['per_eval_meta_epochs']:6.1f} meta-epochs")
    out = OUT / f"preconditioners-omniglot-{scale}.json"
    results.write_json(out, {
        "command": " ".join(["OMP_NUM_THREADS=1 python scripts/probe_preconditioners.py", *sys.argv[1:]]),
        "problem": f"E3 {scale} Conv-4, omniglot, seed 0",
        "n_params": lam.numel(), "dtype": str(lam.dtype), "damping": fit.damping, "tol": get_method("task_if_fast").tol,
        "meta_epoch_s": epoch, "reference_tol": REFERENCE_TOL, "reference_iterations": ref_iterations, "rows": rows,
        "finished_utc": results.utc_now(), "versions": results.library_versions()})
    print(f"written: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
