"""The total Hessian at E1's lam_T (Conv-4, quick scale): why E1 damps by a fraction of lambda_max.

Trains E1's quick problem (``experiments/e1_removal.py``, seed 0) as E1 does (``experiments.regime.train_budget``),
then prints lambda_max of H_F (power iteration on the finite-difference total HVP), an estimate of its most negative
eigenvalue (power iteration on H_F - lambda_max I), the mean empirical-Fisher eigenvalue (1/M) sum_k ||g_k||^2 / P
(kronfluence's damping scale) and ||grad F|| (lam_T is not stationary).

Usage: OMP_NUM_THREADS=1 .venv/bin/python scripts/measure_conv4_curvature.py [omniglot|mnist] [power iterations]
(about 3 minutes on one free core)
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import torch

CPU = torch.device("cpu")  # what a RunContext resolves --device cpu to

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import regime, removal, setups  # noqa: E402
from experiments.e1_removal import CONFIGS  # noqa: E402
from metainf.linalg.neumann import power_iteration  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    dataset = sys.argv[1] if len(sys.argv) > 1 else "omniglot"
    iters = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    cfg = dict(CONFIGS["quick"])
    ctx = types.SimpleNamespace(config=cfg, dataset=dataset, data_root=None, torch_device=CPU,
                                torch_dtype=lambda default: default, seed=0)
    setup, test = setups.build_noisy_setup(ctx, "unrolled")
    obj = setup.objective
    lam, _, seconds = regime.train_budget(obj, setup.model.init(0, setups.config_dtype(cfg)), cfg, 0)
    grads = obj.task_grads(lam)
    op = regime.total_hvp(obj, lam)
    top = power_iteration(op, lam, iters=iters)
    low = power_iteration(lambda u: op(u) - top * u, lam, iters=iters) + top
    print(f"{dataset}: {setup.model.n_params} parameters, trained {seconds:.0f} s, "
          f"meta-test accuracy {removal.accuracy(test, lam)[0]:.3f}")
    print(f"||grad F(lam_T)|| = {float(grads.mean(0).norm()):.3g}")
    print(f"lambda_max(H_F) ~ {top:.4g}; most negative eigenvalue found ~ {low:.4g} ({iters} power iterations)")
    print(f"mean empirical-Fisher eigenvalue = {float(grads.double().pow(2).sum()) / grads.numel():.4g}")


if __name__ == "__main__":
    main()
