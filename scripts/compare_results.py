"""Compare every non-timing numeric leaf of two results folders (``metainf-repro all --out A`` and ``--out B``).

    python scripts/compare_results.py A B [--show 20]

A leaf is a number (bool excluded) anywhere in a result JSON, named by its path. Skipped as timing-derived: the
``provenance`` block and any leaf whose path has a component naming a time, a memory measurement or a ratio of
times (``*_s``, ``seconds``, ``runtime``, ``speedup``, ``peak``, ``rss``, ``*_mb``, ``epochs``, ``slope``, E5's
``growth_exponent`` of time vs tasks, ``grad_passes``: time over one gradient pass, E4's ``*_ratios``: the timed
repeats in meta-epochs) or chosen by wall time (E4's ``best`` and ``best_*``: the fastest configuration within a
margin; ``*_pareto``: whether a configuration is on the accuracy-cost frontier).
Numbers are compared exactly (NaN equals NaN). Prints the count compared and the count that differ (with the first
``--show`` of them); exit status 1 if any differ or a result file is missing on one side.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TIMING = re.compile(r"(_s$|^s$|seconds|runtime|speedup|peak|rss|_mb$|epochs|slope|growth_exponent|grad_passes|"
                    r"_ratios$|pareto|(^|\.)best(\.|_|$)|^provenance$)")


def leaves(x: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], float]]:
    """(path, number) for every numeric leaf of a JSON value."""
    if isinstance(x, dict):
        for k, v in x.items():
            yield from leaves(v, (*path, str(k)))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from leaves(v, (*path, f"[{i}]"))
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        yield path, float(x)


def timing(path: tuple[str, ...]) -> bool:
    return any(TIMING.search(part) for part in path)


def same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--show", type=int, default=20)
    args = parser.parse_args(argv)
    for folder in (args.before, args.after):
        if not folder.is_dir():
            parser.error(f"{folder} is not a folder of results (E*/<dataset>-<scale>.json)")
    files = sorted(p.relative_to(args.before) for p in args.before.glob("E*/*.json"))
    if not files:
        parser.error(f"{args.before} holds no result files (E*/*.json): nothing to compare")
    compared, differ, missing = 0, [], []
    for rel in files:
        other = args.after / rel
        if not other.exists():
            missing.append(str(rel))
            continue
        a = dict(leaves(json.loads((args.before / rel).read_text())))
        b = dict(leaves(json.loads(other.read_text())))
        for path in sorted(set(a) | set(b)):
            if timing(path):
                continue
            compared += 1
            if path not in a or path not in b or not same(a[path], b[path]):
                differ.append(f"{rel}: {'/'.join(path)}: {a.get(path)} -> {b.get(path)}")
    missing += [str(p.relative_to(args.after)) for p in args.after.glob("E*/*.json")
                if not (args.before / p.relative_to(args.after)).exists()]
    print(f"{len(files)} result files, {compared} non-timing numbers compared, {len(differ)} differ"
          + (f", missing on one side: {missing}" if missing else ""))
    for line in differ[: args.show]:
        print("  " + line)
    return 1 if differ or missing else 0


if __name__ == "__main__":
    sys.exit(main())
