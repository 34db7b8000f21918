"""The replication harness: runner CLI (``metainf-repro``), result files, W&B mirror, figures, report, regression check.

Results in ``results/<EXP>/<dataset>-<scale>.json`` are the single source of truth; figures, ``REPRODUCE.md`` and the
W&B mirror are derived from them.
"""
