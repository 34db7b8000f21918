"""How accurate a finite-difference total HVP is in float32 on E3's quick Conv-4 problem, against the autodiff one.

Rebuilds E3's Conv-4 part (``experiments.e3_conv4``: E1's learning regime on 16 px Omniglot, seed 0, lam_T after the
fixed Adam budget, float32), then for one random direction u prints the relative error ||H_fd u - H u|| / ||H u||
of the forward and the central difference quotient of the meta-gradient at relative steps 1e-1 to 1e-4 (the default
is sqrt(float32 eps) = 3.5e-4), and task_if_fast's iterations and the Spearman of its task scores with finite
differences against those with autodiff HVPs (``metainf.linalg.finite_difference.fd_is_accurate`` quotes it).

Usage: OMP_NUM_THREADS=1 python scripts/probe_fd_hvp_float32.py   (about 3 minutes on one core)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments import regime  # noqa: E402
from experiments.base import RunContext  # noqa: E402
from experiments.e3_loo import EXPERIMENT as E3  # noqa: E402
from metainf.influence import hessian_operator  # noqa: E402
from metainf.linalg.finite_difference import FDHessian, data_gradient  # noqa: E402
from metainf.methods import get_method  # noqa: E402
from replication.config import resolve_config  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    cfg = resolve_config(E3, "quick", "omniglot", {})["conv4"]
    folder = Path(tempfile.mkdtemp())
    ctx = RunContext("E3", "omniglot", "quick", cfg, 0, ("task_if_fast",), folder, None, "serial", None,
                     folder / "cache", lambda metrics, step=None: None)
    fit = regime.fit_regime(ctx, cfg["inner"])
    obj, lam = fit.problem.objective, fit.problem.lam
    print(f"lam_T: {lam.numel()} parameters, {lam.dtype}, damping {fit.damping:.4g}")
    u = torch.randn(lam.numel(), generator=torch.Generator().manual_seed(0), dtype=lam.dtype)
    exact = hessian_operator(obj, lam, "exact")(u)
    base = data_gradient(obj, lam)
    for step in (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, torch.finfo(lam.dtype).eps ** 0.5, 1e-4):
        fd = FDHessian(obj, lam, base, None, step)
        forward = fd(u)
        eps = fd.scale / float(u.norm())
        central = (data_gradient(obj, lam + eps * u) - data_gradient(obj, lam - eps * u)) / (2 * eps) + obj.delta * u
        err = [float((h - exact).norm() / exact.norm()) for h in (forward, central)]
        cos = float(forward @ exact / (forward.norm() * exact.norm()))
        print(f"relative step {step:.1e}: forward error {err[0]:.3f} (cosine {cos:.3f}), central error {err[1]:.3f}")
    scores = {}
    for hvp in ("fd", "autodiff"):
        method = get_method("task_if_fast", damping=fit.damping, hvp=hvp)
        scores[hvp] = method.score(fit.problem, "task").numpy()
        print(f"task_if_fast with {hvp} HVPs: {method.last_info}")
    print(f"Spearman of the task scores, fd vs autodiff: {spearmanr(scores['fd'], scores['autodiff'])[0]:.3f}")


if __name__ == "__main__":
    main()
