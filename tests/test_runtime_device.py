"""Device and dtype plumbing (``metainf.runtime.device``, ``--device`` / ``--dtype``).

On a CPU-only machine the device checks run for ``cpu``; with CUDA (``scripts/gpu_check.sh``) the same tests run
for ``cuda`` too. The dtype checks watch every tensor an operation produces on the hot path (after the set-up:
training, inner solves, total HVPs, task-IF and instance-IF scores) through a ``TorchDispatchMode``: in a float32
run none may be float64, and on a CUDA run none with more than one element may land on the CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from experiments import setups
from experiments.base import RunContext
from metainf.methods import AttributionProblem, get_method, run_method
from metainf.runtime.device import DeviceUnavailableError, resolve_device, resolve_dtype
from metainf.train import train_converged, train_stochastic
from replication.cli import main

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
CONFIG = {"mnist_source": "digits", "n_way": 3, "k_shot": 1, "q_query": 2, "model": "mlp", "hidden": [2], "delta": 0.1,
          "n_train_tasks": 6, "n_eval_tasks": 4, "chunk": 4,
          "unrolled": {"steps": 1, "lr": 0.4}, "proximal": {"beta": 2.0, "newton_steps": 2, "cg_iters": 10}}


class _Watch(TorchDispatchMode):
    """Records the aten operations that return a float64 tensor (not counting 0-dim ones: Python numbers wrapped by
    torch.func) or a tensor of more than one element on the CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.float64: list[str] = []
        self.on_cpu: list[str] = []

    def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor):
                if t.dtype == torch.float64 and t.dim() > 0:  # 0-dim: a Python number wrapped by torch.func
                    self.float64.append(str(func))
                if t.device.type == "cpu" and t.numel() > 1:
                    self.on_cpu.append(str(func))
        return out


def _ctx(device: str, dtype: str | None, tmp_path: Path) -> RunContext:
    return RunContext(exp_id="T", dataset="mnist", scale="smoke", config=dict(CONFIG), seed=0, methods=(),
                      out_dir=tmp_path, data_root=None, executor="serial", scheduler=None, cache_dir=tmp_path,
                      logger=lambda metrics, step: None, device=device, dtype=dtype)


def test_resolve_device_and_dtype() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    assert resolve_dtype(None) == torch.float64 and resolve_dtype(None, torch.float32) == torch.float32
    assert resolve_dtype("float32") == torch.float32
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("float16")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_line_and_exit_2(tmp_path: Path, capsys, monkeypatch) -> None:
    with pytest.raises(DeviceUnavailableError, match="no CUDA device"):
        resolve_device("cuda")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    code = main(["run", "E0", "--scale", "smoke", "--device", "cuda", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "no CUDA device" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "E0").exists()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("inner", ["unrolled", "proximal"])
def test_float32_run_stays_float32_on_its_device(device: str, inner: str, tmp_path: Path) -> None:
    ctx = _ctx(device, "float32", tmp_path)
    setup = setups.build_setup(ctx, inner)  # data loading (numpy, float64) is not on the hot path
    obj = setup.objective
    watch = _Watch()
    with watch:
        x = obj.tasks.xs
        lam_t, _ = train_stochastic(obj, setup.model.init(0, x.dtype).to(x.device), 3, 4, 0.5, seed=0)
        lam = train_converged(obj, lam_t, tol=1e-3, max_iter=5, newton=False).lam
        problem = AttributionProblem(objective=obj, lam=lam, eval_objective=setup.eval_objective)
        u = torch.ones_like(lam)
        method = get_method("task_if", damping=1.0, tol=1e-4)  # lam is not trained to a minimum here
        outputs = {"tasks.xs": x, "tau": obj.tau, "lam_T": lam_t, "lam*": lam, "state": obj.state_at(lam),
                   "grad": obj.grad(lam), "hvp": obj.hvp(lam, u),
                   "task_if": run_method(method, problem, "task").values,
                   "instance_if": run_method(method, problem, "support").values}
    want = resolve_device(device)
    for name, t in outputs.items():
        assert t.device.type == want.type, f"{name} on {t.device}, expected {want}"
        if t.is_floating_point():
            assert t.dtype == torch.float32, f"{name} is {t.dtype}"
    assert not watch.float64, f"float64 tensors on the float32 hot path: {sorted(set(watch.float64))[:10]}"
    if want.type == "cuda":
        assert not watch.on_cpu, f"tensors moved to the CPU on the hot path: {sorted(set(watch.on_cpu))[:10]}"


def test_default_dtype_is_float64(tmp_path: Path) -> None:
    setup = setups.build_setup(_ctx("cpu", None, tmp_path), "unrolled")
    assert setup.objective.tasks.xs.dtype == torch.float64 and setup.eval_objective.tau.dtype == torch.float64
