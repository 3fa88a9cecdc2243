"""Each import contract (.importlinter) fails on a deliberate violation written into a throwaway
copy of the packages; the tree itself is never touched (tests/test_lint.py checks it keeps them)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools.import_contracts import _first_cycle

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("entrypoints", "ingest", "projections", "ledger", "testbed")


def lint_imports(root: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()"]
    for contract in contracts:
        command += ["--contract", contract]
    return subprocess.run(
        [*command, "--no-cache", "--no-logo"],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__")
    for package in PACKAGES:
        shutil.copytree(REPO / package, tmp_path / package, ignore=ignore)
    (tmp_path / "tools").mkdir()
    for name in ("__init__.py", "import_contracts.py"):
        shutil.copy(REPO / "tools" / name, tmp_path / "tools" / name)
    shutil.copy(REPO / ".importlinter", tmp_path / ".importlinter")
    assert lint_imports(tmp_path).returncode == 0  # the copy is as clean as the tree
    return tmp_path


@pytest.mark.parametrize(
    ("contract", "module", "source", "reported"),
    [
        # The core reaching up into the CLI.
        ("layers", "ledger/upward.py", "import entrypoints.cli.main\n", "ledger.upward ->"),
        # The domain opening a database connection.
        ("domain", "ledger/domain/sql.py", "import psycopg\n", "ledger.domain.sql -> psycopg"),
        # projections importing ingest, which imports projections.
        (
            "acyclic",
            "projections/loop.py",
            "import ingest.bridge\n",
            "ingest -> projections -> ingest",
        ),
        # The service starting a throwaway PostgreSQL of the test bench.
        (
            "testbed",
            "ledger/store/bench.py",
            "import testbed.postgres\n",
            "ledger.store.bench -> testbed.postgres",
        ),
        # The web console reading the store instead of calling the gRPC API.
        (
            "console",
            "entrypoints/console/shortcut.py",
            "import ledger.service\n",
            "entrypoints.console.shortcut -> ledger.service",
        ),
        # The audit CLI reading the store instead of calling the gRPC API.
        (
            "edge-clients",
            "entrypoints/cli/audit_remote.py",
            "import ledger.store\n",
            "entrypoints.cli.audit_remote -> ledger.store",
        ),
    ],
)
def test_each_contract_fails_on_a_violation(
    tree_copy: Path, contract: str, module: str, source: str, reported: str
) -> None:
    (tree_copy / module).write_text(source, encoding="utf-8")
    result = lint_imports(tree_copy, contract)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "0 kept, 1 broken." in result.stdout, result.stdout
    assert reported in result.stdout, result.stdout


def test_first_cycle_names_the_loop_and_accepts_a_dag() -> None:
    assert _first_cycle({"a": ["b"], "b": ["c"], "c": []}) is None
    assert _first_cycle({"a": ["b"], "b": ["c"], "c": ["b"]}) == ["b", "c", "b"]
