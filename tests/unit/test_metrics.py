"""The RPC metrics' status codes (the call guard's wrapper, as ``ledger serve`` registers it),
the /metrics endpoint's lifecycle, and the bounded values of the ``channel`` and ``source``
labels."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from entrypoints.grpc.auth import CallGuard, GuardedServer
from ledger.config import ConfigError
from ledger.metrics.definitions import REGISTRY
from ledger.metrics.endpoint import parse_listen, start_endpoint
from ledger.metrics.labels import OTHER, BoundedValues, parse_label_list

SERVICE = "test.v1.Probe"


def count(method: str, code: str, service: str = SERVICE) -> float:
    value = REGISTRY.get_sample_value(
        "ledger_rpc_duration_seconds_count", {"service": service, "method": method, "code": code}
    )
    return value or 0.0


def in_flight(method: str, service: str = SERVICE) -> float:
    value = REGISTRY.get_sample_value(
        "ledger_rpc_in_flight", {"service": service, "method": method}
    )
    return value or 0.0


async def _ok(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def _abort(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    return b""


async def _boom(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise ValueError("a bug")


async def _slow(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await asyncio.sleep(5)
    return request


async def _stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for _ in range(3):
        yield request


async def _stream_abort(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield request
    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many")


def _handlers() -> grpc.GenericRpcHandler:
    unary = grpc.unary_unary_rpc_method_handler
    stream = grpc.unary_stream_rpc_method_handler
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Ok": unary(_ok),
            "Abort": unary(_abort),
            "Boom": unary(_boom),
            "Slow": unary(_slow),
            "Stream": stream(_stream),
            "StreamAbort": stream(_stream_abort),
        },
    )


async def _scenario() -> dict[str, Any]:
    server = GuardedServer(grpc.aio.server(), CallGuard())
    server.add_generic_rpc_handlers((_handlers(),))
    health_servicer = health.aio.HealthServicer()  # Watch writes with context.write
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    codes: dict[str, Any] = {}
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:

            async def unary(method: str, timeout: float = 5) -> grpc.StatusCode:
                try:
                    await channel.unary_unary(f"/{SERVICE}/{method}")(b"x", timeout=timeout)
                except grpc.aio.AioRpcError as error:
                    return error.code()
                return grpc.StatusCode.OK

            async def stream(method: str) -> tuple[int, grpc.StatusCode]:
                received = 0
                try:
                    async for _ in channel.unary_stream(f"/{SERVICE}/{method}")(b"x", timeout=5):
                        received += 1
                except grpc.aio.AioRpcError as error:
                    return received, error.code()
                return received, grpc.StatusCode.OK

            codes["Ok"] = [await unary("Ok") for _ in range(3)]
            codes["Abort"] = await unary("Abort")
            codes["Boom"] = await unary("Boom")
            codes["Slow"] = await unary("Slow", timeout=0.2)
            codes["Stream"] = await stream("Stream")
            codes["StreamAbort"] = await stream("StreamAbort")
            codes["Unimplemented"] = await unary("Nope")
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            await watch.read()
            codes["watching"] = in_flight("Watch", "grpc.health.v1.Health")
            watch.cancel()
            for _ in range(100):  # the server sees the cancellation a moment later
                if count("Watch", "CANCELLED", "grpc.health.v1.Health"):
                    break
                await asyncio.sleep(0.02)
            for _ in range(100):
                if count("Slow", "DEADLINE_EXCEEDED"):
                    break
                await asyncio.sleep(0.02)
    finally:
        await server.stop(0)
    return codes


def test_interceptor_labels_every_call_with_its_final_status() -> None:
    codes = asyncio.run(_scenario())
    assert codes["Ok"] == [grpc.StatusCode.OK] * 3
    assert codes["Abort"] == grpc.StatusCode.NOT_FOUND
    assert codes["Boom"] == grpc.StatusCode.UNKNOWN
    assert codes["Slow"] == grpc.StatusCode.DEADLINE_EXCEEDED
    assert codes["Stream"] == (3, grpc.StatusCode.OK)
    assert codes["StreamAbort"] == (1, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert codes["Unimplemented"] == grpc.StatusCode.UNIMPLEMENTED
    assert codes["watching"] == 1

    assert count("Ok", "OK") == 3
    assert count("Abort", "NOT_FOUND") == 1
    assert count("Boom", "UNKNOWN") == 1
    assert count("Slow", "DEADLINE_EXCEEDED") == 1
    assert count("Stream", "OK") == 1
    assert count("StreamAbort", "RESOURCE_EXHAUSTED") == 1
    assert count("Watch", "CANCELLED", "grpc.health.v1.Health") == 1
    # No series for what the caller named but the server does not have.
    names = {s.labels.get("method") for m in REGISTRY.collect() for s in m.samples}
    assert "Nope" not in names
    for method in ("Ok", "Abort", "Boom", "Slow", "Stream", "StreamAbort"):
        assert in_flight(method) == 0, method
    assert in_flight("Watch", "grpc.health.v1.Health") == 0
    # Durations are real: the cancelled Slow call took at least its 0.2 s deadline.
    total = REGISTRY.get_sample_value(
        "ledger_rpc_duration_seconds_sum",
        {"service": SERVICE, "method": "Slow", "code": "DEADLINE_EXCEEDED"},
    )
    assert total is not None and 0.15 <= total < 5


def test_endpoint_serves_the_registry_and_unregisters_its_collector() -> None:
    class Status:
        head_position = 12
        applied_position = 9

    endpoint = start_endpoint("127.0.0.1:0", projection_status=Status)
    assert endpoint is not None and endpoint.port > 0
    try:
        with urllib.request.urlopen(endpoint.url, timeout=5) as response:
            text = response.read().decode()
        assert "ledger_projection_lag_events 3.0" in text
        assert "ledger_head_position 12.0" in text
        assert 'ledger_reservations_total{channel="(other)",outcome="expired"} 0.0' in text
        assert "_created" not in text
    finally:
        endpoint.close()
    assert REGISTRY.get_sample_value("ledger_projection_lag_events") is None
    # A second endpoint may register its own lag collector again.
    again = start_endpoint("127.0.0.1:0", projection_status=Status)
    assert again is not None
    again.close()
    assert start_endpoint("") is None


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen("0.0.0.0:9464") == ("0.0.0.0", 9464)
    for bad in ("9464", ":9464", "host:", "host:port", "host:70000"):
        with pytest.raises(ConfigError):
            parse_listen(bad)


def test_a_taken_port_is_a_configuration_error() -> None:
    endpoint = start_endpoint("127.0.0.1:0")
    assert endpoint is not None
    try:
        with pytest.raises(ConfigError, match="cannot serve metrics"):
            start_endpoint(f"127.0.0.1:{endpoint.port}")
    finally:
        endpoint.close()


def test_unlisted_label_values_are_bounded_by_the_first_seen(
    caplog: pytest.LogCaptureFixture,
) -> None:
    admitted: list[str] = []
    values = BoundedValues("channel", limit=2)
    values.on_admit(admitted.append)
    assert [values(v) for v in ("web", "b2b", "web", "pos", "ebay")] == [
        "web",
        "b2b",
        "web",
        OTHER,
        OTHER,
    ]
    assert admitted == ["web", "b2b"]  # once each, to export their series at 0
    warnings = [r for r in caplog.records if "LEDGER_METRICS_CHANNELS" in r.getMessage()]
    assert len(warnings) == 1


def test_listed_label_values_are_the_only_ones(caplog: pytest.LogCaptureFixture) -> None:
    admitted: list[str] = []
    values = BoundedValues("source", limit=1)
    values.on_admit(admitted.append)
    values.configure(["wms-east", "erp"])  # more than the unlisted limit: a list has none
    assert admitted == ["erp", "wms-east"]
    assert [values(v) for v in ("erp", "wms-east", "3pl")] == ["erp", "wms-east", OTHER]
    assert admitted == ["erp", "wms-east"]
    assert not [r for r in caplog.records if "LEDGER_METRICS_SOURCES" in r.getMessage()]
    late: list[str] = []
    values.on_admit(late.append)  # a callback registered later sees what was admitted
    assert late == ["erp", "wms-east"]


def test_label_lists() -> None:
    assert parse_label_list("web, b2b,,web ", "channel") == ("web", "b2b")
    assert parse_label_list("", "channel") is None
    assert parse_label_list(" , ", "source") is None
    for bad in ("web shop", "(other)", "a" * 65, "web,b2b!"):
        with pytest.raises(ConfigError):
            parse_label_list(bad, "channel")
