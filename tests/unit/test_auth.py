"""Token file, registry reload, token buckets, the scope table, channel checks, exposure
rules and the JSON log formatter, without a server."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from inventory.ledger.v1 import query_service_pb2, reservation_service_pb2

from entrypoints.grpc.auth import RateLimiter, TokenBucket, method_scopes, scope_for
from entrypoints.grpc.errors import PermissionDenied
from entrypoints.grpc.rpc import check_channel
from entrypoints.grpc.tokens import (
    DEFAULT_BURST,
    DEFAULT_RATE_PER_SECOND,
    Principal,
    TokenFileError,
    TokenRegistry,
    hash_token,
    load_token_file,
    parse_principals,
    principal_entry,
)
from entrypoints.grpc.transport import check_exposure, is_loopback
from ledger.config import ConfigError, Settings
from ledger.logs import CALL_FIELDS, CallFieldsFilter, JsonFormatter

DOCS = Path(__file__).resolve().parents[2] / "docs" / "security.md"


def entry(name: str = "svc", token: str = "t", **fields: Any) -> dict[str, Any]:
    return {"name": name, "token_sha256": hash_token(token), "scopes": ["query"], **fields}


# ---- token file -----------------------------------------------------------------------------


def test_principals_get_file_defaults_then_their_own_limits() -> None:
    [plain, tuned] = parse_principals(
        {
            "principals": [
                entry("plain", "a"),
                entry("tuned", "b", channels=["web"], rate_per_second=5, burst=7),
            ]
        },
        "t",
    )
    assert (plain.rate_per_second, plain.burst) == (DEFAULT_RATE_PER_SECOND, DEFAULT_BURST)
    assert plain.channels is None and plain.may_act_for("anything")
    assert (tuned.rate_per_second, tuned.burst, tuned.channels) == (5.0, 7, frozenset({"web"}))
    assert not tuned.may_act_for("marketplace")
    [default] = parse_principals({"defaults": {"rate_per_second": 0}, "principals": [entry()]}, "t")
    assert default.rate_per_second == 0  # no limit


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ([], "top level"),
        ({"principals": [], "extra": 1}, "top level"),
        ({"principals": [entry(scope=["admin"])]}, "principals[0]"),  # typo: no silent grant
        ({"principals": [entry(name="anonymous")]}, "principals[0].name"),
        ({"principals": [entry(name="has space")]}, "principals[0].name"),
        ({"principals": [entry("a", "x"), entry("a", "y")]}, "principals[1].name"),
        ({"principals": [entry("a", "x"), entry("b", "x")]}, "principals[1].token_sha256"),
        ({"principals": [{**entry(), "token_sha256": "abc"}]}, "principals[0].token_sha256"),
        ({"principals": [{**entry(), "scopes": []}]}, "principals[0].scopes"),
        ({"principals": [{**entry(), "scopes": ["root"]}]}, "principals[0].scopes"),
        ({"principals": [entry(channels=[])]}, "principals[0].channels"),
        ({"principals": [entry(channels=["Web!"])]}, "principals[0].channels"),
        ({"principals": [entry(rate_per_second=-1)]}, "principals[0].rate_per_second"),
        ({"principals": [entry(rate_per_second=True)]}, "principals[0].rate_per_second"),
        ({"principals": [entry(burst=0)]}, "principals[0].burst"),
        ({"defaults": {"rate": 1}, "principals": []}, "defaults"),
    ],
)
def test_malformed_token_files_are_refused_naming_the_place(data: Any, where: str) -> None:
    with pytest.raises(TokenFileError, match=re.escape(where)):
        parse_principals(data, "tokens.json")


def test_json_and_toml_files(tmp_path: Path) -> None:
    as_json = tmp_path / "tokens.json"
    as_json.write_text(json.dumps({"principals": [entry("j", "tj")]}))
    as_toml = tmp_path / "tokens.toml"
    as_toml.write_text(
        f'[[principals]]\nname = "t"\ntoken_sha256 = "{hash_token("tt")}"\n'
        'scopes = ["reserve"]\nchannels = ["web"]\n'
    )
    assert [p.name for p in load_token_file(as_json)] == ["j"]
    [toml_principal] = load_token_file(as_toml)
    assert toml_principal.scopes == frozenset({"reserve"})
    with pytest.raises(TokenFileError, match="cannot read"):
        load_token_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(TokenFileError, match="not valid"):
        load_token_file(tmp_path / "bad.json")


def test_principal_entry_is_validated() -> None:
    assert principal_entry("ok", "tok", ["admin"])["token_sha256"] == hash_token("tok")
    with pytest.raises(TokenFileError):
        principal_entry("ok", "tok", ["superuser"])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_registry_reloads_on_change_at_most_every_check_and_keeps_old_on_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"principals": [entry("one", "t1")]}))
    clock = Clock()
    registry = TokenRegistry(str(path), check_seconds=5, clock=clock)
    assert registry.authenticate("t1").name == "one"  # type: ignore[union-attr]
    assert registry.authenticate("t2") is None

    path.write_text(json.dumps({"principals": [entry("two", "t2"), entry("three", "t3")]}))
    clock.now += 1  # not yet time to look
    assert registry.authenticate("t2") is None
    clock.now += 5
    assert registry.authenticate("t2").name == "two"  # type: ignore[union-attr]
    assert registry.authenticate("t1") is None

    path.write_text("{ broken")
    clock.now += 10
    with caplog.at_level(logging.ERROR):
        assert registry.authenticate("t3").name == "three"  # type: ignore[union-attr]
    assert "keeping the 2 principals loaded before" in caplog.text
    assert registry.reload() is False  # SIGHUP on a broken file: same

    path.write_text(json.dumps({"principals": [entry("four", "t4")]}))
    assert registry.reload() is True  # SIGHUP: at once, whatever the clock says
    assert registry.authenticate("t4").name == "four"  # type: ignore[union-attr]

    path.unlink()
    clock.now += 10
    assert registry.authenticate("t4") is not None  # a vanished file keeps them too


def test_a_broken_file_at_start_is_a_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text("[]")
    with pytest.raises(ConfigError):
        TokenRegistry(str(path))


# ---- rate limits ----------------------------------------------------------------------------


def test_token_bucket_bursts_then_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)  # one token in 0.5 s at 2/s
    assert bucket.take(0.25) == pytest.approx(0.25)
    assert bucket.take(0.5) == 0.0
    assert bucket.take(100.0) == 0.0  # refilled, but never above the burst
    assert bucket.tokens == pytest.approx(2.0)


def test_rate_limiter_is_per_principal_and_follows_new_limits() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    slow = Principal("slow", frozenset({"query"}), rate_per_second=1, burst=1)
    other = Principal("other", frozenset({"query"}), rate_per_second=1, burst=1)
    unlimited = Principal("free", frozenset({"query"}))
    assert limiter.acquire(slow) == 0.0
    assert limiter.acquire(slow) > 0
    assert limiter.acquire(other) == 0.0  # its own bucket
    assert all(limiter.acquire(unlimited) == 0.0 for _ in range(1000))
    # A reloaded token file raised the burst: a fresh bucket with the new limits.
    assert limiter.acquire(Principal("slow", frozenset(), rate_per_second=1, burst=5)) == 0.0


# ---- scopes and channels --------------------------------------------------------------------


def test_every_rpc_has_its_scope_and_the_docs_list_them() -> None:
    scopes = method_scopes()
    expected_by_service = {
        "InventoryQueryService": "query",
        "ReservationService": "reserve",
        "MovementService": "record",
        "PolicyService": "policy",
        "AuditService": "audit",
    }
    assert len(scopes) == 24  # 8 query, 5 reservation, 1 movement, 5 policy, 5 audit
    for method, scope in scopes.items():
        service = method.split("/")[1].rsplit(".", 1)[1]
        assert scope == expected_by_service[service], method
    assert scope_for("/grpc.health.v1.Health/Check") == ""
    assert scope_for("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo") == ""
    assert scope_for("/inventory.ledger.v2.NewService/Do") == "admin"  # closed until listed
    docs = DOCS.read_text()
    for method, scope in scopes.items():
        service, name = method.strip("/").rsplit("/", 1)
        short = service.rsplit(".", 1)[1]
        assert re.search(rf"\| `{short}` \| [^|]*`{name}`[^|]*\| `{scope}` \|", docs), (
            f"docs/security.md does not list {short}.{name} with scope {scope}"
        )


def test_admin_implies_every_scope() -> None:
    admin = Principal("root", frozenset({"admin"}))
    assert all(admin.has_scope(s) for s in ("query", "reserve", "record", "policy", "audit"))
    reader = Principal("reader", frozenset({"query"}))
    assert reader.has_scope("query") and not reader.has_scope("reserve")


def test_check_channel_looks_at_every_request_with_a_channel() -> None:
    web = Principal("web-shop", frozenset({"reserve"}), channels=frozenset({"web"}))
    check_channel(reservation_service_pb2.ReserveRequest(channel="web"), web)
    check_channel(reservation_service_pb2.GetReservationRequest(reservation_id="x"), web)
    check_channel(query_service_pb2.GetPositionRequest(sku="S"), web)  # no channel field
    for request in (
        reservation_service_pb2.ReserveRequest(channel="marketplace"),
        reservation_service_pb2.CommitRequest(channel="marketplace"),
        query_service_pb2.WatchAvailabilityRequest(channel="marketplace"),
    ):
        with pytest.raises(PermissionDenied) as caught:
            check_channel(request, web)
        assert caught.value.reason == "CHANNEL_NOT_ALLOWED"
    anywhere = Principal("ops", frozenset({"admin"}))
    check_channel(reservation_service_pb2.ReserveRequest(channel="marketplace"), anywhere)


# ---- exposure -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.0.0.5:1", True),
        ("localhost:0", True),
        ("[::1]:0", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        (":50051", False),
        ("10.1.2.3:50051", False),
        ("ledger.internal:50051", False),
    ],
)
def test_loopback_addresses(listen: str, loopback: bool) -> None:
    assert is_loopback(listen) is loopback


def test_exposure_rules(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        check_exposure(Settings(listen="127.0.0.1:0"))
    assert "NO AUTHENTICATION" in caplog.text
    with pytest.raises(ConfigError, match="--insecure"):
        check_exposure(Settings(listen="0.0.0.0:0"))
    check_exposure(Settings(listen="0.0.0.0:0", insecure=True))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        check_exposure(Settings(listen="0.0.0.0:0", token_file="tokens.json"))
    assert "plaintext" in caplog.text
    with pytest.raises(ConfigError, match="both --tls-cert and --tls-key"):
        check_exposure(Settings(tls_cert="cert.pem"))
    with pytest.raises(ConfigError, match="cannot read"):
        check_exposure(Settings(tls_cert=str(tmp_path / "a"), tls_key=str(tmp_path / "b")))


# ---- JSON logs ------------------------------------------------------------------------------


def test_json_formatter_carries_the_call_fields() -> None:
    record = logging.LogRecord("ledger.x", logging.WARNING, __file__, 1, "hello %s", ("w",), None)
    token = CALL_FIELDS.set({"correlation_id": "c-1", "principal": "web-shop", "method": "/m"})
    try:
        CallFieldsFilter().filter(record)
    finally:
        CALL_FIELDS.reset(token)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "hello w"
    assert line["level"] == "WARNING" and line["logger"] == "ledger.x"
    assert (line["correlation_id"], line["principal"], line["method"]) == ("c-1", "web-shop", "/m")
    outside = logging.LogRecord("ledger.x", logging.INFO, __file__, 1, "plain", None, None)
    CallFieldsFilter().filter(outside)
    assert "correlation_id" not in json.loads(JsonFormatter().format(outside))
