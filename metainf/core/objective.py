"""The meta-objective over a fixed task pool, batched over tasks with ``vmap``.

    F(lam) = (1/M) sum_k tau_k L_O^k(lam; ws_k, wq_k) + (delta/2) ||lam||^2

``tau`` are task weights and ``ws``/``wq`` point weights (1 = present, 0 = removed, no re-normalisation), so
leave-one-out retraining and influence functions differentiate the same function. ``delta`` is the outer L2
coefficient (the paper's delta I). Per-task state (the proximal inner solutions) is cached per lam.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch
from torch import Tensor
from torch.func import vmap

from metainf.core.bilevel import InnerProblem, TaskData, query_loss
from metainf.core.models import FlatModel
from metainf.data.tasks import TaskPool
from metainf.linalg.chunked import chunks, map_chunked


class NonFiniteError(FloatingPointError):
    """A loss or gradient became NaN/inf."""


def pool_tensors(pool: TaskPool, dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None) -> TaskData:
    """Stack a pool into ``TaskData`` on ``device`` (default: where the pool is) with all point weights 1."""
    m = len(pool)
    dev = pool.support_x.device if device is None else torch.device(device)
    return TaskData(
        xs=pool.support_x.to(dev, dtype), ys=pool.support_y.to(dev).long(),
        ws=torch.ones(m, pool.n_support, dtype=dtype, device=dev),
        xq=pool.query_x.to(dev, dtype), yq=pool.query_y.to(dev).long(),
        wq=torch.ones(m, pool.n_query, dtype=dtype, device=dev),
    )


def check_finite(x: Tensor, what: str) -> Tensor:
    if not torch.isfinite(x).all():
        raise NonFiniteError(f"{what} is not finite. Lower the learning rates (inner lr / outer lr), raise the "
                             "outer L2 delta or the proximal beta, or use float64.")
    return x


@dataclass(frozen=True)
class DenseHessian:
    """A dense total Hessian ``matrix`` of F at ``lam`` for ``hprime``: a curvature choice that serves
    :meth:`MetaObjective.hvp` there as ``matrix @ u`` (the same operator with exact instead of CG inner solves, so
    iterative solvers cost matrix products). Any other lam or hprime takes the implicit path."""

    lam: Tensor
    hprime: str
    matrix: Tensor


@dataclass
class MetaObjective:
    """F(lam) over ``tasks`` (stacked TaskData) for ``model`` and ``inner``; ``chunk`` bounds vmap memory;
    ``curvature`` optionally serves :meth:`hvp` from a dense matrix (:meth:`with_dense_hessian`). The per-lam cache
    of inner solutions is private: copies made by the ``with_*`` / :meth:`subset` methods share it."""

    model: FlatModel
    inner: InnerProblem
    tasks: TaskData
    delta: float = 0.0
    tau: Tensor | None = None
    chunk: int | None = 16
    curvature: DenseHessian | None = None
    _state_lam: Tensor | None = field(default=None, repr=False)
    _state: Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        """Check ``tasks`` (and ``tau``) against each other and the model; raise ``ValueError`` naming each bad field.

        Expected, for M tasks with S support and Q query points: xs [M, S, *input], ys/ws [M, S], xq [M, Q, *input],
        yq/wq [M, Q], tau [M]; labels integer in 0..n_out-1; the model accepts *input. (Non-finite inputs surface as
        ``NonFiniteError`` where a loss is first evaluated.)
        """
        t = self.tasks
        problems: list[str] = []
        if t.xs.ndim < 3 or t.xq.ndim < 3:
            problems.append(f"xs/xq must be [tasks, points, *input], got shapes {tuple(t.xs.shape)} / "
                            f"{tuple(t.xq.shape)}")
        else:
            m, s, q = t.xs.shape[0], t.xs.shape[1], t.xq.shape[1]
            if t.xq.shape[0] != m:
                problems.append(f"xq holds {t.xq.shape[0]} tasks but xs holds {m}")
            if t.xq.shape[2:] != t.xs.shape[2:]:
                problems.append(f"xq has per-point input shape {tuple(t.xq.shape[2:])}, expected "
                                f"{tuple(t.xs.shape[2:])} (that of xs): resize the query images to match")
            for name, want in (("ys", (m, s)), ("ws", (m, s)), ("yq", (m, q)), ("wq", (m, q))):
                got = tuple(getattr(t, name).shape)
                if got != want:
                    kind = "support" if name[1] == "s" else "query"
                    problems.append(f"{name} has shape {got}, expected {want} = [tasks, {kind} points]")
            if self.tau is not None and tuple(self.tau.shape) != (m,):
                problems.append(f"tau has shape {tuple(self.tau.shape)}, expected ({m},) = one weight per task")
            for name in ("ys", "yq"):
                y = getattr(t, name)
                if y.is_floating_point() or y.is_complex():
                    problems.append(f"{name} must hold integer class labels (torch.long), got {y.dtype}")
            module = getattr(self.model, "module", None)
            if not problems and m and s and isinstance(module, torch.nn.Module):
                p0 = next(module.parameters(), None)
                try:
                    with torch.no_grad():
                        out = module(t.xs[0, :1].to(t.xs.dtype if p0 is None else p0.dtype))
                except (RuntimeError, ValueError) as exc:
                    raise ValueError(
                        f"the model does not accept the task inputs of per-point shape {tuple(t.xs.shape[2:])} "
                        f"({exc}). Build the model for that input shape (metainf.core.models.build_model(kind, "
                        "input_shape=pool.input_shape, n_way)) or load the images at the size the model expects "
                        "(image_size=...).") from exc
                n_out = out.shape[-1]
                for name in ("ys", "yq"):
                    y = getattr(t, name)
                    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_out):
                        problems.append(f"{name} has labels in {int(y.min())}..{int(y.max())} but the model has "
                                        f"{n_out} outputs: expected labels 0..{n_out - 1} (build it with n_way)")
        if problems:
            raise ValueError("MetaObjective tasks are malformed: " + "; ".join(problems) + ". Build them with "
                             "metainf.core.objective.pool_tensors(pool) from a TaskPool, or fix the named fields.")
        if self.tau is None:
            self.tau = torch.ones(self.n_tasks, dtype=self.tasks.xs.dtype, device=self.tasks.xs.device)

    @property
    def n_tasks(self) -> int:
        return self.tasks.xs.shape[0]

    def with_weights(self, tau: Tensor | None = None, ws: Tensor | None = None,
                     wq: Tensor | None = None) -> "MetaObjective":
        """A copy with other task / point weights (used for leave-one-out), sharing the inner-state cache.

        The cached theta_k stay valid at their lam when the support weights are unchanged (tau and wq do not enter
        the inner problems); with other support weights they only warm-start the copy's next inner solve, since
        they solve the old inner problems (a stale theta_k would give wrong values and gradients at that lam).
        """
        t = self.tasks._replace(ws=self.tasks.ws if ws is None else ws, wq=self.tasks.wq if wq is None else wq)
        obj = MetaObjective(self.model, self.inner, t, self.delta, self.tau.clone() if tau is None else tau,
                            self.chunk)
        obj._state = self._state
        if torch.equal(t.ws, self.tasks.ws):
            obj._state_lam = self._state_lam
        return obj

    def with_inner(self, inner: InnerProblem) -> "MetaObjective":
        """A copy with another inner problem (e.g. another inner solver), sharing the inner solutions already
        computed (valid when ``inner`` solves the same inner problems)."""
        return MetaObjective(self.model, inner, self.tasks, self.delta, self.tau, self.chunk,
                             _state_lam=self._state_lam, _state=self._state)

    def subset(self, lam: Tensor, idx: Sequence[int]) -> "MetaObjective":
        """F_B over the tasks ``idx`` (with their tau), its inner-state cache at ``lam`` taken from this objective."""
        idx = list(idx)
        tasks = TaskData(*(x[idx] for x in self.tasks))
        if not self.inner.stationary:  # no inner state to share (see _prime)
            return MetaObjective(self.model, self.inner, tasks, self.delta, self.tau[idx], self.chunk)
        state = self.state_at(lam)
        return MetaObjective(self.model, self.inner, tasks, self.delta, self.tau[idx], self.chunk,
                             _state_lam=self._state_lam, _state=state[idx])

    def with_dense_hessian(self, lam: Tensor, hprime: str = "exact", hess: Tensor | None = None) -> "MetaObjective":
        """A copy whose :meth:`hvp` at ``lam`` (for ``hprime``) is H u with H = ``hess`` or :meth:`block_hessian`
        (see :class:`DenseHessian`), sharing the inner-state cache."""
        h = self.block_hessian(lam, hprime) if hess is None else hess
        return replace(self, curvature=DenseHessian(lam.detach().clone(), hprime, h))

    # -- per-task batched primitives -----------------------------------------------------------------------
    def map_tasks(self, fn, *args, in_dims=None) -> Tensor:
        """vmap ``fn(task, state, *args)`` over tasks in chunks of ``chunk`` and concatenate along dim 0
        (``metainf.linalg.chunked.map_chunked``). ``state``: the inner state at the last lam solved (see
        :meth:`_prime`) for a stationary inner problem; a placeholder for an unrolled one, whose methods recompute the
        unroll and read no state. ``in_dims`` for ``args``: 0 for a per-task argument [M, ...] (sliced with the
        tasks), None for one shared by all tasks (the default)."""
        if self.inner.stationary and self._state_lam is not None:
            state = self._state
        else:
            state = torch.zeros(self.n_tasks, 1, device=self.tasks.xs.device)
        return map_chunked(fn, (self.tasks, state, *args), (0, 0, *(in_dims or (None,) * len(args))), self.chunk)

    def _prime(self, lam: Tensor) -> None:
        """Solve (or reuse) the inner problems at ``lam`` that :meth:`map_tasks` hands to its ``fn``: stationary inner
        problems only. An unrolled map keeps no state (its methods recompute theta_K(lam)), so computing one would
        only repeat the inner steps."""
        if self.inner.stationary:
            self.state_at(lam)

    def state_at(self, lam: Tensor) -> Tensor:
        """Per-task inner state at ``lam`` (the proximal solutions theta_k; adapted params for unrolled)."""
        if self._state_lam is not None and self._state_lam.shape == lam.shape and torch.equal(self._state_lam, lam):
            return self._state
        warm = self._state if self._state is not None else None
        if warm is None:
            state = map_chunked(lambda tk: self.inner.prepare(self.model, lam, tk), (self.tasks,), size=self.chunk)
        else:
            state = map_chunked(lambda tk, s: self.inner.prepare(self.model, lam, tk, s), (self.tasks, warm),
                                size=self.chunk)
        if self.inner.stationary:
            state = self._polish(lam, state)
        self._state_lam, self._state = lam.detach().clone(), state.detach()
        return self._state

    def _polish(self, lam: Tensor, state: Tensor, tol: float | None = None, max_rounds: int = 20) -> Tensor:
        """Extra Newton rounds until every task meets the stationarity tolerance; warn if it cannot."""
        tol = tol if tol is not None else (1e-10 if lam.dtype == torch.float64 else 1e-5)
        inner = self.inner
        for _ in range(max_rounds):
            res = self.inner_residuals(lam, state)
            check_finite(res, "proximal inner residual")
            if float(res.max()) <= tol:
                return state
            state = map_chunked(lambda tk, s: inner.newton(self.model, lam, tk, s, 2), (self.tasks, state),
                                size=self.chunk)
        warnings.warn(f"proximal inner problem reached stationarity {float(res.max()):.2e} > tol {tol:.1e}: raise "
                      "beta (better conditioning), cg_iters or newton_steps", RuntimeWarning, stacklevel=2)
        return state

    def inner_residuals(self, lam: Tensor, state: Tensor) -> Tensor:
        """||stationarity||_2 per task (proximal only)."""
        inner = self.inner
        return map_chunked(lambda tk, s: inner.stationarity(self.model, lam, tk, s).norm(), (self.tasks, state),
                           size=self.chunk)

    def task_losses(self, lam: Tensor) -> Tensor:
        """L_O^k(lam) for every task (weights applied inside each task, tau not applied)."""
        self._prime(lam)
        return self.map_tasks(lambda t, s: query_loss(self.model, self._adapted(lam, t, s), t))

    def _adapted(self, lam: Tensor, t: TaskData, s: Tensor) -> Tensor:
        return self.inner.adapted(self.model, lam, t, s)

    def adapted_params(self, lam: Tensor) -> Tensor:
        """theta_k(lam) for every task, [M, P]."""
        if self.inner.stationary:  # the state is theta_k
            return self.state_at(lam)
        return self.map_tasks(lambda t, s: self.inner.adapt(self.model, lam, t))

    def task_grads(self, lam: Tensor) -> Tensor:
        """Total gradients g_k = D_lam L_O^k for every task, [M, P] (tau not applied)."""
        self._prime(lam)
        g = self.map_tasks(lambda t, s: self.inner.total_grad(self.model, lam, t, s))
        return check_finite(g, "a per-task total gradient")

    def value(self, lam: Tensor) -> Tensor:
        losses = check_finite(self.task_losses(lam), "a task loss")
        return (self.tau * losses).sum() / self.n_tasks + 0.5 * self.delta * lam @ lam

    def losses_and_data_grad(self, lam: Tensor) -> tuple[Tensor, Tensor]:
        """([L_O^k(lam)]_k [M], d(lam) = (1/M) sum_k tau_k g_k(lam) [P]) without per-task gradients: for an unrolled
        inner problem, d is the lam-gradient of the weighted sum of its ``outer_loss`` (second order: the loss
        through the unroll; first order: the detached-unroll surrogate whose gradient is the FO-MAML map), so one
        reverse pass per chunk of ``chunk`` tasks gives it, the graph of one chunk alive at a time. The task losses
        are those of the same forward pass. Raises ``NotImplementedError`` for a stationary (proximal) problem,
        whose g_k needs the implicit derivative of its inner solution."""
        if self.inner.stationary:
            raise NotImplementedError("the summed-loss gradient needs an unrolled inner problem: a proximal g_k "
                                      "differentiates the inner solution implicitly (use task_grads)")
        point = lam.detach().requires_grad_(True)
        losses, d = [], torch.zeros_like(lam)
        with torch.enable_grad():  # also inside a no_grad caller (torch.optim.LBFGS's closure)
            for sl in chunks(self.n_tasks, self.chunk):
                tasks = TaskData(*(x[sl] for x in self.tasks))
                part = check_finite(vmap(lambda t: self.inner.outer_loss(self.model, point, t))(tasks), "a task loss")
                d += torch.autograd.grad(self.tau[sl].to(lam.dtype) @ part / self.n_tasks, point)[0]
                losses.append(part.detach())
        return torch.cat(losses), d

    def grad(self, lam: Tensor) -> Tensor:
        """grad F = (1/M) sum_k tau_k g_k + delta lam: for an unrolled problem one reverse pass of the summed task
        losses (:meth:`losses_and_data_grad`), for a proximal one the per-task total gradients (:meth:`task_grads`)."""
        if not self.inner.stationary:
            return check_finite(self.losses_and_data_grad(lam)[1], "a meta-gradient") + self.delta * lam
        return self.tau @ self.task_grads(lam) / self.n_tasks + self.delta * lam

    def value_and_grad(self, lam: Tensor) -> tuple[Tensor, Tensor]:
        """(F, grad F): for an unrolled problem both from one summed-loss pass (:meth:`losses_and_data_grad`), as a
        trainer takes a meta-epoch; for a proximal one :meth:`value` and :meth:`grad`."""
        if self.inner.stationary:
            return self.value(lam), self.grad(lam)
        losses, d = self.losses_and_data_grad(lam)
        value = (self.tau * losses).sum() / self.n_tasks + 0.5 * self.delta * lam @ lam
        return value, check_finite(d, "a meta-gradient") + self.delta * lam

    def hvp(self, lam: Tensor, u: Tensor, hprime: str = "exact") -> Tensor:
        """Hess F u = (1/M) sum_k tau_k D^2 L_O^k u + delta u (from ``curvature``, if it is
        for this lam and hprime). For first-order MAML (``"exact"``) this is the Jacobian-vector product of the
        meta-gradient map, D_lam grad F u, which is not symmetric: see :meth:`grad_vjp` for the transpose."""
        dense = self.curvature
        if (dense is not None and dense.hprime == hprime and dense.lam.shape == lam.shape
                and torch.equal(dense.lam, lam)):
            return dense.matrix @ u
        self._prime(lam)
        hk = self.map_tasks(lambda t, s: self.inner.total_hvp(self.model, lam, t, s, u, hprime))
        return check_finite(self.tau @ hk / self.n_tasks + self.delta * u, "a total Hessian-vector product")

    @property
    def symmetric_jacobian(self) -> bool:
        """Whether D_lam grad F is symmetric (a Hessian). False for first-order MAML, whose meta-gradient
        g_k = grad_theta L_O(theta_k(lam)) is not the gradient of any scalar (``UnrolledInner``)."""
        return self.inner.symmetric_jacobian

    def grad_vjp(self, lam: Tensor, w: Tensor) -> Tensor:
        """(D_lam grad F)^T w = (1/M) sum_k tau_k (D_lam g_k)^T w + delta w.

        For a symmetric Jacobian this is :meth:`hvp` (``"exact"``); for first-order MAML it is
        (1/M) sum_k tau_k J_k^T Hess L_O(theta_k) w + delta w by ``UnrolledInner.total_grad_vjp``."""
        if self.symmetric_jacobian:
            return self.hvp(lam, w)
        self._prime(lam)
        jk = self.map_tasks(lambda t, s: self.inner.total_grad_vjp(self.model, lam, t, s, w))
        return check_finite(self.tau @ jk / self.n_tasks + self.delta * w, "a meta-gradient vector-Jacobian product")

    def _hessian_columns(self, lam: Tensor, hprime: str, block: int, combine, vectors: Tensor | None = None) -> Tensor:
        """``combine(per-task HVPs [M, P], u)`` for every row u of ``vectors`` (default: the basis vectors),
        ``block`` of them batched with vmap."""
        self._prime(lam)
        rows = torch.eye(lam.numel(), dtype=lam.dtype, device=lam.device) if vectors is None else vectors

        def column(u: Tensor) -> Tensor:
            return combine(self.map_tasks(lambda t, s, w: self.inner.total_hvp(self.model, lam, t, s, w, hprime), u), u)

        return map_chunked(column, (rows,), size=block)

    def data_hvps(self, lam: Tensor, vectors: Tensor, hprime: str = "exact", block: int = 64) -> Tensor:
        """(1/M) sum_k tau_k D^2 L_O^k u for every row u of ``vectors`` [n, P] (delta NOT applied), ``block`` rows
        batched with vmap: the data part of :meth:`hvp`, many vectors at once."""
        return self._hessian_columns(lam, hprime, block, lambda hk, u: self.tau @ hk / self.n_tasks, vectors)

    def dense_hessian(self, lam: Tensor, hprime: str = "exact", block: int = 64) -> Tensor:
        """The full total Hessian of F (small models only), symmetrised."""
        h = self._hessian_columns(lam, hprime, block, lambda hk, u: self.tau @ hk / self.n_tasks + self.delta * u)
        check_finite(h, "the dense total Hessian")
        return 0.5 * (h + h.T)

    def task_hessians(self, lam: Tensor, hprime: str = "exact", block: int = 64) -> Tensor:
        """Per-task total Hessians D^2 L_O^k, [M, P, P], symmetrised (small models only; tau, delta not applied)."""
        h = self._hessian_columns(lam, hprime, block, lambda hk, u: hk).permute(1, 2, 0)  # [P, M, P] -> [M, P, P]
        check_finite(h, "a per-task total Hessian")
        return 0.5 * (h + h.transpose(1, 2))

    def _blockchunks(self, lam: Tensor, hprime: str, chunk: int):
        """Yield (slice, [n, P, P] per-task total Hessians) from ``inner.dense_total_hessian`` (proximal only)."""
        if not self.inner.dense_blocks:
            raise ValueError("dense per-task blocks need the proximal inner problem; use dense_hessian / "
                             "task_hessians (HVP columns) for the unrolled one")
        state = self.state_at(lam)
        for sl in chunks(self.n_tasks, chunk):
            t = TaskData(*(x[sl] for x in self.tasks))
            h = vmap(lambda tk, s: self.inner.dense_total_hessian(self.model, lam, tk, s, hprime))(t, state[sl])
            yield sl, check_finite(h, "a per-task total Hessian")

    def block_task_hessians(self, lam: Tensor, hprime: str = "exact", chunk: int = 8) -> Tensor:
        """Per-task total Hessians D^2 L_O^k, [M, P, P], from dense per-task blocks (proximal; tau, delta not applied).

        The same matrices as :meth:`task_hessians` with exact inner solves instead of P implicit HVPs (each running
        CG solves): see ``ProximalInner.dense_total_hessian``. ``chunk`` tasks are vmapped at a time.
        """
        return torch.cat([h for _, h in self._blockchunks(lam, hprime, chunk)])

    def block_hessian(self, lam: Tensor, hprime: str = "exact", chunk: int = 8) -> Tensor:
        """Hess F = (1/M) sum_k tau_k D^2 L_O^k + delta I from dense per-task blocks (proximal), accumulated chunk-wise
        so that only ``chunk`` P x P blocks are held at a time. The matrix of :meth:`dense_hessian`."""
        h = self.delta * torch.eye(lam.numel(), dtype=lam.dtype, device=lam.device)
        for sl, hk in self._blockchunks(lam, hprime, chunk):
            h = h + torch.einsum("k,kij->ij", self.tau[sl], hk) / self.n_tasks
        return 0.5 * (h + h.T)

    def mean_loss(self, lam: Tensor) -> Tensor:
        """Unweighted mean query loss over the pool: the default evaluation functional L_eval."""
        return self.task_losses(lam).mean()

    def loss_grads(self, lam: Tensor) -> Tensor:
        """D_lam of each task's query loss, [M, P]: the exact gradients of :meth:`task_losses` (also for first-order
        MAML, whose meta-gradients ``task_grads`` only approximate them); one evaluation functional per row."""
        if self.symmetric_jacobian:
            return self.task_grads(lam)
        self._prime(lam)
        g = self.map_tasks(lambda t, s: self.inner.loss_grad(self.model, lam, t, s))
        return check_finite(g, "a per-task query-loss gradient")

    def mean_loss_grad(self, lam: Tensor) -> Tensor:
        """D_lam of the unweighted mean query loss (the evaluation gradient): the mean of :meth:`loss_grads`."""
        return self.loss_grads(lam).mean(0)

    def accuracy(self, lam: Tensor) -> Tensor:
        """Post-adaptation query accuracy per task, [M]."""
        thetas = self.adapted_params(lam)
        def acc(t: TaskData, th: Tensor) -> Tensor:
            return (self.model(th, t.xq).argmax(-1) == t.yq).to(lam.dtype).mean()
        return map_chunked(acc, (self.tasks, thetas), size=self.chunk)


class Stacked(NamedTuple):
    """The result of :func:`stacked_value_and_grad` (U copies)."""

    values: Tensor  # [U]
    grads: Tensor | None  # [U, P]
    states: Tensor | None  # [U, M, P]: the proximal inner solutions theta_k (None for the unrolled problem)
    losses: Tensor  # [U, M]: the task losses L_O^k, as in MetaObjective.task_losses
    inner_ok: Tensor  # [U] bool: every inner problem of the copy met the stationarity tolerance


def stacked_value_and_grad(obj: MetaObjective, lams: Tensor, tau: Tensor, ws: Tensor, wq: Tensor,
                           state: Tensor | None = None, with_grad: bool = True, polish_rounds: int = 40,
                           warn: bool = True) -> Stacked:
    """F and grad F of U re-weightings of ``obj``'s pool at U points at once, in one vmap over U x M task copies.

    Copy u is ``obj.with_weights(tau[u], ws[u], wq[u])`` evaluated at ``lams[u]`` (shapes: lams [U, P], tau [U, M],
    ws [U, M, S], wq [U, M, Q])::

        values[u] = (1/M) sum_k tau[u, k] L_O^k(lams[u]; ws[u, k], wq[u, k]) + (delta/2) ||lams[u]||^2
        grads[u]  = (1/M) sum_k tau[u, k] g_k(lams[u]; ws[u, k], wq[u, k]) + delta lams[u]

    the formulas of :meth:`MetaObjective.value` / :meth:`MetaObjective.grad`, term for term. Proximal inner
    problems start from ``state`` ([U, M, P] or [M, P]; None: solved from lam as in ``prepare``) and take single
    safeguarded Newton steps until every task meets the stationarity tolerance of :meth:`MetaObjective.state_at`
    (1e-10 in float64), at most ``polish_rounds``; ``inner_ok`` flags the copies that met it (a warning if ``warn``
    and one did not). Non-finite values stay in their copy (no ``NonFiniteError``), for the caller to reject.
    Small models only: per-task work is tiny and vmap's per-call overhead dominates, so U copies cost a few
    evaluations of one objective.
    """
    u_n, m = lams.shape[0], obj.n_tasks
    model, inner = obj.model, obj.inner
    t = obj.tasks
    rep = lambda x: x.repeat(u_n, *([1] * (x.ndim - 1)))  # [M, ...] -> [U*M, ...], copy-major
    tasks = TaskData(rep(t.xs), rep(t.ys), ws.reshape(u_n * m, -1), rep(t.xq), rep(t.yq), wq.reshape(u_n * m, -1))
    lam_k = lams.repeat_interleave(m, 0)
    theta, inner_ok = None, torch.ones(u_n, dtype=torch.bool, device=lams.device)
    if inner.stationary:
        if state is None:
            theta = vmap(lambda tk, l: inner.prepare(model, l, tk))(tasks, lam_k)
        else:
            theta = state.reshape(u_n * m, -1) if state.ndim == 3 else rep(state)
        tol = 1e-10 if lams.dtype == torch.float64 else 1e-5

        def residual(th: Tensor) -> Tensor:
            return vmap(lambda tk, l, s: inner.stationarity(model, l, tk, s).norm())(tasks, lam_k, th)

        res = residual(theta)
        for _ in range(polish_rounds):
            if not bool(((res > tol) & torch.isfinite(res)).any()):  # non-finite copies cannot be polished
                break
            theta = vmap(lambda tk, l, s: inner.newton(model, l, tk, s, 1))(tasks, lam_k, theta)
            res = residual(theta)
        inner_ok = (res <= tol).reshape(u_n, m).all(1)
        if warn and not bool(inner_ok.all()):
            worst = float(torch.nan_to_num(res, nan=float("inf")).max())
            warnings.warn(f"proximal inner problem reached stationarity {worst:.2e} > tol {tol:.1e}: raise beta "
                          "(better conditioning), cg_iters or newton_steps", RuntimeWarning, stacklevel=2)
        theta = theta.detach()
        adapted = theta
    else:
        adapted = vmap(lambda tk, l: inner.adapt(model, l, tk))(tasks, lam_k)
    losses = vmap(lambda tk, th: query_loss(model, th, tk))(tasks, adapted).reshape(u_n, m)
    values = (tau * losses).sum(1) / m + 0.5 * obj.delta * (lams * lams).sum(1)
    grads = None
    if with_grad:
        st = theta if theta is not None else torch.zeros(u_n * m, 1, dtype=lams.dtype, device=lams.device)
        gk = vmap(lambda tk, s, l: inner.total_grad(model, l, tk, s))(tasks, st, lam_k).reshape(u_n, m, -1)
        grads = torch.einsum("um,ump->up", tau, gk) / m + obj.delta * lams
    return Stacked(values, grads, None if theta is None else theta.reshape(u_n, m, -1), losses, inner_ok)
