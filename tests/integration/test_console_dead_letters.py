"""The console's dead letters (issue 21, operations page): ``ledger console --nats`` lists the
DLQ newest first and shows one dead letter with its payload (escaped) and headers; read-only.

Method: a real nats-server (the ``nats_url`` fixture, a unique stream prefix), a real
``ledger serve`` (SQLite, token file) and a real ``ledger ingest`` on the same database; one
valid and two invalid movement messages are published the way producers do
(``publish_movement``, and raw bytes for the one that is not JSON). Once both dead letters are
in the DLQ, real ``ledger console`` processes (with ``--nats``, without it, and with a NATS
URL nobody answers) are read over HTTP; values come from ``data-*`` attributes. The DLQ's own
contents, read with ``ingest.dlq``, are the reference.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from inventory_ledger_client import LedgerClient

from entrypoints.grpc.tokens import principal_entry
from ingest import bridge, dlq, dlq_headers
from ingest.bridge import publish_movement
from ingest.streams import StreamNames, delete_topology, ensure_topology
from testbed.console import ConsoleProcess
from testbed.server import LedgerProcess
from tests.integration.console_http import HttpSession
from tests.integration.test_console import elements
from tests.test_import_contracts import lint_imports, tree_copy

__all__ = ["tree_copy"]  # the fixture, for the contract test below

TOKENS = {"reader": "tok-dl-reader", "auditor": "tok-dl-auditor", "admin": "tok-dl-admin"}
SOURCE = "wms-dl"
SKU, LOCATION = "SKU-DL", "DC-DL"
HTML_QTY = '<img src=x onerror="alert(1)">'
BAD_JSON = b'<script>alert("dl")</script>{"message_id": "dl-3", '


async def _with_js(url: str, body: Callable[[Any], Awaitable[Any]]) -> Any:
    nc = await nats.connect(url)
    try:
        return await body(nc.jetstream())
    finally:
        await nc.drain()


def _signed_in(console: ConsoleProcess, who: str) -> HttpSession:
    browser = HttpSession(console.url)
    form = browser.get("/sign-in")
    answer = browser.post(
        "/sign-in", {"csrf_token": form.csrf_token(), "token": TOKENS[who], "next": ""}
    )
    assert answer.status == 303, answer.text
    return browser


def _cell(row_html: str, row: dict[str, Any], field: str) -> str:
    """The text of ``data-field=field`` inside the row element ``row``."""
    [cell] = [
        cell for cell in elements(row_html, data_field=field) if row["attrs"] in cell["parents"]
    ]
    return str(cell["text"]).strip()


def test_dlq_readers_use_the_bridges_header_names() -> None:
    """Goal: ingest.dlq (and the console through it) reads the headers the bridge writes."""
    for name in (
        "HEADER_REASON",
        "HEADER_FIELD",
        "HEADER_DESCRIPTION",
        "HEADER_SUBJECT",
        "HEADER_SEQUENCE",
        "HEADER_MSG_ID",
        "MSG_ID",
    ):
        assert getattr(bridge, name) == getattr(dlq_headers, name), name


@pytest.mark.slow
def test_the_dlq_reader_contract_fails_when_ingest_dlq_imports_the_bridge(
    tree_copy: Path,
) -> None:
    """Goal: the console's one way into ingest cannot quietly pull in the bridge (and through
    it the ledger's internals): the dlq-reader contract breaks."""
    module = tree_copy / "ingest" / "dlq.py"
    module.write_text(module.read_text() + "\nimport ingest.bridge\n", encoding="utf-8")
    result = lint_imports(tree_copy, "dlq-reader")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "ingest.dlq -> ingest.bridge" in result.stdout, result.stdout


