"""Style is part of the build: ruff lint and format checks over every Python file we own."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _ruff(*args: str) -> subprocess.CompletedProcess[str]:
    command = [shutil.which("ruff") or sys.executable, *args]
    if command[0] == sys.executable:
        command[1:1] = ["-m", "ruff"]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)


@pytest.mark.parametrize("args", [("check", "."), ("format", "--check", ".")])
def test_ruff_is_clean(args: tuple[str, ...]) -> None:
    result = _ruff(*args)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_reports_no_errors() -> None:
    # What is checked ([tool.mypy] files: the core, projections, ingest and the Python client;
    # entrypoints/ not yet) and the cache (.mypy_cache: a warm run takes well under a second)
    # live in pyproject.toml.
    result = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout, result.stdout


def test_import_contracts_are_kept() -> None:
    # .importlinter: layers, the domain free of infrastructure, no package cycles;
    # tests/test_import_contracts.py shows each one failing on a violation.
    lint_imports = shutil.which("lint-imports")
    assert lint_imports, "lint-imports (import-linter, the test extra) is not installed"
    result = subprocess.run(
        [lint_imports, "--no-cache", "--no-logo"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken." in result.stdout, result.stdout
