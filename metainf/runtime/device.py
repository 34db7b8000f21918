"""The device and dtype of a run: the names ``--device`` and ``--dtype`` take, resolved to torch objects.

``--device``: ``cpu``, ``cuda`` (or ``cuda:N``) or ``auto`` (cuda when torch sees one, else cpu). Asking for cuda on a
machine without one raises :class:`DeviceUnavailableError` (the CLI turns it into one line and exit status 2).
``--dtype``: ``float64`` or ``float32``; ``None`` keeps each experiment's own default (float64 for the influence
experiments, whose ground truth needs it; float32 for the E0 MAML sanity run).
"""

from __future__ import annotations

import torch

DEVICES: tuple[str, ...] = ("cpu", "cuda", "auto")
DTYPES: dict[str, torch.dtype] = {"float64": torch.float64, "float32": torch.float32}


class DeviceUnavailableError(ValueError):
    """The requested device does not exist on this machine."""


def resolve_device(name: str) -> torch.device:
    """``"cpu"`` / ``"cuda"`` / ``"cuda:N"`` / ``"auto"`` -> a ``torch.device`` that exists here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(f"--device {name}: torch sees no CUDA device on this machine "
                                         "(torch.cuda.is_available() is False); use --device cpu or auto")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceUnavailableError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
        return device
    raise ValueError(f"unknown device {name!r}: choose one of {', '.join(DEVICES)} (or cuda:N)")


def resolve_dtype(name: str | None, default: torch.dtype = torch.float64) -> torch.dtype:
    """``"float64"`` / ``"float32"`` -> the torch dtype; ``None`` -> ``default``."""
    if name is None:
        return default
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}: choose one of {', '.join(DTYPES)}")
    return DTYPES[name]
