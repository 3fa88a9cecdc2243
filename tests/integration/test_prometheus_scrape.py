"""A real Prometheus scrapes a live ``ledger serve`` and ``ledger ingest`` (issue 17).

The shipped alerts (``deploy/prometheus/alerts.yml``) and the Grafana dashboard query
metrics by name; a typo or a renamed metric would leave an alert that never fires or a
panel that stays empty, and neither complains. Here Prometheus (Debian's package, the
``prometheus_tools`` fixture) scrapes both processes every second as job ``ledger`` with
the compose stack's ``component`` labels and loads the shipped rules. After a small
workload (a RecordMovements, an invalid Reserve, a live movement and a poison message
through ingest), its ``/api/v1/label/__name__/values`` must hold every metric the rules
and the dashboard select, every rule must evaluate without error, and the one alert the
workload earns (``LedgerDeadLetters``, for the poison message) must be the one firing.

Each process has its own SQLite file: what is tested is what they export, not that they
share a ledger (``test_metrics.test_stack_exports_every_dashboard_metric`` does that).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import nats
import pytest
from inventory.ledger.v1 import (
    movement_service_pb2,
    movement_service_pb2_grpc,
    reservation_service_pb2_grpc,
)

from ingest.bridge import publish_movement
from ingest.streams import StreamNames, ensure_topology
from testbed.nats import delete_test_topology
from testbed.processes import free_tcp_port
from testbed.prometheus import PrometheusBinaries, PrometheusServer
from testbed.server import LedgerProcess, stub
from tests.integration.test_metrics import (
    _METRIC_NAME,
    _code_of,
    _drained,
    _payload,
    _receipt,
    _reserve_request,
    _spawn,
    _stop,
    dashboard_metric_names,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
WAIT_SECONDS = 45.0
T = TypeVar("T")


def _scrape_config(api: str, ingest: str) -> str:
    """Job ``ledger`` with the compose stack's ``component`` labels, scraped every second,
    and the shipped rules (JSON is YAML)."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {
                "job_name": "ledger",
                "static_configs": [
                    {"targets": [api], "labels": {"component": "api"}},
                    {"targets": [ingest], "labels": {"component": "ingest"}},
                ],
            }
        ],
    }
    return json.dumps(config)


def _until(what: str, read: Callable[[], T], done: Callable[[T], bool]) -> T:
    """``read()`` until ``done`` holds; the last value goes into the failure message."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        value = read()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"{what} within {WAIT_SECONDS} s; last: {value}"
        time.sleep(0.5)


def _rule_metric_names(rules: list[dict[str, Any]]) -> set[str]:
    names: set[str] = set()
    for rule in rules:
        found = set(_METRIC_NAME.findall(rule["query"]))
        if re.search(r"\bup\{", rule["query"]):
            found.add("up")
        assert found, rule["query"]
        names |= found
    return names


def _rules(prometheus: PrometheusServer) -> list[dict[str, Any]]:
    groups = prometheus.api("rules")["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _workload(api: LedgerProcess, nats_url: str, names: StreamNames, ingest: Any) -> None:
    """Series that exist only once used: the API's movement lag, errors by reason and RPC
    codes; ingest's batches, lag and age of a live movement, and a dead letter."""
    movements = stub(api, movement_service_pb2_grpc.MovementServiceStub)
    movements.RecordMovements(
        movement_service_pb2.RecordMovementsRequest(movements=[_receipt("SKU-P", 3)]), timeout=10
    )
    reservations = stub(api, reservation_service_pb2_grpc.ReservationServiceStub)
    invalid = _reserve_request(1, request_id="")
    assert _code_of(lambda: reservations.Reserve(invalid, timeout=10)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )

    async def publish() -> None:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            await ensure_topology(js, names)
            await publish_movement(js, _payload("p-1", 4), names.prefix)
            await js.publish(names.movement_subject("wms-east"), b"{")  # dead-lettered
            await _drained(js, names, ingest)
        finally:
            await nc.drain()

    asyncio.run(publish())


def test_prometheus_finds_every_metric_the_alerts_and_dashboard_query(
    nats_url: str, prometheus_tools: PrometheusBinaries, tmp_path: Path
) -> None:
    names = StreamNames(f"T_{uuid.uuid4().hex[:12]}")
    api_metrics = f"127.0.0.1:{free_tcp_port()}"
    ingest_metrics = f"127.0.0.1:{free_tcp_port()}"
    alert_names = set(re.findall(r"^\s*- alert: (\w+)$", ALERTS.read_text(), re.MULTILINE))
    assert len(alert_names) > 20
    ingest_log = tmp_path / "ingest.log"
    ingest: subprocess.Popen[bytes] | None = None
    prometheus = PrometheusServer(
        prometheus_tools.prometheus, _scrape_config(api_metrics, ingest_metrics)
    )
    api = LedgerProcess(
        f"sqlite:///{tmp_path / 'api.db'}", extra_args=["--metrics-listen", api_metrics]
    )
    try:
        api.start()
        ingest_argv = ["ingest", "--nats", nats_url, "--database", f"sqlite:///{tmp_path}/i.db"]
        ingest_argv += ["--prefix", names.prefix, "--metrics-listen", ingest_metrics]
        ingest = _spawn(ingest_argv, ingest_log)
        prometheus.start()
        _workload(api, nats_url, names, ingest)

        up = _until(
            "both targets up",
            lambda: prometheus.api("query", query='up{job="ledger"}')["result"],
            lambda result: len(result) == 2 and all(r["value"][1] == "1" for r in result),
        )
        assert {r["metric"]["component"] for r in up} == {"api", "ingest"}

        rules = _rules(prometheus)
        assert {rule["name"] for rule in rules} == alert_names
        wanted = dashboard_metric_names() | _rule_metric_names(rules)
        found = _until(
            "every metric of the rules and the dashboard scraped",
            lambda: wanted - set(prometheus.api("label/__name__/values")),
            lambda missing: not missing,
        )
        assert found == set()

        # Every rule evaluated against the live series without error, and the poison
        # message's dead letter is what fires (the other alerts are quiet or pending).
        rules = _until(
            "every rule evaluated since the series arrived, and the dead letter's alert",
            lambda: _rules(prometheus),
            lambda rules: (
                all(r["health"] == "ok" for r in rules)
                and any(r["name"] == "LedgerDeadLetters" and r["state"] == "firing" for r in rules)
            ),
        )
        firing = [a for a in prometheus.api("alerts")["alerts"] if a["state"] == "firing"]
        assert [(a["labels"]["alertname"], a["labels"].get("source")) for a in firing] == [
            ("LedgerDeadLetters", "wms-east")
        ], firing
    finally:
        # Everything is stopped and removed even when a check below fails; the logs are
        # read before their directories go.
        prometheus_exit, prometheus_log = prometheus.stop(), prometheus.log_tail()
        try:
            if ingest is not None:
                _stop(ingest, ingest_log)
        finally:
            api_exit, api_log = api.stop(), api.log_text()
            api.close()
            prometheus.close()
            delete_test_topology(nats_url, names)
    assert api_exit == 0, api_log
    assert prometheus_exit == 0, prometheus_log
