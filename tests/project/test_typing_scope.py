"""What ``make typecheck`` covers: mypy strict over the package, the tests, the benchmarks
and the examples (issue 13), and every ``type: ignore`` left names its error code.

Reads files only (no mypy run: ``make typecheck`` does that); well under a second."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECKED = ("tiercache", "tests", "bench", "examples")


def test_mypy_checks_the_package_tests_bench_and_examples() -> None:
    mypy = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert mypy["strict"] is True, "pyproject.toml [tool.mypy]: strict must stay on"
    assert mypy["warn_unused_ignores"] is True, (
        "pyproject.toml [tool.mypy]: warn_unused_ignores must stay on")
    missing = [name for name in CHECKED if name not in mypy["files"]]
    assert not missing, f"pyproject.toml [tool.mypy] files lacks {missing}: {mypy['files']}"


def test_every_type_ignore_names_its_error_code() -> None:
    bare = re.compile(r"#\s*type:\s*ignore(?!\[[a-z-]+(,\s*[a-z-]+)*\])")
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
             for folder in CHECKED
             for path in sorted((ROOT / folder).rglob("*.py"))
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if bare.search(line) and path.name != "test_typing_scope.py"]
    assert not found, "a type: ignore without its error code:\n" + "\n".join(found)
