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
    # What is checked ([tool.mypy] files: the core, the edges and the Python client) and the
    # cache (.mypy_cache: a warm run takes well under a second)
    # live in pyproject.toml.
    result = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout, result.stdout


FIRST_PARTY = ("entrypoints", "ledger", "projections", "ingest", "testbed", "tools")
CLIENT = Path("clients/python/src/inventory_ledger_client")
IGNORES_MAX = 3


def test_type_ignores_are_few_and_explained() -> None:
    """At most three ``# type: ignore`` in code we write, each under a comment saying why."""
    found: list[str] = []
    sources = [p for top in FIRST_PARTY for p in (REPO / top).rglob("*.py")]
    sources += list((REPO / CLIENT).rglob("*.py"))
    for path in sources:
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines):
            if "# type: ignore" not in line:
                continue
            where = f"{path.relative_to(REPO)}:{number + 1}"
            found.append(where)
            assert number > 0 and lines[number - 1].strip().startswith("#"), (
                f"{where}: say why on the line above"
            )
    assert len(found) <= IGNORES_MAX, found


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
    contracts = (REPO / ".importlinter").read_text().count("[importlinter:contract:")
    assert f"Contracts: {contracts} kept, 0 broken." in result.stdout, result.stdout
