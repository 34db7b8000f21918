"""Small few-shot models driven functionally from one flat parameter vector.

Every model is an ``nn.Module`` used only as a template: parameters live in a flat 1-D tensor
(``lambda`` for meta-parameters, ``theta`` for adapted ones) and are mapped onto the module with
``torch.func.functional_call``. A flat vector makes Hessian-vector products, CG and dense solves
uniform, and lets ``vmap`` batch over tasks.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call


#: Conv-4 nonlinearities and poolings by name (``--set activation=silu pool=avg``)
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh, "elu": nn.ELU,
                                          "gelu": nn.GELU, "softplus": nn.Softplus}
POOLS: dict[str, type[nn.Module]] = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}
NORMS: tuple[str, ...] = ("group", "none")


class ZeroLinear(nn.Linear):
    """A linear layer initialised to zero (weights and bias): every class starts at the same logit, so the first
    inner step of MAML adapts from a uniform prediction instead of a random head (needed with GroupNorm)."""

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)


class Conv4(nn.Module):
    """Conv-4 backbone of Finn et al. (2017): 4 x [conv3x3 -> norm -> activation -> pool 2x2] + linear head.

    ``norm`` is ``"group"`` (GroupNorm with one group, no running statistics, safe under ``vmap``) or ``"none"``.
    No BatchNorm: running statistics cannot be updated under ``torch.func`` transforms. ``activation`` is a key of
    ``ACTIVATIONS`` (``"relu"`` as in the paper; ``"silu"`` is smooth), ``pool`` a key of ``POOLS`` (``"max"`` as in
    the paper; ``"avg"`` is smooth). ``zero_head``: the head starts at zero (``ZeroLinear``).
    """

    def __init__(self, in_channels: int, n_out: int, width: int = 8, image_size: int = 28, norm: str = "group",
                 activation: str = "relu", pool: str = "max", zero_head: bool = False):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"Conv4 norm must be one of {list(NORMS)}, got {norm!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"Conv4 activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if pool not in POOLS:
            raise ValueError(f"Conv4 pool must be one of {sorted(POOLS)}, got {pool!r}")
        if width < 1:
            raise ValueError(f"Conv4 width must be a positive number of channels, got {width}")
        layers: list[nn.Module] = []
        channels = in_channels
        size = image_size
        for _ in range(4):
            layers.append(nn.Conv2d(channels, width, 3, padding=1))
            if norm == "group":
                layers.append(nn.GroupNorm(1, width))
            layers += [ACTIVATIONS[activation](), POOLS[pool](2)]
            channels = width
            size = size // 2
        if size < 1:
            raise ValueError(f"image_size {image_size} is too small for 4 poolings")
        self.features = nn.Sequential(*layers)
        self.head = (ZeroLinear if zero_head else nn.Linear)(width * size * size, n_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))


class MLP(nn.Module):
    """Multi-layer perceptron with tanh activations (smooth, so third derivatives exist everywhere)."""

    def __init__(self, in_dim: int, n_out: int, hidden: tuple[int, ...] = (32,)):
        super().__init__()
        dims = [in_dim, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.Tanh()]
        layers.append(nn.Linear(dims[-1], n_out))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@dataclass
class FlatModel:
    """A module template plus the layout of its parameters inside one flat vector."""

    module: nn.Module
    names: list[str]
    shapes: list[torch.Size]

    @classmethod
    def wrap(cls, module: nn.Module) -> "FlatModel":
        names, shapes = zip(*[(n, p.shape) for n, p in module.named_parameters()])
        return cls(module, list(names), list(shapes))

    @property
    def n_params(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        out, i = {}, 0
        for name, shape in zip(self.names, self.shapes):
            n = math.prod(shape)
            out[name] = flat[i : i + n].view(shape)
            i += n
        return out

    def flatten(self, params: dict[str, Tensor]) -> Tensor:
        return torch.cat([params[n].reshape(-1) for n in self.names])

    def init(self, seed: int, dtype: torch.dtype = torch.float64) -> Tensor:
        """Flat initial parameters on the CPU (callers move them): the module's default init under
        ``torch.manual_seed(seed)``, drawn from the CPU generator on a CPU copy of the module, so a seed gives the
        same lam_0 whatever device the module lives on (a CUDA module would draw from the CUDA generator). The
        caller's CPU generator state is restored."""
        module = copy.deepcopy(self.module).cpu()
        with torch.random.fork_rng(devices=[]):  # restores the CPU generator; no device generator is touched
            torch.random.default_generator.manual_seed(seed)
            for m in module.modules():
                if hasattr(m, "reset_parameters") and m is not module:
                    m.reset_parameters()
            flat = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
        return flat.to(dtype).clone()

    def __call__(self, flat: Tensor, x: Tensor) -> Tensor:
        return functional_call(self.module, self.unflatten(flat), (x.to(flat.dtype),))


def build_model(kind: str, input_shape: tuple[int, ...], n_way: int, width: int = 8, hidden: tuple[int, ...] = (32,),
                norm: str = "group", activation: str = "relu", pool: str = "max", zero_head: bool = False) -> FlatModel:
    """Build ``conv4`` or ``mlp`` for inputs of shape ``(C, H, W)`` and ``n_way`` outputs (the Conv-4 options are
    those of :class:`Conv4`; the MLP takes ``hidden``)."""
    if kind == "conv4":
        if len(input_shape) != 3 or input_shape[1] != input_shape[2]:
            raise ValueError(f"conv4 needs square (C, H, W) inputs, got {input_shape}")
        return FlatModel.wrap(Conv4(input_shape[0], n_way, width=width, image_size=input_shape[1], norm=norm,
                                    activation=activation, pool=pool, zero_head=zero_head))
    if kind == "mlp":
        return FlatModel.wrap(MLP(math.prod(input_shape), n_way, hidden=hidden))
    raise ValueError(f"unknown model {kind!r}: choose 'conv4' or 'mlp'")
