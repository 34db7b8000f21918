"""Why CG needs 5 HVPs on E5's problems: the spectrum of the total Hessian and where H^-1 b lives in it (issue #20).

``task_if_fast`` stops CG at relative residual ||b - H v|| / ||b|| <= 0.05 and costs about one summed pass plus one
finite-difference HVP (one meta-epoch) per iteration, so its <= 3 meta-epoch bar needs the solve in under 2 HVPs.
For E5's quick digits problems at 100 tasks (seeds 0-1, hidden 8 and 16, unrolled MAML, float64, trained as E5 trains
them; rebuilt as ``scripts/measure_fast.py`` part e5 rebuilds them) this prints, from the dense total Hessian H:

- its size, smallest and largest eigenvalue and condition number kappa;
- how H^-1 b = sum_i (u_i . b / mu_i) u_i spreads over the eigenvectors u_i: the share of ||H^-1 b||^2 on the
  largest single term, and how many terms hold 50% and 90% of it (a solution held by a few directions could be
  deflated cheaply; a spread one cannot);
- CG's relative residual and the Spearman correlation of its task scores with dense task-IF at k = 1..6 iterations
  (dense products, so the iterates are those of exact arithmetic up to rounding), and the first k reaching 0.05.

A solution spread over tens of eigenvectors leaves no few directions to deflate cheaply.

Usage: OMP_NUM_THREADS=1 python scripts/probe_spectrum.py   (about 2 min on one free core)
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from measure_fast import cg_sweep, dense_reference, e5_problem  # noqa: E402

STEPS = 6
TOL = 0.05


def terms_holding(energy: torch.Tensor, share: float) -> int:
    """The least number of the largest entries of ``energy`` (>= 0, summing to 1) whose sum reaches ``share``."""
    return int(torch.searchsorted(torch.cumsum(energy.sort(descending=True).values, 0), share)) + 1


def main() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", RuntimeWarning)
    for seed in (0, 1):
        for hidden in (8, 16):
            _, _, problem = e5_problem("mnist", seed, hidden)
            h, g, b, exact = dense_reference(problem)
            mu, u = torch.linalg.eigh(h)
            kappa = float(mu[-1] / mu[0])
            energy = (u.T @ b / mu) ** 2
            energy = energy / energy.sum()
            reached, cells = cg_sweep(lambda x: h @ x, None, h, g, b, exact, STEPS, TOL)
            print(f"digits s{seed} h{hidden}: P {h.shape[0]}, eigenvalues {float(mu[0]):.4f} .. {float(mu[-1]):.4f}, "
                  f"kappa {kappa:.1f}; H^-1 b: largest term {float(energy.max()):.2f} of its energy, 50% in "
                  f"{terms_holding(energy, 0.5)} terms, 90% in {terms_holding(energy, 0.9)}; CG residual <= {TOL} "
                  f"at k {reached}; per k residual/Spearman: " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
