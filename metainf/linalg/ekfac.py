"""EK-FAC inverse of the proximal inner Hessian A = Hess L_S(theta) + beta I, layer by layer (George et al. 2018;
Grosse et al. 2023), for ``ProximalInner(inner_solver="ekfac")`` (inner iHVPs, total gradients and the
support-point stage of instance-IF all go through ``ProximalInner.a_solve``).

Hess L_S is replaced by its layer-block-diagonal Gauss-Newton matrix. For a Linear / Conv2d layer with weight
matrix W (d_out x d_in'; the bias is the last input column; a conv weight is d_out x c_in k_h k_w and its inputs
are the unfolded patches at every output position l), with support weights w_j = ws_j / |S|::

    G_W = sum_j w_j sum_c vec(D_jc) vec(D_jc)^T ,     D_jc = sum_l g_jcl a_jl^T

where a_jl is the layer input of example j and g_jcl the backpropagation to the layer output of column c of a
square root M_j of the output Hessian H_j = d^2 ce(o_j, y_j) / d o^2 = M_j M_j^T (``fisher="ggn"``: the exact
expectation over the model's labels, C columns) or of the true-label gradient (``fisher="empirical"``: one column).

    Kronecker factors     A = sum_jl w_j a_jl a_jl^T = Q_A S_A Q_A^T ,    G = sum_jcl g_jcl g_jcl^T = Q_G S_G Q_G^T
    eigenvalue correction Lambda[r, s] = sum_jc (Q_G^T D_jc Q_A)[r, s]^2   (diag of G_W in the Kronecker eigenbasis)
    inverse               A^-1 V ~ Q_G [ (Q_G^T V Q_A) / (Lambda + beta + rho) ] Q_A^T     (beta: the proximal term)

The factor scales cancel (only their eigenvectors are used). Exactness: the result is the exact (G_W + (beta+rho) I)^-1
whenever G_W is diagonal in Q_A (x) Q_G: e.g. one support example (G_W = a a^T (x) sum_c g g^T is a Kronecker
product), or a single linear layer under 2-way CE whose augmented inputs a_j are mutually orthogonal with distinct
norms (every H_j is a multiple of the same rank-1 v v^T, so G_W = (sum_j w_j p_j0 p_j1 a_j a_j^T) (x) 2 v v^T and
Q_A diagonalises the weighted sum, although plain K-FAC's unweighted A (x) G differs from it). For a linear model,
G_W is the exact Hessian of CE. Parameters outside Linear / Conv2d layers (e.g. GroupNorm affine) get curvature 0:
A^-1 b = b / (beta + rho) there. Layers are found through ``model.module`` and mapped onto the flat vector with
``model.unflatten`` / ``model.flatten``; inputs and output gradients are tapped with forward hooks (vmap-able).
Cost per solve: one forward, C backward passes, two eigendecompositions per layer (d_in'^3 + d_out^3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import grad, jacrev, vjp, vmap

from metainf.core.models import FlatModel
from metainf.core.taskdata import TaskData
from metainf.linalg.chunked import chunks
from metainf.linalg.types import SolveInfo

FISHERS = ("ggn", "empirical")


@dataclass
class LayerFactors:
    """One layer's eigenbases and corrected eigenvalues; ``weight`` / ``bias`` are flat-parameter names."""

    weight: str
    bias: str | None
    q_a: Tensor  # [d_in', d_in']
    q_g: Tensor  # [d_out, d_out]
    eigenvalues: Tensor  # [d_out, d_in'] (Lambda)


def kfac_layers(model: FlatModel) -> list[tuple[nn.Module, str, str | None]]:
    """(module, weight name, bias name or None) for every Linear / Conv2d layer whose weight is in the flat vector."""
    names = set(model.names)
    out = []
    for path, mod in model.module.named_modules():
        prefix = f"{path}." if path else ""
        if isinstance(mod, (nn.Linear, nn.Conv2d)) and prefix + "weight" in names:
            if isinstance(mod, nn.Conv2d) and (mod.groups != 1 or isinstance(mod.padding, str)
                                               or mod.padding_mode != "zeros"):
                raise ValueError(f"EK-FAC supports Conv2d with groups=1, integer zero padding; {path!r} is {mod}")
            bias = prefix + "bias" if prefix + "bias" in names else None
            out.append((mod, prefix + "weight", bias))
    return out


