"""Source style that a reader sees at a glance: no line of the project's Python is longer than 120 characters."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("metainf", "experiments", "replication", "scripts", "tests")
MAX_LINE = 120


def long_lines(root: Path = ROOT, limit: int = MAX_LINE) -> list[str]:
    """``path:line (length)`` of every line over ``limit`` characters in the packages' ``.py`` files."""
    out = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if len(line) > limit:
                    out.append(f"{path.relative_to(root)}:{number} ({len(line)})")
    return out


def test_no_python_line_is_longer_than_120_characters() -> None:
    found = long_lines()
    assert not found, f"{len(found)} lines over {MAX_LINE} characters: " + ", ".join(found)


def test_the_check_finds_a_long_line(tmp_path: Path) -> None:
    (tmp_path / "metainf").mkdir()
    (tmp_path / "metainf" / "m.py").write_text("x = 1\n" + "#" * (MAX_LINE + 1) + "\n", encoding="utf-8")
    assert long_lines(tmp_path) == [f"metainf/m.py:2 ({MAX_LINE + 1})"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_is_there(package: str) -> None:
    assert (ROOT / package).is_dir()
