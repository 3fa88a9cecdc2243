"""Tests for the NATS test support (testbed/nats.py, tests/conftest.py)."""

from __future__ import annotations

import asyncio
import uuid

import nats
import pytest
from nats.js.api import StorageType

from testbed.nats import ENV_URL, EmbeddedNats, nats_url_from_env_or_embedded


def _names() -> tuple[str, str]:
    """A unique stream name and subject prefix (tests share the session server)."""
    tag = uuid.uuid4().hex[:12]
    return f"T_{tag}", f"t.{tag}"


def test_publish_and_fetch_with_durable_pull_consumer(nats_url: str) -> None:
    stream, prefix = _names()

    async def scenario() -> None:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        try:
            await js.add_stream(name=stream, subjects=[f"{prefix}.>"], storage=StorageType.FILE)
            ack = await js.publish(f"{prefix}.a", b'{"qty": 3}')
            assert (ack.stream, ack.seq, ack.duplicate) == (stream, 1, None)

            sub = await js.pull_subscribe(f"{prefix}.>", durable="worker", stream=stream)
            [msg] = await sub.fetch(1, timeout=5)
            assert (msg.subject, msg.data) == (f"{prefix}.a", b'{"qty": 3}')
            assert msg.metadata.sequence.stream == 1
            assert msg.metadata.num_delivered == 1
            await msg.ack_sync()

            info = await js.consumer_info(stream, "worker")
            assert info.ack_floor.stream_seq == 1
            assert info.num_ack_pending == 0
            assert info.num_pending == 0
        finally:
            await js.delete_stream(stream)
            await nc.close()

    asyncio.run(scenario())


def test_msg_id_is_deduplicated_within_the_window(nats_url: str) -> None:
    stream, prefix = _names()

    async def scenario() -> None:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        try:
            await js.add_stream(name=stream, subjects=[f"{prefix}.>"], duplicate_window=120.0)
            headers = {"Nats-Msg-Id": "wms-east-000123"}
            first = await js.publish(f"{prefix}.m", b"one", headers=headers)
            second = await js.publish(f"{prefix}.m", b"two", headers=headers)
            other = await js.publish(f"{prefix}.m", b"three", headers={"Nats-Msg-Id": "x-2"})
            assert not first.duplicate
            assert second.duplicate is True
            assert second.seq == first.seq  # the ack names the original message
            assert not other.duplicate and other.seq == first.seq + 1
            info = await js.stream_info(stream)
            assert info.state.messages == 2
            stored = await js.get_msg(stream, first.seq)
            assert stored.data == b"one"
        finally:
            await js.delete_stream(stream)
            await nc.close()

    asyncio.run(scenario())


def test_kill_and_restart_keeps_acknowledged_messages() -> None:
    stream, prefix = "DURABLE", "durable"

    async def publish(url: str) -> None:
        nc = await nats.connect(url)
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"{prefix}.>"], storage=StorageType.FILE)
        await js.pull_subscribe(f"{prefix}.>", durable="worker", stream=stream)
        ack = await js.publish(f"{prefix}.x", b"survives", headers={"Nats-Msg-Id": "m-1"})
        assert (ack.seq, ack.duplicate) == (1, None)
        await nc.close()

    async def fetch(url: str) -> None:
        nc = await nats.connect(url)
        js = nc.jetstream()
        info = await js.stream_info(stream)
        assert info.state.messages == 1
        sub = await js.pull_subscribe(f"{prefix}.>", durable="worker", stream=stream)
        [msg] = await sub.fetch(1, timeout=5)
        assert (msg.subject, msg.data, msg.header) == (
            f"{prefix}.x",
            b"survives",
            {"Nats-Msg-Id": "m-1"},
        )
        await msg.ack_sync()
        await nc.close()

    with EmbeddedNats() as server:
        url, store = server.url, server.store_dir
        asyncio.run(publish(url))
        server.kill()  # SIGKILL right after the publish ack: no flush on shutdown
        assert not server.running
        server.restart()
        assert (server.url, server.store_dir) == (url, store)
        asyncio.run(fetch(url))
    assert server.base_dir is None  # cleanup() deleted the store


def test_config_sets_sync_interval_always() -> None:
    with EmbeddedNats(max_payload=2 * 1024 * 1024) as server:
        config = server.config_path.read_text()
        assert "sync_interval: always" in config
        assert str(server.store_dir) in config

        async def max_payload() -> int:
            nc = await nats.connect(server.url)
            try:
                return nc.max_payload
            finally:
                await nc.close()

        assert asyncio.run(max_payload()) == 2 * 1024 * 1024


def test_env_url_is_used_as_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_URL, "nats://example.invalid:4222")
    assert nats_url_from_env_or_embedded() == "nats://example.invalid:4222"