@pytest.fixture(scope="module")
def names() -> StreamNames:
    return StreamNames(f"T_{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, nats_server: Any, names: StreamNames
) -> Iterator[tuple[LedgerProcess, str]]:
    """``ledger serve`` and ``ledger ingest`` on one database, with the three messages applied
    or dead-lettered; yields the ledger and the NATS URL."""
    nats_url = nats_server.url
    root = tmp_path_factory.mktemp("console-dlq")
    tokens = root / "tokens.json"
    entries = [
        principal_entry("reader", TOKENS["reader"], ["query"]),
        principal_entry("auditor", TOKENS["auditor"], ["audit"]),
        principal_entry("admin", TOKENS["admin"], ["admin"], rate_per_second=0),
    ]
    tokens.write_text(json.dumps({"principals": entries}))
    database = f"sqlite:///{root / 'ledger.db'}"
    log_path = root / "ingest.log"
    with LedgerProcess(database, extra_args=["--token-file", str(tokens)]) as ledger:
        command = [sys.executable, "-m", "entrypoints.cli", "ingest", "--nats", nats_url]
        command += ["--database", database, "--prefix", names.prefix]
        with log_path.open("wb") as log_file:
            ingest = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            base = {"source": SOURCE, "sku": SKU, "location_id": LOCATION, "type": "receipt"}

            async def publish(js: Any) -> int:
                await ensure_topology(js, names)  # binds to what ingest creates
                await publish_movement(js, {**base, "message_id": "dl-1", "qty": 5}, names.prefix)
                await publish_movement(
                    js, {**base, "message_id": "dl-2", "qty": HTML_QTY}, names.prefix
                )
                await js.publish(
                    names.movement_subject(SOURCE),
                    BAD_JSON,
                    headers={dlq_headers.MSG_ID: "dl-3"},
                    stream=names.movements_stream,
                )
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    with_dead = await js.stream_info(names.dlq_stream)
                    if with_dead.state.messages >= 2:
                        return int(with_dead.state.messages)
                    await asyncio.sleep(0.1)
                raise AssertionError(log_path.read_text())

            assert asyncio.run(_with_js(nats_url, publish)) == 2
            with LedgerClient(ledger.address, token=TOKENS["admin"]) as client:
                deadline = time.monotonic() + 30
                while client.get_position(SKU, LOCATION).on_hand != 5:
                    assert time.monotonic() < deadline, log_path.read_text()
                    time.sleep(0.1)
            yield ledger, nats_url
        finally:
            ingest.terminate()
            ingest.wait(15)

            async def clean(js: Any) -> None:
                await delete_topology(js, names)

            asyncio.run(_with_js(nats_url, clean))


@pytest.fixture(scope="module")
def console(stack: tuple[LedgerProcess, str], names: StreamNames) -> Iterator[ConsoleProcess]:
    ledger, nats_url = stack
    extra = ["--nats", nats_url, "--nats-prefix", names.prefix]
    with ConsoleProcess(ledger.address, extra_args=extra) as process:
        yield process


def _reference(nats_url: str, names: StreamNames) -> list[dlq.DeadLetterMessage]:
    """The DLQ's contents, oldest first, with payloads and headers."""

    async def read_all(js: Any) -> list[dlq.DeadLetterMessage]:
        entries = await dlq.list_dead_letters(js, names.prefix)
        return [await dlq.read(js, names.prefix, entry.sequence) for entry in entries]

    result: list[dlq.DeadLetterMessage] = asyncio.run(_with_js(nats_url, read_all))
    return result


@pytest.mark.slow
def test_operations_page_lists_exactly_the_two_dead_letters_newest_first(
    stack: tuple[LedgerProcess, str], names: StreamNames, console: ConsoleProcess
) -> None:
    reference = _reference(stack[1], names)
    assert [m.entry.reason for m in reference] == ["WRONG_TYPE", "BAD_JSON"]
    browser = _signed_in(console, "reader")
    for path in ("/operations", "/operations/dead-letters"):
        answer = browser.get(path)
        assert answer.status == 200, (path, answer.text)
        [section] = elements(answer.text, id="dead-letters")
        assert section["attrs"]["data-enabled"] == "true"
        rows = [row for row in elements(answer.text, data_sequence="*") if row["tag"] == "tr"]
        assert [int(row["attrs"]["data-sequence"]) for row in rows] == [
            m.entry.sequence for m in reversed(reference)
        ], path
        for row, message in zip(rows, reversed(reference), strict=True):
            entry = message.entry
            assert row["attrs"]["data-reason"] == entry.reason
            assert _cell(answer.text, row, "reason") == entry.reason
            assert _cell(answer.text, row, "field") == (entry.field or "")
            assert _cell(answer.text, row, "message_id") == entry.original_msg_id
            assert _cell(answer.text, row, "original_subject") == names.movement_subject(SOURCE)
            assert _cell(answer.text, row, "received_at").startswith(entry.received_at[:19])
            assert f'href="/operations/dead-letters/{entry.sequence}"' in answer.text
        assert [_cell(answer.text, row, "message_id") for row in rows] == ["dl-3", "dl-2"]
        assert "dead-letters-older" not in answer.text  # one page holds both


