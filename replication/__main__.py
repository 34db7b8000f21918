"""``python -m replication`` is ``metainf-repro``."""

from replication.cli import main

raise SystemExit(main())
