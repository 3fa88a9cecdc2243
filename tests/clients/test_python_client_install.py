"""Issue 7, must show 1: from a fresh virtualenv, ``pip install ./clients/python`` alone (no
server package) lets a script reserve, commit and release against a running server.

Method: ``python -m venv`` (without system site packages) in a temporary directory; a copy of
``clients/python`` is installed from a directory laid out like the repository (so the build
writes nothing into this checkout and may only use files under ``clients/python``), with
``pip install ./clients/python`` and pip's configured index. The venv must then be unable to
import the server (``ledger``, ``projections``, ``ingest``), have no ``inventory-ledger``
distribution and none of the server's own dependencies; its Python runs
``examples/reserve_commit_release.py`` against a real ``ledger serve``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.server import LedgerProcess

pytestmark = pytest.mark.slow

CLIENT_DIR = Path(__file__).resolve().parent.parent.parent / "clients" / "python"
INSTALL_TIMEOUT = 300  # seconds; pip resolves grpcio & co. from the configured index


def clean_env() -> dict[str, str]:
    """This process's environment (pip's index settings) without anything that would leak
    the repository or this interpreter's packages into the venv."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", "PIP_USER"}
    }
    env["PYTHONNOUSERSITE"] = "1"
    return env


def run(command: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_pip_install_client_alone_reserves_commits_and_releases(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    created = run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    python = venv / "bin" / "python"

    checkout = tmp_path / "checkout"
    shutil.copytree(
        CLIENT_DIR,
        checkout / "clients" / "python",
        ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__"),
    )
    installed = run(
        [str(python), "-m", "pip", "install", "./clients/python"],
        cwd=checkout,
        timeout=INSTALL_TIMEOUT,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert "Successfully installed" in installed.stdout

    # The server package is absent; only the client and its runtime dependencies are there.
    probe = run(
        [
            str(python),
            "-c",
            "import importlib.metadata as m, importlib.util as u, sys\n"
            "assert sys.prefix != sys.base_prefix\n"
            "print('absent', *[n for n in ('ledger', 'projections', 'ingest', 'tools')"
            " if u.find_spec(n) is None])\n"
            "print('dists', *sorted(d.metadata['Name'].lower().replace('_', '-')"
            " for d in m.distributions()))\n"
            "import inventory_ledger_client, inventory.ledger.v1.reservation_service_pb2_grpc\n"
            "print('client', inventory_ledger_client.__file__)\n",
        ],
        cwd=tmp_path,
    )
    assert probe.returncode == 0, probe.stderr
    lines = dict(line.split(" ", 1) for line in probe.stdout.splitlines())
    assert lines["absent"].split() == ["ledger", "projections", "ingest", "tools"]
    dists = set(lines["dists"].split())
    assert "inventory-ledger" not in dists
    assert {"inventory-ledger-client", "grpcio", "grpcio-status", "protobuf"} <= dists
    assert "googleapis-common-protos" in dists
    server_only = {  # the server's dependencies that the client does not need
        "eventsourcing",
        "psycopg",
        "pydantic",
        "nats-py",
        "prometheus-client",
        "grpcio-health-checking",
        "grpcio-reflection",
    }
    assert not dists & server_only, dists
    assert lines["client"].startswith(str(venv)), lines["client"]

    with LedgerProcess(f"sqlite:///{tmp_path / 'ledger.db'}") as server:
        example = checkout / "clients" / "python" / "examples" / "reserve_commit_release.py"
        result = run([str(python), str(example), "--target", server.address], cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        out = result.stdout
        assert re.search(r"^received sku=EXAMPLE-\w+ on_hand=10$", out, re.M), out
        assert re.search(r"^reserved id=\S+ status=ACTIVE reserved=4 available=6$", out, re.M), out
        assert "committed status=COMMITTED allocated=4 available=6" in out, out
        assert "released status=RELEASED reserved=0 allocated=0 available=10" in out, out
        assert re.search(r"^short sku=EXAMPLE-\w+ requested=99 available=10 ", out, re.M), out
        assert server.stop() == 0, server.log_text()