@pytest.mark.slow
def test_detail_page_shows_each_payload_escaped_and_its_headers(
    stack: tuple[LedgerProcess, str], names: StreamNames, console: ConsoleProcess
) -> None:
    reference = _reference(stack[1], names)
    browser = _signed_in(console, "reader")
    expected_text = {
        "WRONG_TYPE": json.dumps(json.loads(reference[0].payload), indent=2, ensure_ascii=False),
        "BAD_JSON": BAD_JSON.decode(),
    }
    for message in reference:
        entry = message.entry
        answer = browser.get(f"/operations/dead-letters/{entry.sequence}")
        assert answer.status == 200, answer.text
        [section] = elements(answer.text, id="dead-letter")
        assert section["attrs"]["data-reason"] == entry.reason
        [payload] = elements(answer.text, id="dead-letter-payload")
        assert payload["text"] == expected_text[str(entry.reason)]
        assert payload["attrs"]["data-format"] == (
            "json" if entry.reason == "WRONG_TYPE" else "text"
        )
        # The payload's HTML arrives as text, never as markup.
        assert "<script>" not in answer.text
        assert "<img" not in answer.text
        shown = {
            row["attrs"]["data-header"]: _cell(answer.text, row, "value")
            for row in elements(answer.text, data_header="*")
        }
        assert shown == {name: value.strip() for name, value in message.headers.items()}
        assert shown[dlq_headers.HEADER_REASON] == entry.reason
    first = browser.get(f"/operations/dead-letters/{reference[0].entry.sequence}").text
    assert "&lt;img src=x onerror=" in first
    second = browser.get(f"/operations/dead-letters/{reference[1].entry.sequence}").text
    assert "&lt;script&gt;alert(" in second

    missing = browser.get(f"/operations/dead-letters/{reference[-1].entry.sequence + 100}")
    assert missing.status == 404
    # Read-only: looking changed nothing in the DLQ.
    assert _reference(stack[1], names) == reference


@pytest.mark.slow
def test_dead_letters_need_the_operations_pages_scope(console: ConsoleProcess) -> None:
    browser = _signed_in(console, "auditor")
    for path in ("/operations/dead-letters", "/operations/dead-letters/1"):
        answer = browser.get(path)
        assert answer.status == 403, (path, answer.status)
        [scope] = elements(answer.text, id="missing-scope")
        assert scope["attrs"]["data-scope"] == "query"
        assert "dead-letter-payload" not in answer.text


@pytest.mark.slow
def test_newest_first_paging_walks_back_to_the_oldest(
    stack: tuple[LedgerProcess, str], names: StreamNames
) -> None:
    async def pages(js: Any) -> list[tuple[list[int], int | None]]:
        walked: list[tuple[list[int], int | None]] = []
        before: int | None = None
        while True:
            entries, before = await dlq.newest_dead_letters(js, names.prefix, before, limit=1)
            walked.append(([entry.sequence for entry in entries], before))
            if before is None:
                return walked

    sequences = [m.entry.sequence for m in _reference(stack[1], names)]
    walked = asyncio.run(_with_js(stack[1], pages))
    assert walked == [([sequences[1]], sequences[1]), ([sequences[0]], None)]


@pytest.mark.slow
def test_without_nats_the_page_says_how_and_a_dead_server_is_a_block_not_a_500(
    stack: tuple[LedgerProcess, str],
) -> None:
    ledger, _ = stack
    with ConsoleProcess(ledger.address, env={"LEDGER_NATS_URL": ""}) as plain:
        browser = _signed_in(plain, "reader")
        answer = browser.get("/operations")
        assert answer.status == 200
        [off] = elements(answer.text, id="dead-letters-off")
        assert "--nats" in off["text"]
        assert not elements(answer.text, id="dead-letters-table")
    # Port 1 on loopback: nothing listens there.
    with ConsoleProcess(ledger.address, extra_args=["--nats", "nats://127.0.0.1:1"]) as broken:
        browser = _signed_in(broken, "reader")
        for path in ("/operations", "/operations/dead-letters", "/operations/dead-letters/1"):
            answer = browser.get(path)
            assert answer.status == 200, (path, answer.status)
            [block] = elements(answer.text, id="dead-letters-unavailable")
            assert block["text"].startswith("dead letters unavailable: cannot reach NATS"), block
