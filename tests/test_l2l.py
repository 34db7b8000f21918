"""Cross-checks against learn2learn 0.2.0 (optional: install with `make l2l`; skipped where it is absent).

A. Our ``UnrolledInner`` MAML meta-gradient equals ``learn2learn.algorithms.MAML``'s (second and first order)
   on the same Conv-4, task and initial weights, in float64.
B. Our Omniglot split wraps into learn2learn's ``MetaDataset`` / ``Taskset`` (``TaskDataset``'s non-deprecated
   name in 0.2.0) and yields 5-way 2-shot tasks.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings

import pytest
import torch
import torch.nn.functional as F

# learn2learn imports gym, which prints a deprecation notice on stderr and may warn: keep both out of the log.
with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
    warnings.simplefilter("ignore")
    l2l = pytest.importorskip(
        "learn2learn",
        reason="learn2learn is not installed (optional; on Python >= 3.11 install it with `make l2l`, "
               "which runs scripts/install_learn2learn.sh)",
    )

from metainf.core.bilevel import TaskData, UnrolledInner  # noqa: E402
from metainf.core.models import build_model  # noqa: E402

pytestmark = pytest.mark.l2l

N_WAY, SHOTS, QUERIES, LR = 5, 2, 3, 0.4


def _random_task(seed: int) -> TaskData:
    g = torch.Generator().manual_seed(seed)
    xs = torch.rand(N_WAY * SHOTS, 1, 28, 28, generator=g, dtype=torch.float64)
    xq = torch.rand(N_WAY * QUERIES, 1, 28, 28, generator=g, dtype=torch.float64)
    ys = torch.arange(N_WAY).repeat_interleave(SHOTS)
    yq = torch.arange(N_WAY).repeat_interleave(QUERIES)
    ones = lambda n: torch.ones(n, dtype=torch.float64)  # noqa: E731
    return TaskData(xs, ys, ones(len(ys)), xq, yq, ones(len(yq)))


def _l2l_meta_gradient(model, lam: torch.Tensor, task: TaskData, steps: int, first_order: bool):
    """learn2learn's MAML on a copy of the template module loaded with ``lam``: (query loss, flat meta-gradient)."""
    module = copy.deepcopy(model.module).double()
    init = model.unflatten(lam)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(init[name])
    maml = l2l.algorithms.MAML(module, lr=LR, first_order=first_order)
    learner = maml.clone()
    for _ in range(steps):
        learner.adapt(F.cross_entropy(learner(task.xs), task.ys))
    loss = F.cross_entropy(learner(task.xq), task.yq)
    names = [n for n, _ in maml.module.named_parameters()]
    grads = dict(zip(names, torch.autograd.grad(loss, list(maml.module.parameters()))))
    return loss.detach(), torch.cat([grads[n].reshape(-1) for n in model.names])


@pytest.mark.parametrize("first_order", [False, True], ids=["second_order", "first_order"])
@pytest.mark.parametrize("steps", [1, 2])
def test_unrolled_meta_gradient_matches_learn2learn_maml(steps: int, first_order: bool) -> None:
    model = build_model("conv4", (1, 28, 28), n_way=N_WAY, width=4)
    lam = model.init(seed=0, dtype=torch.float64)
    task = _random_task(seed=1)
    inner = UnrolledInner(steps=steps, lr=LR, first_order=first_order)

    ours_loss = inner.outer_loss(model, lam, task)
    ours_grad = torch.func.grad(lambda l: inner.outer_loss(model, l, task))(lam)
    ref_loss, ref_grad = _l2l_meta_gradient(model, lam, task, steps, first_order)

    assert ours_grad.shape == ref_grad.shape == lam.shape
    assert torch.isfinite(ref_grad).all() and ref_grad.abs().max() > 0
    assert (ours_loss - ref_loss).abs().item() <= 1e-10
    assert (ours_grad - ref_grad).abs().max().item() <= 1e-10


def test_first_and_second_order_differ() -> None:
    """Guards the test above against comparing two identical first-order computations."""
    model = build_model("conv4", (1, 28, 28), n_way=N_WAY, width=4)
    lam = model.init(seed=0, dtype=torch.float64)
    task = _random_task(seed=1)
    _, g2 = _l2l_meta_gradient(model, lam, task, steps=2, first_order=False)
    _, g1 = _l2l_meta_gradient(model, lam, task, steps=2, first_order=True)
    assert (g2 - g1).abs().max().item() > 1e-8


def test_omniglot_split_wraps_into_learn2learn_taskdataset() -> None:
    try:
        from metainf.data.registry import load_split
        from metainf.data.roots import DataNotFoundError
    except ImportError as exc:
        pytest.skip(f"metainf.data.registry is not available yet: {exc}")
    try:
        split = load_split("omniglot", "train")
    except DataNotFoundError as exc:
        pytest.skip(f"no Omniglot data found: {exc}")

    from learn2learn.data import MetaDataset, Taskset  # Taskset: TaskDataset without the deprecation warning
    from learn2learn.data.transforms import KShots, LoadData, NWays, RemapLabels

    n = len(split.labels)
    # the third field carries each image's index so the task can be traced back to the split
    dataset = MetaDataset(torch.utils.data.TensorDataset(split.images, split.labels, torch.arange(n)))
    assert sorted(dataset.labels) == sorted(set(split.labels.tolist()))
    tasks = Taskset(dataset, [NWays(dataset, N_WAY), KShots(dataset, SHOTS), LoadData(dataset),
                              RemapLabels(dataset)], num_tasks=4)
    x, y, idx = tasks.sample()

    c, h, w = split.images.shape[1:]
    assert x.shape == (N_WAY * SHOTS, c, h, w) and x.dtype == split.images.dtype
    assert y.shape == (N_WAY * SHOTS,)
    assert sorted(y.tolist()) == sorted(list(range(N_WAY)) * SHOTS)
    assert torch.equal(x, split.images[idx])
    original = split.labels[idx]
    assert len(set(original.tolist())) == N_WAY
    for k in range(N_WAY):  # each remapped label is one original class
        assert len(set(original[y == k].tolist())) == 1
