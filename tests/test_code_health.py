"""Code health checks that CI runs with the test suite: types, lint, and the docs build."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), cwd=ROOT, capture_output=True, text=True, timeout=600)


def require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install -e '.[test,docs]')")


def test_mypy_strict_is_clean() -> None:
    require("mypy")
    result = run(sys.executable, "-m", "mypy", "--strict", "followtheleader")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_is_clean() -> None:
    require("ruff")
    result = run(sys.executable, "-m", "ruff", "check", "followtheleader", "tests", "benchmarks")
    assert result.returncode == 0, result.stdout + result.stderr


def test_docs_build_without_warnings(tmp_path: object) -> None:
    require("sphinx")
    result = run(sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", "docs", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
