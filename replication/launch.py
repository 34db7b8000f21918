"""The ``metainf-repro`` console script: loads the CLI, so that Ctrl-C while its modules (torch, scipy, ...) load
is one line and exit 130 too, as it is once :func:`replication.cli.main` runs."""

from __future__ import annotations

import sys


def main() -> int:
    """Import :mod:`replication.cli` and run its ``main``; exit status 130 if interrupted while importing."""
    try:
        from replication.cli import main as cli_main
    except KeyboardInterrupt:
        print("metainf-repro: interrupted while starting; nothing was written", file=sys.stderr)
        return 130
    return cli_main()
