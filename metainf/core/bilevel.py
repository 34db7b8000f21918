"""The two inner problems of bilevel meta learning and their exact total derivatives.

Notation (the paper's section 2, as in ``metainf/influence.py``). Meta-parameters ``lam`` (lambda) and adapted
parameters ``theta`` live in the same flat space. For task k with support set S and query set Q, and per-point
weights ``ws``, ``wq`` (1 = present, 0 = removed; the denominators stay ``|S|`` and ``|Q|``: removal does not
re-normalise)::

    L_S(theta) = (1/|S|) sum_j ws_j * ce(model(theta, xs_j), ys_j)
    L_O(theta) = (1/|Q|) sum_j wq_j * ce(model(theta, xq_j), yq_j)

``UnrolledInner`` (MAML): theta_k(lam) = K steps of SGD on L_S from lam; every total derivative is autodiff of
the unrolled map, second order unless ``first_order``.

``ProximalInner`` (iMAML, the paper's argmin setting): theta_k(lam) = argmin L_S(theta) + beta/2 ||theta - lam||^2,
solved by Newton-CG to a stationarity tolerance. With A = Hess L_S(theta_k) + beta I the implicit function theorem
gives J_k = d theta_k / d lam = beta A^-1 (symmetric), the total gradient g_k = beta A^-1 grad L_O(theta_k), and,
for the total Hessian-vector product with z = J_k u and q = A^-1 grad L_O::

    D^2 L_O^k u = beta A^-1 [ Hess L_O z  -  D^3 L_S[z, q] ]           (``hprime="exact"``)
    D^2 L_O^k u = beta A^-1 [ Hess L_O z ]                               (``hprime="drop"``)

the second term being H'_k u, the third-order term of the paper's Theorem 5.1.

H' modes (``parse_hprime``), for both inner problems: ``"exact"``, ``"drop"`` (H'_k = 0), and the paper's
Theorem 5.1 surrogate, which replaces sum_k H'_k by Gamma = sum_k ||grad_theta L_O^k(theta_k)||_1 I and is ADDED
(positive sign, it acts as damping). Per task, with a scale c::

    D^2 L_O^k u ~ [drop term] + c ||grad_theta L_O^k(theta_k)||_1 u     (``"gamma"``: c = 1; ``"gamma_scaled:c"``)

``MetaObjective`` averages tasks, so Hess F gets (c/M) sum_k tau_k ||grad_theta L_O^k||_1 I: the paper's Gamma in
the mean normalisation. ``metainf.linalg.gamma.check_gamma`` warns when it dominates the rest of the spectrum.

Every method here acts on ONE task (unbatched tensors); ``metainf.core.objective`` vmaps them over the pool.
The instance primitive ``weight_scores(v)`` returns v^T d(D_lam L_O^k)/d(ws, wq), the building block of
instance-IF (see ``metainf.influence`` for the sign convention).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import grad, hessian, jacrev, jvp, vjp

from metainf.core.models import FlatModel
from metainf.core.taskdata import TaskData
from metainf.linalg.cg import cg_fixed
from metainf.linalg.ekfac import ekfac_solve


def weighted_ce(logits: Tensor, y: Tensor, w: Tensor) -> Tensor:
    """(1/n) sum_j w_j ce(logits_j, y_j): the mean cross-entropy when all weights are 1."""
    return (w * F.cross_entropy(logits, y, reduction="none")).sum() / w.shape[-1]


def support_loss(model: FlatModel, theta: Tensor, t: TaskData) -> Tensor:
    return weighted_ce(model(theta, t.xs), t.ys, t.ws)


def query_loss(model: FlatModel, theta: Tensor, t: TaskData) -> Tensor:
    return weighted_ce(model(theta, t.xq), t.yq, t.wq)


def _with_weights(t: TaskData, ws: Tensor, wq: Tensor) -> TaskData:
    return t._replace(ws=ws, wq=wq)


HPRIME_MODES = ("exact", "drop", "gamma", "gamma_scaled:<c>")
#: how ``ProximalInner`` solves its inner linear systems (see there)
PROXIMAL_INNER_SOLVERS = ("cg", "dense", "ekfac")


def parse_hprime(hprime: str) -> tuple[str, float]:
    """``"exact"`` / ``"drop"`` -> (mode, 0); ``"gamma"`` -> ("gamma", 1); ``"gamma_scaled:c"`` -> ("gamma", c > 0)."""
    if hprime in ("exact", "drop"):
        return hprime, 0.0
    if hprime == "gamma":
        return "gamma", 1.0
    head, _, scale = hprime.partition(":")
    if head == "gamma_scaled":
        try:
            c = float(scale)
        except ValueError:
            c = float("nan")
        if c > 0:
            return "gamma", c
    raise ValueError(f"unknown hprime mode {hprime!r}: choose one of {', '.join(HPRIME_MODES)} "
                     "(e.g. 'gamma_scaled:0.1', scale c > 0)")


def gamma_coefficient(model: FlatModel, theta: Tensor, t: TaskData) -> Tensor:
    """||grad_theta L_O(theta)||_1: one task's term of the paper's Gamma (Theorem 5.1)."""
    return grad(query_loss, argnums=1)(model, theta, t).abs().sum()


class InnerProblem(Protocol):
    """What the meta-objective needs from an inner problem; ``UnrolledInner`` and ``ProximalInner`` implement it.

    Every method acts on ONE task (unbatched tensors); ``state`` is the per-task state that ``prepare`` returns
    (the solved theta_k for a proximal problem, the adapted parameters for an unrolled one). Capabilities, so that
    no caller asks which class it holds:

    - ``stationary``: the state solves an inner optimisation problem to a tolerance; such a problem also provides
      ``stationarity(model, lam, t, theta)`` (zero at the solution) and ``newton(model, lam, t, theta, steps)``.
      A problem that is not stationary (an unrolled map) provides ``outer_loss(model, lam, t)``, a function of lam
      whose gradient is ``total_grad``, so the meta-gradient is one reverse pass of the summed task losses.
    - ``dense_blocks``: it provides ``dense_total_hessian`` (exact dense per-task total Hessians, small models).
    - ``symmetric_jacobian``: D_lam g_k is symmetric (a Hessian); otherwise ``total_grad_vjp`` gives its transpose
      and ``loss_grad`` the gradient of the post-adaptation loss.

    Total derivatives follow the module docstring; scores built on them follow the suite's sign convention
    score[u] ~ L_eval(trained without u) - L_eval(trained with u).
    """

    kind: str
    stationary: bool
    dense_blocks: bool

    @property
    def symmetric_jacobian(self) -> bool: ...

    def config(self) -> dict: ...

    def prepare(self, model: FlatModel, lam: Tensor, t: TaskData, state: Tensor | None = None) -> Tensor:
        """The per-task state at ``lam`` (warm-started from ``state`` when given)."""

    def resolve(self, model: FlatModel, lam: Tensor, t: TaskData, state: Tensor, steps: int) -> Tensor:
        """The state at a nearby ``lam`` from ``state`` with ``steps`` solver steps (exact for an unrolled map)."""

    def adapt(self, model: FlatModel, lam: Tensor, t: TaskData) -> Tensor:
        """theta_k(lam), solved from scratch."""

    def adapted(self, model: FlatModel, lam: Tensor, t: TaskData, state: Tensor) -> Tensor:
        """theta_k(lam) given the state at ``lam``."""

    def total_grad(self, model: FlatModel, lam: Tensor, t: TaskData, state: Tensor) -> Tensor:
        """g_k = D_lam L_O^k (first-order MAML: its meta-gradient map)."""

    def total_hvp(self, model: FlatModel, lam: Tensor, t: TaskData, state: Tensor, u: Tensor,
                  hprime: str = "exact") -> Tensor:
        """D^2 L_O^k u (``hprime``: see ``parse_hprime``)."""

    def jvp_theta(self, model: FlatModel, lam: Tensor, t: TaskData, state: Tensor, v: Tensor) -> Tensor:
        """J_k v = d theta_k / d lam . v."""

    def jac_t(self, model: FlatModel, lam: Tensor, t: TaskData, state: Tensor, w: Tensor) -> Tensor:
        """J_k^T w."""

    def weight_scores(self, model: FlatModel, lam: Tensor, t: TaskData, state: Tensor, v: Tensor,
                      variant: str = "full") -> tuple[Tensor, Tensor]:
        """(d/dws, d/dwq) of v^T g_k."""

    def dgrad_dweights(self, model: FlatModel, lam: Tensor, t: TaskData, state: Tensor, es: Tensor,
                       eq: Tensor) -> Tensor:
        """d/ds g_k(ws + s es, wq + s eq) at s = 0."""


class UnrolledInner:
    """theta(lam) = K differentiable SGD steps on L_S from lam (MAML; identical to learn2learn's MAML).

    ``adapt`` is always the true adapted parameter theta_K(lam; ws), a differentiable function of lam and of the
    support weights. ``first_order=True`` (FO-MAML) changes only the meta-gradient: the chain rule through
    d theta_K / d lam is replaced by the identity,

        g_k(lam; ws, wq) = grad_theta L_O(theta; wq) at theta = theta_K(lam; ws)              (``total_grad``)

    (the value learn2learn's ``MAML(first_order=True)`` returns). g_k is not the gradient of any scalar, so its
    derivatives are those of this map, never second derivatives of ``outer_loss``::

        d g_k / d lam [u] = Hess L_O(theta_K) J_K u        (J_K = d theta_K / d lam; not symmetric)
        d g_k / d ws  [e] = Hess L_O(theta_K) d theta_K / d ws [e]
        d g_k / d wq  [e] = grad_theta L_O(theta_K; wq = e)

    ``outer_loss`` keeps the value L_O(theta_K); for first order it unrolls with the inner gradient detached, so
    that its autodiff lam-gradient is g_k (MAML's surrogate), but its higher derivatives are not those of g_k.
    Removal scores built on these derivatives follow the suite's sign convention (``metainf.methods.base``):
    score[u] ~ L_eval(trained without u) - L_eval(trained with u), positive = helpful.
    """

    kind = "unrolled"
    stationary = False
    dense_blocks = False

    def __init__(self, steps: int = 1, lr: float = 0.4, first_order: bool = False):
        if steps < 1 or lr <= 0:
            raise ValueError(f"unrolled inner problem needs steps >= 1 and lr > 0, got steps={steps}, lr={lr}")
        self.steps, self.lr, self.first_order = steps, lr, first_order

    def config(self) -> dict:
        return {"kind": self.kind, "steps": self.steps, "lr": self.lr, "first_order": self.first_order}

    @property
    def symmetric_jacobian(self) -> bool:
        """Second order: D_lam g_k is a Hessian; first order: not symmetric (see the class docstring)."""
        return not self.first_order

    # The unrolled map needs no per-task state; ``prepare`` exists for a uniform interface.
    def prepare(self, model: FlatModel, lam: Tensor, t: TaskData, state: Tensor | None = None) -> Tensor:
        return self.adapt(model, lam, t)

    def resolve(self, model: FlatModel, lam: Tensor, t: TaskData, state: Tensor, steps: int) -> Tensor:
        """theta_K(lam): the unrolled map is exact, so ``steps`` is not used."""
        return self.prepare(model, lam, t, state)

    def adapted(self, model: FlatModel, lam: Tensor, t: TaskData, state: Tensor) -> Tensor:
        """theta_K(lam), recomputed (the state holds nothing the unroll needs)."""
        return self.adapt(model, lam, t)

    def _unroll(self, model: FlatModel, lam: Tensor, t: TaskData, detach: bool) -> Tensor:
        theta = lam
        for _ in range(self.steps):
            g = grad(support_loss, argnums=1)(model, theta, t)
            theta = theta - self.lr * (g.detach() if detach else g)
        return theta

    def adapt(self, model: FlatModel, lam: Tensor, t: TaskData) -> Tensor:
        """theta_K(lam; ws): K SGD steps on L_S, differentiable in lam and ws (also for ``first_order``)."""
        return self._unroll(model, lam, t, detach=False)

    def outer_loss(self, model: FlatModel, lam: Tensor, t: TaskData) -> Tensor:
        """L_O^k(lam) = L_O(theta_k(lam)), differentiable in lam (first order: the detached-unroll surrogate whose
        lam-gradient, and only that, is the FO-MAML meta-gradient; see the class docstring)."""
        return query_loss(model, self._unroll(model, lam, t, detach=self.first_order), t)

    def total_grad(self, model: FlatModel, lam: Tensor, t: TaskData, state: Tensor) -> Tensor:
        """g_k = D_lam L_O^k (second order); first order: grad_theta L_O at theta = theta_K(lam; ws), a function of
        (lam, ws, wq) whose jvp / vjp / weight derivatives are the exact derivatives of the FO-MAML update map."""
        if self.first_order:
            return grad(query_loss, argnums=1)(model, self.adapt(model, lam, t), t)
        return grad(self.outer_loss, argnums=1)(model, lam, t)

    def total_grad_vjp(self, model: FlatModel, lam: Tensor, t: TaskData, state: Tensor, w: Tensor) -> Tensor:
        """(d g_k / d lam)^T w. Second order: equals ``total_hvp(..., "exact")`` (symmetric); first order:
        J_K^T Hess L_O(theta_K) w, the transpose of the non-symmetric FO-MAML Jacobian."""
        return vjp(lambda l: self.total_grad(model, l, t, state), lam)[1](w)[0]

    def loss_grad(self, model: FlatModel, lam: Tensor, t: TaskData, state: Tensor) -> Tensor:
        """D_lam L_O(theta_K(lam)), the exact gradient of the post-adaptation query loss through the unroll, also
        for ``first_order`` (where it differs from the meta-gradient ``total_grad``): the gradient of an
        evaluation functional such as ``MetaObjective.mean_loss``."""
        return grad(lambda l: query_loss(model, self.adapt(model, l, t), t))(lam)

    def total_hvp(self, model: FlatModel, lam: Tensor, t: TaskData, state: Tensor, u: Tensor,
                  hprime: str = "exact") -> Tensor:
        """D^2 L_O^k u. ``exact``: autodiff through the unroll. ``drop``: J^T Hess L_O J u (no curvature of the map).
        ``gamma`` / ``gamma_scaled:c``: the drop term + c ||grad_theta L_O(theta_k)||_1 u (see ``parse_hprime``).

        First order, ``exact`` is the Jacobian-vector product of the FO-MAML meta-gradient map, Hess L_O(theta_K)
        J u, which is NOT symmetric (use ``total_grad_vjp`` for the transpose); ``drop`` / ``gamma`` stay the
        symmetric J^T Hess L_O J u (+ gamma) with the true J."""
        mode, scale = parse_hprime(hprime)
        if mode == "exact":
            return jvp(lambda l: self.total_grad(model, l, t, state), (lam,), (u,))[1]
        theta, ju = jvp(lambda l: self.adapt(model, l, t), (lam,), (u,))
        hz = jvp(lambda th: grad(query_loss, argnums=1)(model, th, t), (theta,), (ju,))[1]
        out = vjp(lambda l: self.adapt(model, l, t), lam)[1](hz)[0]
        return out + scale * gamma_coefficient(model, theta, t) * u if mode == "gamma" else out

    def jvp_theta(self, model: FlatModel, lam: Tensor, t: TaskData, state: Tensor, v: Tensor) -> Tensor:
        """J_k v = d theta_k / d lam . v."""
        return jvp(lambda l: self.adapt(model, l, t), (lam,), (v,))[1]

    def jac_t(self, model: FlatModel, lam: Tensor, t: TaskData, state: Tensor, w: Tensor) -> Tensor:
        """J_k^T w, a vjp through the unrolled steps."""
        return vjp(lambda l: self.adapt(model, l, t), lam)[1](w)[0]

    def weight_scores(self, model: FlatModel, lam: Tensor, t: TaskData, state: Tensor, v: Tensor,
                      variant: str = "full") -> tuple[Tensor, Tensor]:
        """(d/dws, d/dwq) of v^T g_k(lam; ws, wq): exact second-order autodiff (first order: of v^T total_grad,
        i.e. d/dws = (Hess L_O(theta_K) v)^T d theta_K/d ws, d/dwq_j = v . grad l_j(theta_K) / |Q|)."""
        if variant != "full":
            raise ValueError("the unrolled problem has no inner Hessian to freeze: use variant='full'")

        def directional(ws: Tensor, wq: Tensor) -> Tensor:
            tw = _with_weights(t, ws, wq)
            if self.first_order:
                return self.total_grad(model, lam, tw, state) @ v
            return jvp(lambda l: self.outer_loss(model, l, tw), (lam,), (v,))[1]

        return grad(directional, argnums=(0, 1))(t.ws, t.wq)

    def dgrad_dweights(self, model: FlatModel, lam: Tensor, t: TaskData, state: Tensor, es: Tensor,
                       eq: Tensor) -> Tensor:
        """d/ds g_k(lam; ws + s es, wq + s eq) at s = 0 (the direction of an instance removal edit)."""
        def g(ws: Tensor, wq: Tensor) -> Tensor:
            if self.first_order:
                return self.total_grad(model, lam, _with_weights(t, ws, wq), state)
            return grad(self.outer_loss, argnums=1)(model, lam, _with_weights(t, ws, wq))

        return jvp(g, (t.ws, t.wq), (es, eq))[1]


class ProximalInner:
    """theta(lam) = argmin_theta L_S(theta) + beta/2 ||theta - lam||^2 (iMAML), derivatives by the IFT.

    ``state`` is the solved theta_k (warm start for the next solve). Inner linear systems A x = b use
    ``inner_solver``: ``"cg"`` (fixed ``cg_iters`` iterations, vmap-able), ``"dense"`` (A formed by ``jacrev``,
    small models only) or ``"ekfac"`` (``metainf.linalg.ekfac``: an EK-FAC approximation of Hess L_S with beta on
    its diagonal; approximate, so Newton steps become quasi-Newton steps). ``newton_cg_iters`` (default
    ``cg_iters``) is the CG iteration count of the Newton steps alone: an inexact Newton direction only slows the
    inner solve, whose result is fixed by the stationarity tolerance (``MetaObjective.state_at``), while the
    total derivatives keep ``cg_iters``. ``cg_hvp`` is how CG applies Hess L_S(theta): ``"jvp"`` (default), a
    forward-over-reverse product per iteration; ``"vjp"``, reverse-over-reverse with grad L_S linearised once per
    solve and that linearisation reused by every iteration (the same symmetric operator to rounding, ~3x cheaper
    per iteration on small models, where per-call overhead dominates).
    """

    kind = "proximal"
    stationary = True
    dense_blocks = True
    symmetric_jacobian = True  # J_k = beta A^-1 and D^2 L_O^k are symmetric

    def __init__(self, beta: float = 1.0, newton_steps: int = 6, cg_iters: int = 60, inner_solver: str = "cg",
                 newton_cg_iters: int | None = None, cg_hvp: str = "jvp"):
        if beta <= 0:
            raise ValueError(f"proximal beta must be > 0, got {beta}")
        if inner_solver not in PROXIMAL_INNER_SOLVERS:
            raise ValueError(f"inner_solver must be one of {', '.join(map(repr, PROXIMAL_INNER_SOLVERS))}, "
                             f"got {inner_solver!r}")
        if newton_cg_iters is not None and newton_cg_iters < 1:
            raise ValueError(f"newton_cg_iters must be >= 1 (or None: cg_iters), got {newton_cg_iters}")
        if cg_hvp not in ("jvp", "vjp"):
            raise ValueError(f"cg_hvp must be 'jvp' or 'vjp', got {cg_hvp!r}")
        self.beta, self.newton_steps, self.cg_iters, self.inner_solver = beta, newton_steps, cg_iters, inner_solver
        self.newton_cg_iters, self.cg_hvp = newton_cg_iters, cg_hvp

    def config(self) -> dict:
        out = {"kind": self.kind, "beta": self.beta, "newton_steps": self.newton_steps, "cg_iters": self.cg_iters,
               "inner_solver": self.inner_solver}
        if self.newton_cg_iters is not None:
            out["newton_cg_iters"] = self.newton_cg_iters
        return out if self.cg_hvp == "jvp" else {**out, "cg_hvp": self.cg_hvp}

    # -- inner problem -------------------------------------------------------------------------------------
    def stationarity(self, model: FlatModel, lam: Tensor, t: TaskData, theta: Tensor) -> Tensor:
        """grad_theta [L_S + beta/2 ||theta - lam||^2]; zero at the inner solution."""
        return grad(support_loss, argnums=1)(model, theta, t) + self.beta * (theta - lam)

    def a_matvec(self, model: FlatModel, t: TaskData, theta: Tensor, x: Tensor) -> Tensor:
        """A x = Hess L_S(theta) x + beta x."""
        hx = jvp(lambda th: grad(support_loss, argnums=1)(model, th, t), (theta,), (x,))[1]
        return hx + self.beta * x

    def a_solve(self, model: FlatModel, t: TaskData, theta: Tensor, b: Tensor, iters: int | None = None) -> Tensor:
        """A^-1 b (``iters``: CG iterations, default ``cg_iters``)."""
        if self.inner_solver == "dense":
            h = jacrev(grad(support_loss, argnums=1), argnums=1)(model, theta, t)
            a = 0.5 * (h + h.T) + self.beta * torch.eye(theta.numel(), dtype=theta.dtype, device=theta.device)
            return torch.linalg.solve(a, b)
        if self.inner_solver == "ekfac":
            return ekfac_solve(model, t, theta, b, self.beta)
        iters = self.cg_iters if iters is None else iters
        if self.cg_hvp == "vjp":  # linearise grad L_S at theta once; each CG product is then one reverse pass
            _, hess_vjp = vjp(lambda th: grad(support_loss, argnums=1)(model, th, t), theta)
            return cg_fixed(lambda x: hess_vjp(x)[0] + self.beta * x, b, iters)
        return cg_fixed(lambda x: self.a_matvec(model, t, theta, x), b, iters)

    def inner_objective(self, model: FlatModel, lam: Tensor, t: TaskData, theta: Tensor) -> Tensor:
        return support_loss(model, theta, t) + 0.5 * self.beta * (theta - lam) @ (theta - lam)

    def newton(self, model: FlatModel, lam: Tensor, t: TaskData, theta: Tensor, steps: int) -> Tensor:
        """Safeguarded Newton-CG: each step keeps the best of {Newton step x 1, 1/2, 1/4, 1/16} and
        {gradient step 1/(2 beta), 1/(8 beta)} and staying put, by inner objective (monotone, vmap-able)."""
        for _ in range(steps):
            r = self.stationarity(model, lam, t, theta)
            d = self.a_solve(model, t, theta, r, self.newton_cg_iters)
            cands = torch.stack([theta] + [theta - a * d for a in (1.0, 0.5, 0.25, 0.0625)]
                                + [theta - r / (c * self.beta) for c in (2.0, 8.0)])
            vals = torch.stack([self.inner_objective(model, lam, t, c) for c in cands])
            vals = torch.where(torch.isfinite(vals), vals, torch.full_like(vals, float("inf")))
            # near the solution objective differences fall below float resolution: prefer the full Newton step
            tie = 64 * torch.finfo(theta.dtype).eps * (vals[0].abs() + 1.0)
            vals = vals - tie * F.one_hot(torch.tensor(1, device=vals.device), len(cands)).to(vals.dtype)
            pick = F.one_hot(vals.argmin(), len(cands)).to(theta.dtype)
            theta = pick @ cands
        return theta

    def prepare(self, model: FlatModel, lam: Tensor, t: TaskData, state: Tensor | None = None) -> Tensor:
        """Solve the inner problem (Newton-CG, warm-started from ``state`` when given); returns theta_k."""
        return self.newton(model, lam, t, lam if state is None else state, self.newton_steps)

    def adapt(self, model: FlatModel, lam: Tensor, t: TaskData) -> Tensor:
        return self.prepare(model, lam, t)

    def resolve(self, model: FlatModel, lam: Tensor, t: TaskData, state: Tensor, steps: int) -> Tensor:
        """theta_k(lam) from ``state`` by ``steps`` safeguarded Newton steps."""
        return self.newton(model, lam, t, state, steps)

    def adapted(self, model: FlatModel, lam: Tensor, t: TaskData, state: Tensor) -> Tensor:
        """theta_k(lam) is the state itself."""
        return state

    # -- total derivatives ---------------------------------------------------------------------------------
    def total_grad(self, model: FlatModel, lam: Tensor, t: TaskData, state: Tensor) -> Tensor:
        """g_k = beta A^-1 grad L_O(theta_k)."""
        return self.beta * self.a_solve(model, t, state, grad(query_loss, argnums=1)(model, state, t))

    def _third_order_rhs(self, model: FlatModel, t: TaskData, theta: Tensor, q: Tensor, z: Tensor,
                         hprime: str) -> Tensor:
        """Hess L_O z - D^3 L_S[z, q] (exact) or Hess L_O z (drop)."""
        if hprime == "exact":
            def f(th: Tensor) -> Tensor:
                gq = grad(query_loss, argnums=1)(model, th, t)
                return gq - jvp(lambda s: grad(support_loss, argnums=1)(model, s, t), (th,), (q,))[1]
        elif hprime == "drop":
            def f(th: Tensor) -> Tensor:
                return grad(query_loss, argnums=1)(model, th, t)
        else:
            raise ValueError(f"hprime mode {hprime!r} is not available here: use 'exact' or 'drop' "
                             "(the Gamma surrogate is added by total_hvp)")
        return jvp(f, (theta,), (z,))[1]

    def total_hvp(self, model: FlatModel, lam: Tensor, t: TaskData, state: Tensor, u: Tensor,
                  hprime: str = "exact") -> Tensor:
        """D^2 L_O^k u = beta A^-1 [Hess L_O (J u) - D^3 L_S[J u, q]] with q = A^-1 grad L_O, J u = beta A^-1 u.

        ``drop`` omits the D^3 term (and the solve for q); ``gamma`` / ``gamma_scaled:c`` add
        c ||grad_theta L_O(theta_k)||_1 u to the drop term (see ``parse_hprime``)."""
        mode, scale = parse_hprime(hprime)
        gq = grad(query_loss, argnums=1)(model, state, t)
        q = self.a_solve(model, t, state, gq) if mode == "exact" else gq
        z = self.beta * self.a_solve(model, t, state, u)
        rhs = self._third_order_rhs(model, t, state, q, z, "exact" if mode == "exact" else "drop")
        out = self.beta * self.a_solve(model, t, state, rhs)
        return out + scale * gq.abs().sum() * u if mode == "gamma" else out

    def dense_total_hessian(self, model: FlatModel, lam: Tensor, t: TaskData, state: Tensor,
                            hprime: str = "exact") -> Tensor:
        """D^2 L_O^k as a dense P x P matrix from dense per-task blocks (small models; no implicit HVPs).

        With A = Hess L_S(theta_k) + beta I and q = A^-1 grad L_O (both formed densely, exact solves)::

            D^2 L_O^k = beta^2 A^-1 Hess phi A^-1,   phi(theta) = L_O(theta) - q . grad L_S(theta)  (q held fixed)

        since Hess phi = Hess L_O - D^3 L_S[., q]: the matrix of :meth:`total_hvp` (``"exact"``). ``drop`` uses
        phi = L_O (H'_k = 0); ``gamma`` / ``gamma_scaled:c`` add c ||grad_theta L_O(theta_k)||_1 I to the drop
        matrix. Symmetrised. Cost: three dense Hessians (one of third order) and two P x P solves per task.
        """
        mode, scale = parse_hprime(hprime)
        theta, beta = state, self.beta
        eye = torch.eye(theta.numel(), dtype=theta.dtype, device=theta.device)
        h_s = hessian(support_loss, argnums=1)(model, theta, t)
        a = 0.5 * (h_s + h_s.T) + beta * eye
        gq = grad(query_loss, argnums=1)(model, theta, t)
        if mode == "exact":
            q = torch.linalg.solve(a, gq)

            def phi(th: Tensor) -> Tensor:
                return query_loss(model, th, t) - grad(support_loss, argnums=1)(model, th, t) @ q
        else:
            def phi(th: Tensor) -> Tensor:
                return query_loss(model, th, t)
        c = hessian(phi)(theta)
        a_inv_c = torch.linalg.solve(a, 0.5 * (c + c.T))             # A^-1 C
        out = beta ** 2 * torch.linalg.solve(a, a_inv_c.T)             # A^-1 C^T A^-1 = A^-1 C A^-1 (C, A symmetric)
        out = 0.5 * (out + out.T)
        return out + scale * gq.abs().sum() * eye if mode == "gamma" else out

    def jvp_theta(self, model: FlatModel, lam: Tensor, t: TaskData, state: Tensor, v: Tensor) -> Tensor:
        return self.beta * self.a_solve(model, t, state, v)

    def jac_t(self, model: FlatModel, lam: Tensor, t: TaskData, state: Tensor, w: Tensor) -> Tensor:
        """J_k^T w = J_k w (J_k = beta A^-1 is symmetric)."""
        return self.jvp_theta(model, lam, t, state, w)

    def weight_scores(self, model: FlatModel, lam: Tensor, t: TaskData, state: Tensor, v: Tensor,
                      variant: str = "full") -> tuple[Tensor, Tensor]:
        """(d/dws, d/dwq) of v^T D_lam L_O^k.

        With q_v = A^-1 v, q = A^-1 grad L_O, r = Hess L_O q_v - D^3 L_S[q_v, q], s = A^-1 r, and per-point
        losses l_j (so that d L_S / d ws_j = l_j / |S|)::

            d/dws_j = -(beta/|S|) [ q_v^T Hess l_j q  +  grad l_j^T s ]        (variant "full": the paper's D_lam P)
            d/dws_j = -(beta/|S|) grad l_j^T A^-1 Hess L_O q_v                  (variant "frozen": inner-IF held fixed)
            d/dwq_j =  (beta/|Q|) grad l_j(theta_k)^T q_v                       (query point: J_k v . grad l_j)
        """
        theta, beta = state, self.beta
        qv = self.a_solve(model, t, theta, v)
        n_s, n_q = t.ws.shape[-1], t.wq.shape[-1]

        def point_loss(th: Tensor, x: Tensor, y: Tensor) -> Tensor:
            return F.cross_entropy(model(th, x.unsqueeze(0)), y.unsqueeze(0))

        point_grad = grad(point_loss)
        gq_pts = torch.vmap(point_grad, in_dims=(None, 0, 0))(theta, t.xq, t.yq)  # [Q, P]
        d_wq = beta / n_q * (gq_pts @ qv)
        gs_pts = torch.vmap(point_grad, in_dims=(None, 0, 0))(theta, t.xs, t.ys)  # [S, P]
        if variant == "frozen":
            r = jvp(lambda th: grad(query_loss, argnums=1)(model, th, t), (theta,), (qv,))[1]
            d_ws = -beta / n_s * (gs_pts @ self.a_solve(model, t, theta, r))
        elif variant == "full":
            q = self.a_solve(model, t, theta, grad(query_loss, argnums=1)(model, theta, t))
            r = self._third_order_rhs(model, t, theta, q, qv, "exact")
            s = self.a_solve(model, t, theta, r)

            def curvature(x: Tensor, y: Tensor) -> Tensor:  # q_v^T Hess l_j q
                return jvp(lambda th: point_grad(th, x, y), (theta,), (q,))[1] @ qv

            d_ws = -beta / n_s * (torch.vmap(curvature)(t.xs, t.ys) + gs_pts @ s)
        else:
            raise ValueError(f"support variant must be 'full' or 'frozen', got {variant!r}")
        return d_ws, d_wq

    def dgrad_dweights(self, model: FlatModel, lam: Tensor, t: TaskData, state: Tensor, es: Tensor,
                       eq: Tensor) -> Tensor:
        """d/ds g_k(ws + s es, wq + s eq) = beta A^-1 [Hess L_O dth + dL_O[eq] - D^3 L_S[dth] q - dHess L_S[es] q],
        with dth = -A^-1 grad L_S[es] (the support loss with weights es)."""
        theta = state
        q = self.a_solve(model, t, theta, grad(query_loss, argnums=1)(model, theta, t))
        dth = -self.a_solve(model, t, theta, grad(support_loss, argnums=1)(model, theta, t._replace(ws=es)))

        def f(th: Tensor, ws: Tensor, wq: Tensor) -> Tensor:
            tw = _with_weights(t, ws, wq)
            gq = grad(query_loss, argnums=1)(model, th, tw)
            return gq - jvp(lambda s: grad(support_loss, argnums=1)(model, s, tw), (th,), (q,))[1]

        rhs = jvp(f, (theta, t.ws, t.wq), (dth, es, eq))[1]
        return self.beta * self.a_solve(model, t, theta, rhs)


def make_inner(kind: str, **kwargs) -> InnerProblem:
    """Build an inner problem by name: ``unrolled`` or ``proximal``."""
    if kind == "unrolled":
        return UnrolledInner(**kwargs)
    if kind == "proximal":
        return ProximalInner(**kwargs)
    raise ValueError(f"unknown inner problem {kind!r}: choose 'unrolled' or 'proximal'")
