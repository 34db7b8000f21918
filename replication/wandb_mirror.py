"""Mirror a run to Weights & Biases: config, metrics, tables and figures; one W&B run per result file.

Modes: ``offline`` (default; no account; files under ``<results>/wandb``; upload later with ``wandb sync``),
``online`` (when asked) and ``disabled`` (tests; wandb is not even imported). The JSON result is the source of
truth: if wandb is missing or any W&B call fails, the mirror prints one warning, switches itself off and the run
continues. ``online`` initialisation gives up after :data:`INIT_TIMEOUT_S` seconds (an unreachable server, no key)
and falls back to ``offline``; this is said once per process, and later runs of the process go offline at once.
:func:`close_service` ends W&B's service process at the end of a command, as W&B recommends (``wandb.teardown``).
"""

from __future__ import annotations

import math
import os
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

MODES: tuple[str, ...] = ("offline", "online", "disabled")
INIT_TIMEOUT_S = 10.0
#: set once an online initialisation failed in this process: later mirrors start offline without waiting again
_online_failed: list[str] = []
#: set once a mirror of this process opened a W&B run: W&B's service process is then up until :func:`close_service`
_service_up: list[bool] = []


class WandbMirror:
    """A fault-tolerant wrapper around one ``wandb`` run."""

    def __init__(self, mode: str, directory: Path, project: str = "metainf") -> None:
        if mode not in MODES:
            raise ValueError(f"unknown W&B mode {mode!r}; modes: {list(MODES)}")
        self.mode = mode
        self.directory = Path(directory)
        self.project = project
        self._wandb: Any = None
        self._run: Any = None

    @property
    def active(self) -> bool:
        """Whether a W&B run is open."""
        return self._run is not None

    def _off(self, reason: str) -> None:
        print(f"metainf-repro: warning: W&B mirror off ({reason}); results are still written to JSON",
              file=sys.stderr)
        self._run = None

    def start(self, name: str, group: str, config: Mapping[str, Any]) -> None:
        """Open the W&B run (no-op when disabled)."""
        if self.mode == "disabled":
            return
        try:
            import wandb
        except ImportError:
            self._off("wandb is not installed; pip install wandb")
            return
        os.environ.setdefault("WANDB_SILENT", "true")
        os.environ.setdefault("WANDB_CONSOLE", "off")
        os.environ.setdefault("WANDB_DISABLE_GIT", "true")
        self._wandb = wandb
        mode = "offline" if self.mode == "online" and _online_failed else self.mode
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            unreachable = server_unreachable(INIT_TIMEOUT_S) if mode == "online" else None
            if unreachable:
                raise ConnectionError(unreachable)
            self._run = self._init(name, group, config, mode)
            _service_up.append(True)
        except Exception as error:  # noqa: BLE001 - any W&B failure must not cost the result
            if mode != "online":
                self._off(f"wandb.init failed: {error}")
                return
            _online_failed.append(str(error))
            reason = " ".join(str(error).split())[:160] or type(error).__name__
            print(f"metainf-repro: warning: W&B online did not start (limit {INIT_TIMEOUT_S:g} s: {reason}); "
                  f"mirroring offline to {self.directory / 'wandb'} instead (upload later with wandb sync)",
                  file=sys.stderr)
            try:
                self._run = self._init(name, group, config, "offline")
                _service_up.append(True)
            except Exception as offline_error:  # noqa: BLE001
                self._off(f"wandb.init failed: {offline_error}")

    def _init(self, name: str, group: str, config: Mapping[str, Any], mode: str) -> Any:
        timeout = {"settings": self._wandb.Settings(init_timeout=INIT_TIMEOUT_S)} if mode == "online" else {}
        return self._wandb.init(project=self.project, name=name, group=group, config=dict(config), mode=mode,
                                dir=str(self.directory), reinit="create_new", **timeout)

    def log(self, metrics: Mapping[str, Any]) -> None:
        """Log a dict of scalars (W&B's own step increases by one per call)."""
        if not self.active:
            return
        try:
            self._run.log(dict(metrics))
        except Exception as error:  # noqa: BLE001
            self._off(f"log failed: {error}")

    def log_tables(self, tables: Mapping[str, Sequence[Mapping[str, Any]]], prefix: str) -> None:
        """Log every table (a list of row dicts) as a ``wandb.Table``."""
        if not self.active:
            return
        try:
            for name, rows in tables.items():
                columns = list(dict.fromkeys(key for row in rows for key in row))
                data = [[_cell(row.get(column)) for column in columns] for row in rows]
                self._run.log({f"{prefix}{name}": self._wandb.Table(columns=columns, data=data)})
        except Exception as error:  # noqa: BLE001
            self._off(f"table logging failed: {error}")

    def log_images(self, paths: Sequence[Path]) -> None:
        """Log PNG files as images, keyed by file stem."""
        if not self.active:
            return
        try:
            self._run.log({f"figures/{Path(p).stem}": self._wandb.Image(str(p)) for p in paths})
        except Exception as error:  # noqa: BLE001
            self._off(f"image logging failed: {error}")

    def summarize(self, values: Mapping[str, Any]) -> None:
        """Set run summary values."""
        if not self.active:
            return
        try:
            self._run.summary.update(dict(values))
        except Exception as error:  # noqa: BLE001
            self._off(f"summary failed: {error}")

    def finish(self) -> None:
        """Close the run."""
        if not self.active:
            return
        try:
            self._run.finish()
        except Exception as error:  # noqa: BLE001
            self._off(f"finish failed: {error}")
        self._run = None


def close_service() -> None:
    """End W&B's service process now, if a mirror of this process started it (``wandb.teardown``, which W&B
    recommends at the end of a session). Otherwise W&B's ``atexit`` hook ends it after the CLI has returned, where a
    Ctrl-C prints a traceback instead of the CLI's one line. A failure is one warning: the results are written."""
    if not _service_up:
        return
    _service_up.clear()
    try:
        sys.modules["wandb"].teardown()
    except Exception as error:  # noqa: BLE001 - the results are written; W&B's files are its own
        print(f"metainf-repro: warning: W&B did not shut down cleanly ({error}); results are still written to JSON",
              file=sys.stderr)


def server_unreachable(timeout: float) -> str | None:
    """Why the W&B server (``$WANDB_BASE_URL``, default https://api.wandb.ai) gives no HTTP answer within
    ``timeout`` seconds, or ``None`` when it answers (any status). Checked before ``wandb.init``: a server that
    never answers would otherwise keep wandb's service process busy for half a minute after the run."""
    url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            with urllib.request.urlopen(url, timeout=timeout):
                outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)  # it answered
        except (OSError, ValueError) as error:
            outcome.append(f"{url}: {getattr(error, 'reason', error)}")

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout)
    return outcome[0] if outcome else f"{url}: no answer within {timeout:g} s"


#: how the JSON results spell non-finite numbers (``replication.results.to_jsonable``)
_NON_FINITE = ("nan", "inf", "-inf")


def _cell(value: Any) -> Any:
    """W&B tables want scalars of one type per column: a non-finite number (spelled ``"nan"`` / ``"inf"`` in the
    results) becomes an empty cell (None), pooled cells ``{"mean", "std", "n"}`` and other structures become text."""
    if isinstance(value, str) and value in _NON_FINITE or isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
