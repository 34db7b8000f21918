"""Would a minimum-residual Krylov solver stop earlier than CG on E5's problems? (issue #20, the <= 3 meta-epoch bar)

``task_if_fast`` stops CG at relative residual ||b - H v|| / ||b|| <= 0.05; on E5's 100-task problems that takes 5
finite-difference HVPs, and its cost is one summed pass plus one HVP per iteration (``scripts/profile_fast.py``), so 4
iterations would bring it under 3 meta-epochs. MINRES (Paige & Saunders 1975) minimises exactly that residual over
the same Krylov space K_k(H, b), with one HVP per iteration as CG, and also handles an indefinite H.

For E5's quick problems at 100 tasks (digits seeds 0-1 and Omniglot seed 0, hidden 8 and 16, unrolled MAML, float64,
trained as E5 trains them; rebuilt as ``scripts/measure_fast.py`` part e5 rebuilds them), this builds k Lanczos
vectors of the dense total Hessian H (full reorthogonalisation) and, for each k, both iterates of K_k(H, b):

- CG (Galerkin): v = V_k T_k^-1 ||b|| e_1;
- MINRES: v = V_k argmin_y || ||b|| e_1 - T_{k+1,k} y ||.

It prints, per k, the relative residual and the Spearman correlation of the task scores G v with dense task-IF, and
the first k at which each reaches 0.05.

Usage: OMP_NUM_THREADS=1 python scripts/probe_minres.py   (about 2 min on one free core)
"""

from __future__ import annotations

import sys
import types
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from measure_fast import CPU, E5_CONFIGS, E5_PROBLEMS, spearman  # noqa: E402
from experiments import setups  # noqa: E402

TOL = 0.05
STEPS = 10


def lanczos(h: torch.Tensor, b: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(V [n, k+1], T [k+1, k]) with H V_k = V_{k+1} T, V orthonormal (full reorthogonalisation), V[:, 0] = b/||b||."""
    v = torch.zeros(b.numel(), k + 1, dtype=b.dtype)
    t = torch.zeros(k + 1, k, dtype=b.dtype)
    v[:, 0] = b / b.norm()
    for j in range(k):
        w = h @ v[:, j]
        t[j, j] = v[:, j] @ w
        for _ in range(2):
            w = w - v[:, :j + 1] @ (v[:, :j + 1].T @ w)
        t[j + 1, j] = w.norm()
        if j + 1 < k:
            t[j, j + 1] = t[j + 1, j]
        v[:, j + 1] = w / t[j + 1, j]
    return v, t


def iterates(h: torch.Tensor, b: torch.Tensor, k: int) -> dict[str, list[torch.Tensor]]:
    """The CG and MINRES iterates of K_1 .. K_k (module docstring)."""
    v, t = lanczos(h, b, k)
    out: dict[str, list[torch.Tensor]] = {"cg": [], "minres": []}
    for m in range(1, k + 1):
        e1 = torch.zeros(m + 1, dtype=b.dtype)
        e1[0] = b.norm()
        out["cg"].append(v[:, :m] @ torch.linalg.solve(t[:m, :m], e1[:m]))
        out["minres"].append(v[:, :m] @ torch.linalg.lstsq(t[:m + 1, :m], e1).solution)
    return out


def main() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", RuntimeWarning)
    for dataset, seed in E5_PROBLEMS:
        for hidden in (8, 16):
            cfg = {**E5_CONFIGS["quick"], "n_train_tasks": 100, "hidden": [hidden],
                   **E5_CONFIGS["quick"]["by_dataset"].get(dataset, {})}
            ctx = types.SimpleNamespace(config=cfg, dataset=dataset, data_root=None, torch_device=CPU,
                                        torch_dtype=lambda default: default, seed=seed)
            setup = setups.build_setup(ctx, "unrolled")
            problem = setups.problems(setup, setups.fit(setup, cfg, seed), seed)["converged"]
            obj, lam = problem.objective, problem.lam
            h = obj.dense_hessian(lam)
            b = problem.eval_objective.mean_loss_grad(lam)
            g = obj.task_grads(lam)
            exact = (g @ torch.linalg.solve(h, b)).numpy()
            eig = torch.linalg.eigvalsh(h)
            print(f"{dataset} seed {seed} hidden {hidden}: eigenvalues of H in [{eig[0]:.4f}, {eig[-1]:.3f}]")
            for name, xs in iterates(h, b, STEPS).items():
                res = [float((b - h @ x).norm() / b.norm()) for x in xs]
                first = next((k + 1 for k, r in enumerate(res) if r <= TOL), None)
                cells = " ".join(f"{k + 1}:{r:.3f}/{spearman((g @ x).numpy(), exact):.3f}"
                                 for k, (r, x) in enumerate(zip(res, xs)) if k < 7)
                print(f"  {name:<6s} reaches {TOL} at k = {first}; k: residual/Spearman {cells}", flush=True)


if __name__ == "__main__":
    main()
