"""The Node.js client (clients/node) against a live ledger, and its generated stubs (issue 7).

Must show 2: the Node client test (clients/node/test/live.test.ts, run with ``node --test``)
records a receipt, reserves, and reads availability and the position against a ``ledger
serve`` this test starts; Python then reads the same position and availability back.

Method: ``tools.gen_protos.node_install`` runs ``npm ci`` in clients/node once (cached in its
git-ignored node_modules until package-lock.json changes), ``tsc`` compiles src/ and test/ to
dist/, and node runs the compiled tests. Staleness: ts-proto regenerates the stubs in a scratch
directory and they must equal clients/node/src/gen byte for byte; ``python -m
tools.gen_protos --check`` is the one command that checks every client. Without node or npm,
or with the registry unreachable, the tests fail when CI=true and are skipped elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from inventory.ledger.v1 import (
    availability_pb2,
    query_service_pb2,
    query_service_pb2_grpc,
)

from entrypoints.grpc.tokens import principal_entry
from testbed.server import LedgerProcess
from tools import gen_protos

NODE_DIR = gen_protos.NODE_DIR
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
NODE_TIMEOUT_SECONDS = 120
LOCATION = "DC-NODE"
NODE_TOKEN, ADMIN_TOKEN = "tok-node-client", "tok-node-admin"


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """The locked npm install of clients/node (npm ci on first use)."""
    try:
        return gen_protos.node_install()
    except gen_protos.NodeToolsUnavailable as error:
        if IN_CI:
            pytest.fail(f"node and the npm registry are required in CI for clients/node: {error}")
        pytest.skip(f"Node.js tooling unavailable (the tests run in CI): {error}")


@pytest.fixture(scope="module")
def built(node_modules: Path) -> Path:
    """clients/node compiled with tsc (src and test) into clients/node/dist."""
    tsc = node_modules / "typescript" / "bin" / "tsc"
    with gen_protos.node_lock():
        result = subprocess.run(
            [shutil.which("node") or "node", str(tsc), "-p", "tsconfig.json"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=NODE_TIMEOUT_SECONDS,
            check=False,
        )
    assert result.returncode == 0, "tsc failed:\n" + result.stdout + result.stderr
    return NODE_DIR / "dist"


def run_node_test(script: Path, env: dict[str, str] | None = None, minimum_passed: int = 5) -> str:
    """Run a compiled node:test file; it must pass with at least ``minimum_passed`` tests."""
    result = subprocess.run(
        [shutil.which("node") or "node", "--test", str(script)],
        cwd=NODE_DIR,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_SECONDS,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    passed = re.search(r"^# pass (\d+)$", output, re.MULTILINE)
    assert passed and int(passed[1]) >= minimum_passed and "# fail 0" in output, output
    return output


@pytest.fixture(params=["open", "bearer-token"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[LedgerProcess, str]]:
    """``ledger serve`` on SQLite, open or with a token file; yields it and the Node token."""
    extra_args = ["--log-format", "json"]
    token = ""
    if request.param == "bearer-token":
        tokens = tmp_path / "tokens.json"
        entries = [
            principal_entry(
                "node-client",
                NODE_TOKEN,
                ["query", "reserve", "record", "policy", "audit"],  # audit: traceLot
                ["web"],
            ),
            principal_entry("admin", ADMIN_TOKEN, ["admin"], rate_per_second=0),
        ]
        tokens.write_text(json.dumps({"principals": entries}))
        extra_args += ["--token-file", str(tokens)]
        token = NODE_TOKEN
    with LedgerProcess(f"sqlite:///{tmp_path / 'ledger.db'}", extra_args=extra_args) as process:
        yield process, token
        assert process.stop() == 0, process.log_text()


def test_node_client_reserves_and_reads_availability_against_a_live_server(
    built: Path, ledger: tuple[LedgerProcess, str]
):
    process, token = ledger
    sku = f"NODE-{uuid.uuid4().hex[:8]}"
    run_node_test(
        built / "test" / "live.test.js",
        {
            "LEDGER_ADDRESS": process.address,
            "LEDGER_TOKEN": token,
            "LEDGER_TEST_SKU": sku,
            "LEDGER_TEST_LOCATION": LOCATION,
        },
    )

    # The ledger itself says the Node client reserved: read back from Python.
    metadata = [("authorization", f"Bearer {ADMIN_TOKEN}")] if token else []
    queries = process.stub(query_service_pb2_grpc.InventoryQueryServiceStub)
    position = queries.GetPosition(
        query_service_pb2.GetPositionRequest(sku=sku, location_id=LOCATION, include_holds=True),
        metadata=metadata,
        timeout=10,
    )
    assert (position.on_hand, position.reserved, position.allocated, position.available) == (
        12,
        5,
        3,
        4,
    )
    assert {hold.channel for hold in position.holds} == {"web"}
    availability = queries.GetAvailability(
        query_service_pb2.GetAvailabilityRequest(
            sku=sku, channel="web", consistency=availability_pb2.CONSISTENCY_STRONG
        ),
        metadata=[*metadata, ("x-correlation-id", f"readback-{sku}")],
        timeout=10,
    )
    assert availability.channel_available == 4

    # Every call carried a correlation id; the test's own one reached the access log, and
    # with a token file every call of the Node client ran as its principal.
    def access_lines() -> list[dict[str, Any]]:
        return [
            json.loads(line)
            for line in process.log_text().splitlines()
            if line.startswith("{") and '"ledger.access"' in line
        ]

    # Written in order by a listener thread a moment after each answer: wait for the last.
    deadline = time.monotonic() + 10
    last = f"readback-{sku}"
    while time.monotonic() < deadline:
        if any(line["correlation_id"] == last for line in access_lines()):
            break
        time.sleep(0.05)
    access = access_lines()
    reserves = [line for line in access if line["method"].endswith("/Reserve")]
    assert any(line["correlation_id"].startswith("node-test-") for line in reserves), reserves
    if token:
        node_calls = [line for line in access if line["principal"] == "node-client"]
        assert len(node_calls) >= 10, access
        assert {line["code"] for line in node_calls} >= {"OK", "FAILED_PRECONDITION"}


def test_node_wrapper_retries_decodes_details_and_sets_deadlines(built: Path):
    """Against an in-process fake server: request_id and correlation id kept across
    UNAVAILABLE/ABORTED retries, google.rpc details decoded, deadlines end calls."""
    run_node_test(built / "test" / "wrapper.test.js")


# --- generated stubs ---------------------------------------------------------------------


def test_committed_node_stubs_are_fresh(node_modules: Path):
    """Regenerating with ts-proto reproduces clients/node/src/gen byte for byte."""
    problems = gen_protos.check_node()
    assert problems == [], "stale Node stubs; run `python -m tools.gen_protos`:\n" + "\n".join(
        problems
    )


def test_node_stubs_cover_every_proto_and_carry_the_header(node_modules: Path):
    owned = gen_protos.node_owned_files(gen_protos.NODE_OUT)
    for proto in gen_protos.proto_files():
        relative = proto.relative_to(gen_protos.PROTO_ROOT).with_suffix(".ts").as_posix()
        assert relative in owned, relative
    assert {"google/rpc/status.ts", "google/rpc/error_details.ts"} <= owned
    for relative in owned:
        text = (gen_protos.NODE_OUT / relative).read_text(encoding="utf-8")
        assert text.startswith(gen_protos.NODE_HEADER), relative


def test_one_command_checks_and_regenerates_every_client(node_modules: Path, tmp_path: Path):
    """``--check`` passes on the committed tree, fails naming a stale, a missing and an extra
    Node file in a tampered copy, and plain generation repairs the copy."""
    command = [sys.executable, "-m", "tools.gen_protos"]
    environment = {**os.environ, "PYTHONPATH": str(gen_protos.REPO_ROOT)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, *args],
            cwd=gen_protos.REPO_ROOT,
            env=environment,
            capture_output=True,
            text=True,
            timeout=NODE_TIMEOUT_SECONDS,
            check=False,
        )

    fresh = run("--check")
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr

    copy = tmp_path / "gen"
    shutil.copytree(gen_protos.NODE_OUT, copy)
    service = copy / "inventory/ledger/v1/reservation_service.ts"
    service.write_text(service.read_text(encoding="utf-8") + "// hand edit\n", encoding="utf-8")
    (copy / "inventory/ledger/v1/position.ts").unlink()
    (copy / "inventory/ledger/v1/leftover.ts").write_text("// old\n", encoding="utf-8")

    stale = run("--check", "--node-out", str(copy))
    assert stale.returncode == 1, stale.stdout + stale.stderr
    for line in (
        f"stale: {copy}/inventory/ledger/v1/reservation_service.ts",
        f"missing: {copy}/inventory/ledger/v1/position.ts",
        f"extra: {copy}/inventory/ledger/v1/leftover.ts",
    ):
        assert line in stale.stderr, stale.stderr

    repaired = run("--only", "node", "--node-out", str(copy))
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert run("--check", "--only", "node", "--node-out", str(copy)).returncode == 0
    assert gen_protos.node_owned_files(copy) == gen_protos.node_owned_files(gen_protos.NODE_OUT)