def _tapped_forward(model: FlatModel, theta: Tensor, x: Tensor, mods: list[nn.Module],
                    taps: list[Tensor] | None) -> tuple[Tensor, list[Tensor], list[torch.Size]]:
    """logits with ``taps[i]`` added to layer i's output; returns the layer inputs and output shapes too."""
    inputs: dict[int, Tensor] = {}
    shapes: dict[int, torch.Size] = {}

    def hook_for(i: int):
        def hook(mod: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> Tensor:
            inputs[i], shapes[i] = inp[0], out.shape
            return out if taps is None else out + taps[i]
        return hook

    handles = [m.register_forward_hook(hook_for(i)) for i, m in enumerate(mods)]
    try:
        logits = model(theta, x)
    finally:
        for h in handles:
            h.remove()
    return logits, [inputs[i] for i in range(len(mods))], [shapes[i] for i in range(len(mods))]


def _patches(mod: nn.Module, a: Tensor, has_bias: bool) -> Tensor:
    """Layer inputs as [n, L, d_in'] (L positions; a trailing 1 for the bias)."""
    if isinstance(mod, nn.Conv2d):
        a = F.unfold(a, mod.kernel_size, mod.dilation, mod.padding, mod.stride).transpose(1, 2)
    else:
        a = a.reshape(a.shape[0], 1, -1)
    return torch.cat([a, torch.ones_like(a[..., :1])], dim=-1) if has_bias else a


def _output_roots(logits: Tensor, y: Tensor, w: Tensor, fisher: str) -> Tensor:
    """Cotangents [K, n, C] for the backward passes: sqrt(w_j) x columns of M_j (ggn) or of grad ce (empirical)."""
    def point_loss(o: Tensor, yy: Tensor) -> Tensor:
        return F.cross_entropy(o.unsqueeze(0), yy.unsqueeze(0))

    sw = w.clamp_min(0).sqrt().unsqueeze(-1)
    if fisher == "ggn":
        h = vmap(jacrev(grad(point_loss)))(logits, y)  # [n, C, C]
        evals, evecs = torch.linalg.eigh(0.5 * (h + h.transpose(1, 2)))
        roots = evecs * evals.clamp_min(0).sqrt().unsqueeze(1)  # columns c of M_j
        return (roots * sw.unsqueeze(-1)).permute(2, 0, 1)
    if fisher == "empirical":
        return (vmap(grad(point_loss))(logits, y) * sw).unsqueeze(0)
    raise ValueError(f"unknown EK-FAC fisher {fisher!r}: choose one of {FISHERS}")


def _layer_samples(model: FlatModel, layers: list[tuple[nn.Module, str, str | None]], x: Tensor, y: Tensor,
                   w: Tensor, theta: Tensor, fisher: str) -> list[tuple[Tensor, Tensor]]:
    """Per layer (a [n, L, d_in'], g [K, n, L, d_out]): the layer inputs of the n examples of ``x`` at ``theta``
    (patches for a conv, a trailing 1 for the bias) and the backpropagations of the K output roots of
    ``_output_roots`` (weights ``w`` folded in as sqrt(w_j)). vmap-able over sets of examples."""
    mods = [m for m, _, _ in layers]
    _, _, shapes = _tapped_forward(model, theta, x, mods, None)
    taps = [torch.zeros(s, dtype=theta.dtype, device=theta.device) for s in shapes]
    logits, pullback, inputs = vjp(lambda tp: _tapped_forward(model, theta, x, mods, tp)[:2], taps, has_aux=True)
    out_grads = vmap(lambda c: pullback(c)[0])(_output_roots(logits, y, w, fisher))  # per layer [K, n, *out_shape]
    samples = []
    for (mod, _, bname), a, g in zip(layers, inputs, out_grads):
        g = g.flatten(3).transpose(2, 3) if isinstance(mod, nn.Conv2d) else g.unsqueeze(2)  # [K, n, L, d_out]
        samples.append((_patches(mod, a, bname is not None), g))
    return samples


def _covariances(samples: list[tuple[Tensor, Tensor]], w: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Per layer the unnormalised Kronecker factors (A, G) of the module docstring from examples' layer inputs and
    output backpropagations (``_layer_samples``, examples along n) and their weights ``w`` [n]: sums over examples,
    so the factors of a pooled set are the sums of its parts'."""
    return [(torch.einsum("n,nld,nle->de", w, a, a), torch.einsum("knld,knle->de", g, g)) for a, g in samples]


def _eigenbases(covariances: list[tuple[Tensor, Tensor]]) -> list[tuple[Tensor, Tensor]]:
    """Per layer (Q_A, Q_G): the eigenvectors of the symmetrised Kronecker factors."""
    return [(torch.linalg.eigh(0.5 * (a + a.T))[1], torch.linalg.eigh(0.5 * (g + g.T))[1]) for a, g in covariances]


def _corrections(samples: list[tuple[Tensor, Tensor]], bases: list[tuple[Tensor, Tensor]]) -> list[Tensor]:
    """Per layer the eigenvalue correction Lambda[r, s] = sum_jc (Q_G^T D_jc Q_A)[r, s]^2 of the module docstring
    over the given examples (sums over examples, as ``_covariances``)."""
    return [(torch.einsum("knlr,nls->knrs", g @ q_g, a @ q_a) ** 2).sum((0, 1))
            for (a, g), (q_a, q_g) in zip(samples, bases)]


def _factors(layers: list[tuple[nn.Module, str, str | None]], bases: list[tuple[Tensor, Tensor]],
             corrections: list[Tensor]) -> list[LayerFactors]:
    return [LayerFactors(wname, bname, q_a, q_g, lam)
            for (_, wname, bname), (q_a, q_g), lam in zip(layers, bases, corrections)]


def _factors_of(layers: list[tuple[nn.Module, str, str | None]], samples: list[tuple[Tensor, Tensor]],
                w: Tensor) -> list[LayerFactors]:
    """The factors of the module docstring from all the examples' samples at once (one pass)."""
    bases = _eigenbases(_covariances(samples, w))
    return _factors(layers, bases, _corrections(samples, bases))


def ekfac_factors(model: FlatModel, t: TaskData, theta: Tensor, fisher: str = "ggn") -> list[LayerFactors]:
    """EK-FAC factors of the Gauss-Newton matrix of L_S(theta) on task ``t``'s support set (weights ``t.ws``)."""
    layers = kfac_layers(model)
    w = t.ws / t.ws.shape[-1]
    return _factors_of(layers, _layer_samples(model, layers, t.xs, t.ys, w, theta, fisher), w)


def pooled_ekfac_factors(model: FlatModel, x: Tensor, y: Tensor, w: Tensor, thetas: Tensor, fisher: str = "ggn",
                         chunk: int | None = 16) -> list[LayerFactors]:
    """EK-FAC factors of sum_k GN_k, GN_k the Gauss-Newton matrix of sum_j w[k, j] ce(f(thetas[k], x[k, j]), y[k, j])
    (every set k of examples at its own parameters; ``x`` [M, n, ...], ``y`` / ``w`` [M, n], ``thetas`` [M, P]):
    the Kronecker factors and the eigenvalue correction of the module docstring summed over all M n examples.
    With M = 1 this is :func:`ekfac_factors`.

    The per-set passes are vmapped ``chunk`` sets at a time, and memory is bounded by one chunk's layer inputs and
    output backpropagations: the Kronecker factors are summed over the chunks in a first pass, and the eigenvalue
    correction, which needs their eigenbases, in a second pass that recomputes each chunk's samples (twice the
    forward and backward passes; one pass when all sets fit in one chunk)."""
    layers = kfac_layers(model)
    slices = list(chunks(x.shape[0], chunk))

    def samples_of(sl: slice) -> list[tuple[Tensor, Tensor]]:
        """The chunk's samples, its sets pooled along n ([n_sets * n, L, d_in'], [K, n_sets * n, L, d_out])."""
        part = vmap(lambda xx, yy, ww, th: _layer_samples(model, layers, xx, yy, ww, th, fisher))(
            x[sl], y[sl], w[sl], thetas[sl])
        return [(a.flatten(0, 1), g.transpose(0, 1).flatten(1, 2)) for a, g in part]

    if len(slices) == 1:
        return _factors_of(layers, samples_of(slices[0]), w.reshape(-1))
    covariances = [(torch.zeros(()), torch.zeros(()))] * len(layers)
    for sl in slices:
        part = _covariances(samples_of(sl), w[sl].reshape(-1))
        covariances = [(a + pa, g + pg) for (a, g), (pa, pg) in zip(covariances, part)]
    bases = _eigenbases(covariances)
    corrections = [torch.zeros(())] * len(layers)
    for sl in slices:
        corrections = [c + pc for c, pc in zip(corrections, _corrections(samples_of(sl), bases))]
    return _factors(layers, bases, corrections)


def _ekfac_map(model: FlatModel, factors: list[LayerFactors], b: Tensor, damping: float, inverse: bool) -> Tensor:
    """(G_W + damping I)^-1 b (``inverse``) or (G_W + damping I) b in the EK-FAC eigenbases."""
    def scale(v: Tensor, s: Tensor | float) -> Tensor:
        return v / s if inverse else v * s

    parts = model.unflatten(b)
    out = {name: scale(v, damping) for name, v in parts.items()}
    for f in factors:
        wmat = parts[f.weight].reshape(f.q_g.shape[0], -1)
        v = torch.cat([wmat, parts[f.bias].unsqueeze(-1)], dim=-1) if f.bias else wmat
        x = f.q_g @ scale(f.q_g.T @ v @ f.q_a, f.eigenvalues + damping) @ f.q_a.T
        if f.bias:
            out[f.bias] = x[:, -1]
            x = x[:, :-1]
        out[f.weight] = x.reshape(parts[f.weight].shape)
    return model.flatten(out)


def ekfac_apply(model: FlatModel, factors: list[LayerFactors], b: Tensor, damping: float) -> Tensor:
    """(G_W + damping I)^-1 b with the EK-FAC factors; damping (beta + rho) > 0 on every coordinate."""
    if damping <= 0:
        raise ValueError(f"EK-FAC needs a positive damping (beta + rho), got {damping}")
    return _ekfac_map(model, factors, b, damping, inverse=True)


def ekfac_solve(model: FlatModel, t: TaskData, theta: Tensor, b: Tensor, beta: float, rho: float = 0.0,
                fisher: str = "ggn") -> Tensor:
    """EK-FAC approximation of (Hess L_S(theta) + beta I)^-1 b, with extra damping ``rho``."""
    return ekfac_apply(model, ekfac_factors(model, t, theta, fisher), b, beta + rho)


@dataclass(frozen=True)
class EKFACCurvature:
    """The EK-FAC model G_W + damping I of one task's inner Hessian Hess L_S(theta) + beta I (damping = beta + rho)
    as a ``metainf.linalg.curvature.Curvature``: ``solve`` is ``ekfac_solve``'s division in the eigenbases."""

    model: FlatModel
    factors: list[LayerFactors]
    damping: float

    @classmethod
    def at(cls, model: FlatModel, t: TaskData, theta: Tensor, beta: float, rho: float = 0.0,
           fisher: str = "ggn") -> "EKFACCurvature":
        return cls(model, ekfac_factors(model, t, theta, fisher), beta + rho)

    def matvec(self, v: Tensor) -> Tensor:
        return _ekfac_map(self.model, self.factors, v, self.damping, inverse=False)

    def solve(self, b: Tensor) -> tuple[Tensor, SolveInfo]:
        x = ekfac_apply(self.model, self.factors, b, self.damping)
        rel = float((self.matvec(x) - b).norm()) / (float(b.norm()) or 1.0)
        return x, SolveInfo("ekfac", 0, rel, self.damping)
