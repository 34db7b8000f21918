"""Low-rank sketches of the total Hessian from batched HVPs: Rayleigh-Ritz / Nystrom, Woodbury solve, Nystrom-PCG.

Task-IF needs v = (damping I + H_F)^-1 b with b = grad L_eval and the total Hessian of the meta-objective at lam::

    H_F = H_data + delta I,      H_data = (1/M) sum_k tau_k D^2 L_O^k

and scores every training task by score[k] = v . g_k / M ~ L_eval(without k) - L_eval(with k) (the project's sign:
positive means the task helps). CG applies H_F one vector at a time; here H_data is applied to k probe vectors
Omega [P, k] at once (``sketch``: one ``vmap`` over the columns of the per-task HVPs, ``chunk`` columns at a time)::

    Y = H_data Omega                                                          (k total HVPs, batched)

and a low-rank model H_data ~ U diag(w) U^T (U [P, r] orthonormal) is built from (Omega, Y). With r = delta + damping
the complement of range(U) is given the curvature r, i.e. the model of the damped Hessian is

    A = H_F + damping I = H_data + r I  ~  A_hat = U diag(w + r) U^T + r (I - U U^T)

and its inverse is exact and cheap (Woodbury in eigen-form, ``lowrank_solve``)::

    A_hat^-1 b = U diag(1 / (w + r)) U^T b + (b - U U^T b) / r.

Two models (both exact when Omega has full rank P, both keep the negative eigenvalues of the slightly indefinite
H_data: nothing is clipped, and a model whose damped eigenvalue w_i + r is not positive raises
``IndefiniteHessianError``):

``ritz`` (Rayleigh-Ritz / Galerkin in span(Omega), one pass)
    Q = orth(Omega), Y = H_data Q, T = sym(Q^T Y) = V diag(w) V^T, U = Q V. The w are Rayleigh quotients of H_data,
    so w_i + r lies in the spectrum range of A: if A is positive definite, so is A_hat. Since A U = (Y + r Q) V is
    known, A x is free for every x in span(Q) (used by the preconditioned CG to start without an extra HVP).
``nystrom`` (Nystrom of the positive definite A, Tropp et al. 2017, stabilised)
    Y_A = A Omega + nu Omega (nu = eps ||Y_A|| shift), C = chol(Omega^T Y_A), B = Y_A C^-T = U S W^T (thin SVD);
    A ~ U diag(S^2 - nu) U^T on range(Y), so w = S^2 - nu - r. A failing Cholesky means Omega^T A Omega is not
    positive definite, i.e. A is indefinite: ``IndefiniteHessianError``.

``power`` steps cost one more batched pass of k HVPs each: for ``ritz`` a block-Krylov step (the basis grows to
[Q, orth(H_data Q)], rank (power + 1) k), for ``nystrom`` a power-iteration step (Omega <- H_data Omega).

Probes (``probes``): ``gauss`` (i.i.d. normal columns) or ``span``: b and random combinations G^T R of the task
gradients (R [M, k-1] normal; Gaussian columns beyond rank M), since the scores only need v along b and the g_k.

The model is also a preconditioner: ``metainf.linalg.cg.cg`` runs preconditioned CG on the exact A (one total HVP per
iteration) with M^-1 = A_hat^-1 (Nystrom-PCG, Frangella, Tropp & Udell 2021).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from metainf.core.objective import MetaObjective, check_finite
from metainf.linalg.cg import cg
from metainf.linalg.types import IndefiniteHessianError, SolveInfo
from metainf.runtime.seeding import seeded_randn

APPROXIMATIONS: tuple[str, ...] = ("ritz", "nystrom")
PROBES: tuple[str, ...] = ("gauss", "span")


@dataclass(frozen=True)
class LowRankCurvature:
    """A_hat = U diag(w + reg) U^T + reg (I - U U^T): the model of A = H_data + reg I (see the module docstring).

    ``au`` is A U when known exactly from the sketch (``ritz``), else None."""

    basis: Tensor  # U [P, r], orthonormal columns
    eigenvalues: Tensor  # w [r]: the model of H_data on range(U) (may be negative)
    reg: float  # r = delta + damping: the curvature given to the complement of range(U)
    au: Tensor | None = None  # A U [P, r]

    @property
    def rank(self) -> int:
        return self.basis.shape[1]

    def matvec(self, v: Tensor) -> Tensor:
        """A_hat v (``metainf.linalg.curvature.Curvature``)."""
        return lowrank_matvec(self, v)

    def solve(self, b: Tensor) -> tuple[Tensor, SolveInfo]:
        """A_hat^-1 b by Woodbury (exact for the model; residual against the model, 0 up to rounding)."""
        x = lowrank_solve(self, b)
        rel = float((lowrank_matvec(self, x) - b).norm()) / (float(b.norm()) or 1.0)
        lo = float((self.eigenvalues + self.reg).min()) if self.rank else self.reg
        return x, SolveInfo("lowrank", 0, rel, lo)


def probe_matrix(n_params: int, k: int, kind: str = "span", b: Tensor | None = None, grads: Tensor | None = None,
                 seed: int = 0, dtype: torch.dtype = torch.float64) -> Tensor:
    """Omega [P, k]: ``gauss`` normal columns, or ``span`` = [b, G^T R, normal columns] (R [M, min(k-1, M)] normal).

    ``span`` needs ``b`` (grad L_eval) and ``grads`` (G, [M, P]); its first column is b, so b lies in span(Omega)."""
    if kind not in PROBES:
        raise ValueError(f"unknown probes {kind!r}: choose one of {list(PROBES)}")
    if not 1 <= k:
        raise ValueError(f"the sketch rank k must be >= 1, got {k}")
    gen = torch.Generator().manual_seed(seed)
    device = None if b is None else b.device
    if kind == "gauss":
        return seeded_randn(n_params, k, generator=gen, dtype=dtype, device=device)
    if b is None or grads is None:
        raise ValueError("probes='span' needs b (the evaluation gradient) and grads (the task gradients)")
    m = grads.shape[0]
    n_span = min(k - 1, m)
    cols = [b.to(dtype).reshape(-1, 1)]
    if n_span:
        cols.append(grads.to(dtype).T @ seeded_randn(m, n_span, generator=gen, dtype=dtype, device=device))
    if k - 1 - n_span:
        cols.append(seeded_randn(n_params, k - 1 - n_span, generator=gen, dtype=dtype, device=device))
    return torch.cat(cols, 1)


def sketch(obj: MetaObjective, lam: Tensor, omega: Tensor, hprime: str = "exact", chunk: int | None = 32) -> Tensor:
    """Y = H_data Omega = (1/M) sum_k tau_k D^2 L_O^k Omega, [P, k] (delta NOT included), by batched total HVPs.

    ``chunk`` columns are vmapped at once (over columns and, inside, over tasks in ``obj.chunk`` blocks), bounding
    memory to about ``chunk`` x ``obj.chunk`` per-task HVPs; ``None`` takes all k columns in one pass. Equals
    ``obj.hvp(lam, omega[:, j]) - obj.delta * omega[:, j]`` column by column (up to rounding)."""
    if hprime == "exact" and not obj.symmetric_jacobian:
        raise NotImplementedError("the sketch assumes a symmetric total Hessian; first-order MAML's exact Jacobian "
                                  "is not: use hprime='drop' or 'gamma', or second-order MAML")
    cols = omega.T.contiguous()
    y = obj.data_hvps(lam, cols, hprime, block=chunk or cols.shape[0])
    return check_finite(y, "a sketched total Hessian-vector product").T


def _check_damped(w: Tensor, reg: float, what: str) -> None:
    lo = float((w + reg).min()) if w.numel() else reg
    if not reg > 0:
        raise IndefiniteHessianError(f"the low-rank model needs r = delta + damping > 0 for the complement of the "
                                     f"sketch, got r = {reg:.3e}: set the outer L2 delta or the damping above 0")
    if lo <= 0:
        raise IndefiniteHessianError(
            f"{what}: the damped total Hessian has curvature {lo:.3e} <= 0 on the sketched subspace (a Rayleigh "
            f"quotient, so it is indefinite): raise the damping by more than {-lo:.3e} or raise the outer L2 delta")


def ritz_curvature(q: Tensor, y: Tensor, reg: float) -> LowRankCurvature:
    """Rayleigh-Ritz model from an orthonormal Q [P, k] and Y = H_data Q: T = sym(Q^T Y) = V diag(w) V^T, U = Q V.

    Negative w (H_data is slightly indefinite at a converged lam) are kept; ``IndefiniteHessianError`` if some
    w_i + reg <= 0."""
    t = q.T @ y
    w, v = torch.linalg.eigh(0.5 * (t + t.T))
    _check_damped(w, reg, "Rayleigh-Ritz model")
    return LowRankCurvature(q @ v, w, float(reg), (y + reg * q) @ v)


def nystrom_curvature(omega: Tensor, y: Tensor, reg: float) -> LowRankCurvature:
    """Stabilised Nystrom model of A = H_data + reg I from Omega [P, k] and Y = H_data Omega (Tropp et al. 2017).

    Y_A = Y + reg Omega + nu Omega with nu = eps ||Y_A||_F, C = chol(Omega^T Y_A), B = Y_A C^-T = U S W^T:
    A ~ U diag(S^2 - nu) U^T on range(U), so w = S^2 - nu - reg (w < 0 kept: negative data curvature); directions
    with S^2 <= nu (or S below sqrt(eps) S_max: a rank-deficient sketch) are dropped to the complement."""
    _check_damped(torch.zeros(0, dtype=y.dtype), reg, "Nystrom model")
    y_a = y + reg * omega
    nu = torch.finfo(y.dtype).eps * float(y_a.norm())
    y_a = y_a + nu * omega
    core = omega.T @ y_a
    chol, info = torch.linalg.cholesky_ex(0.5 * (core + core.T))
    if int(info):
        raise IndefiniteHessianError(
            "Nystrom model: Omega^T (H_F + damping I) Omega is not positive definite, so the damped total Hessian is "
            "indefinite (or Omega is rank-deficient): raise the damping or the outer L2 delta, or use approx='ritz'")
    bmat = torch.linalg.solve_triangular(chol, y_a.T, upper=False).T
    u, s, _ = torch.linalg.svd(bmat, full_matrices=False)
    lam_a = s ** 2 - nu  # eigenvalues of the Nystrom approximation of A
    keep = (lam_a > 0) & (s > s.max() * torch.finfo(y.dtype).eps ** 0.5)  # drop the null part (rank < k)
    w = lam_a[keep] - reg
    return LowRankCurvature(u[:, keep], w, float(reg))


def _orth_against(x: Tensor, q: Tensor, rtol: float = 1e-10) -> Tensor:
    """An orthonormal basis of the part of range(x) orthogonal to range(q): two rounds of projection, then the
    left singular vectors whose singular value exceeds ``rtol`` ||x|| (a block that adds nothing new is dropped)."""
    scale = float(x.norm())
    for _ in range(2):
        x = x - q @ (q.T @ x)
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    u = u[:, s > rtol * scale]
    return torch.linalg.qr(u - q @ (q.T @ u)).Q


def build_curvature(obj: MetaObjective, lam: Tensor, omega: Tensor, damping: float = 0.0, approx: str = "ritz",
                    power: int = 0, hprime: str = "exact", chunk: int | None = 32) -> LowRankCurvature:
    """The low-rank model of A = H_F + damping I from the probes Omega [P, k] (``power`` + 1 batched passes).

    ``ritz``: each power step extends the basis by a block-Krylov (block Lanczos) step, Q <- [Q, orth(Y_last
    against Q)], so ``power`` = 1 gives a rank-2k Galerkin model on span(Omega, H_data Omega) for 2k HVPs (b stays
    in the basis). ``nystrom``: each power step replaces Omega by H_data Omega (power iteration)."""
    if approx not in APPROXIMATIONS:
        raise ValueError(f"unknown approximation {approx!r}: choose one of {list(APPROXIMATIONS)}")
    reg = obj.delta + damping
    if approx == "ritz":
        q = torch.linalg.qr(omega).Q
        qs, ys = [q], [sketch(obj, lam, q, hprime, chunk)]
        for _ in range(power):
            basis = torch.cat(qs, 1)
            q = _orth_against(ys[-1], basis)
            if q.shape[1] == 0:  # the Krylov space is exhausted (e.g. k = P): the model is already exact
                break
            qs.append(q)
            ys.append(sketch(obj, lam, q, hprime, chunk))
        return ritz_curvature(torch.cat(qs, 1), torch.cat(ys, 1), reg)
    for _ in range(power):
        omega = sketch(obj, lam, omega, hprime, chunk)
        omega = omega / omega.norm(dim=0).clamp_min(torch.finfo(omega.dtype).tiny)
    return nystrom_curvature(omega, sketch(obj, lam, omega, hprime, chunk), reg)


def _col(w: Tensor, x: Tensor) -> Tensor:
    """w [r] shaped to scale the rows of U^T x for x [P] or [P, n]."""
    return w.reshape(-1, *([1] * (x.ndim - 1)))


def lowrank_matvec(c: LowRankCurvature, x: Tensor) -> Tensor:
    """A_hat x = U diag(w) U^T x + r x  (x [P] or [P, n])."""
    return c.basis @ (_col(c.eigenvalues, x) * (c.basis.T @ x)) + c.reg * x


def lowrank_solve(c: LowRankCurvature, b: Tensor) -> Tensor:
    """A_hat^-1 b = U diag(1 / (w + r)) U^T b + (b - U U^T b) / r   (Woodbury; exact, O(P r); b [P] or [P, n])."""
    coef = c.basis.T @ b
    return c.basis @ (coef / _col(c.eigenvalues + c.reg, b)) + (b - c.basis @ coef) / c.reg


def known_product(c: LowRankCurvature, x: Tensor, rtol: float = 1e-12) -> Tensor | None:
    """A x without an HVP when x lies in range(U) and A U is known (``ritz``), else None."""
    if c.au is None:
        return None
    coef = c.basis.T @ x
    if float((x - c.basis @ coef).norm()) > rtol * float(x.norm()):
        return None
    return c.au @ coef


def nystrom_solve(obj: MetaObjective, lam: Tensor, b: Tensor, k: int, damping: float = 0.0,
                  grads: Tensor | None = None, probes: str = "span", approx: str = "ritz", power: int = 0,
                  pcg_iters: int = 0, pcg_tol: float = 1e-10, hprime: str = "exact", chunk: int | None = 32,
                  seed: int = 0) -> tuple[Tensor, SolveInfo, LowRankCurvature]:
    """v ~ (damping I + H_F)^-1 b from a rank-k sketch (``power`` + 1 batched passes of k total HVPs), then up to
    ``pcg_iters`` preconditioned CG iterations on the exact operator (one total HVP each; 0: the Woodbury solve of
    the model alone). ``grads`` (G [M, P]) are needed for ``probes='span'``.

    Returns (v, info, model); ``info.iterations`` is the number of PCG iterations (0 if none were needed or run),
    ``info.rel_residual`` the relative residual ||b - A v|| / ||b|| if it was known without an extra HVP (NaN
    otherwise), ``info.min_eigenvalue`` the smallest eigenvalue of the damped model."""
    omega = probe_matrix(lam.numel(), min(k, lam.numel()), probes, b, grads, seed, lam.dtype)
    c = build_curvature(obj, lam, omega, damping, approx, power, hprime, chunk)
    x0 = lowrank_solve(c, b)
    lo = float((c.eigenvalues + c.reg).min()) if c.rank else c.reg
    ax0 = known_product(c, x0)
    if pcg_iters <= 0:
        rel = float((b - ax0).norm()) / (float(b.norm()) or 1.0) if ax0 is not None else float("nan")
        return x0, SolveInfo(f"nystrom-{approx}", 0, rel, lo), c

    def matvec(u: Tensor) -> Tensor:
        return obj.hvp(lam, u, hprime) + damping * u

    x, info = cg(matvec, b, lambda r: lowrank_solve(c, r), x0, ax0, pcg_tol, pcg_iters)
    return x, SolveInfo(f"nystrom-{approx}-pcg", info.iterations, info.rel_residual, lo, info.converged), c
