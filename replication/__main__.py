"""``python -m replication`` is ``metainf-repro``."""

from replication.launch import main

raise SystemExit(main())
