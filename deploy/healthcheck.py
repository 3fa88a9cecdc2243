#!/usr/bin/env python3
"""Container healthcheck of the ledger's processes (docker-compose.yml, docs/deployment.md).

Installed in the image as ``ledger-healthcheck``; reads the same environment variables as the
process it checks, so no address is configured twice::

    ledger-healthcheck grpc       # ledger serve: grpc.health.v1 Check on LEDGER_LISTEN
    ledger-healthcheck metrics    # any process: GET /metrics on LEDGER_METRICS_LISTEN
    ledger-healthcheck metrics --require ledger_projection_lag_events

``grpc`` asks the server's ``grpc.health.v1.Health/Check`` (overall service ``""``) and wants
``SERVING``: the server has opened its database and listens, and it is not draining. Health
needs no token (docs/security.md). With ``LEDGER_TLS_CERT`` set the call uses TLS: it trusts
``LEDGER_HEALTHCHECK_CA`` (default: ``LEDGER_TLS_CERT`` itself, which works for a self-signed
certificate), checks the name ``LEDGER_HEALTHCHECK_TLS_NAME`` (default: the probed address),
and presents ``LEDGER_HEALTHCHECK_CLIENT_CERT`` / ``LEDGER_HEALTHCHECK_CLIENT_KEY`` under
mutual TLS. Empty variables count as unset.

``metrics`` wants HTTP 200 from the process's ``/metrics`` endpoint and, with ``--require
NAME``, a sample of metric ``NAME`` in it: ``ledger_projection_lag_events`` is exported only
while the database can be read, so it makes the check fail when the process lost it.

A wildcard listen host (``0.0.0.0``, ``::``, none) is probed on loopback. Exit status: 0
healthy, 1 unhealthy (the reason on stderr), 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request

DEFAULT_LISTEN = "127.0.0.1:50051"  # ledger/config.py DEFAULT_LISTEN
WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]", "*")


class Unhealthy(Exception):
    """The process answered badly or not at all."""


class Misconfigured(Exception):
    """The environment does not say where to probe."""


def probe_target(listen: str) -> str:
    """``HOST:PORT`` to connect to for a process listening on ``listen``."""
    host, sep, port = listen.strip().rpartition(":")
    if not sep or not port.isdigit() or int(port) == 0:
        raise Misconfigured(f"need HOST:PORT with a fixed port, not {listen!r}")
    if host in WILDCARD_HOSTS:
        host = "[::1]" if host in ("::", "[::]") else "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def _read(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def check_grpc(timeout: float) -> str:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = probe_target(os.environ.get("LEDGER_LISTEN") or DEFAULT_LISTEN)
    cert = os.environ.get("LEDGER_TLS_CERT", "")
    options: list[tuple[str, str]] = []
    if cert:
        client_cert = os.environ.get("LEDGER_HEALTHCHECK_CLIENT_CERT", "")
        client_key = os.environ.get("LEDGER_HEALTHCHECK_CLIENT_KEY", "")
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(os.environ.get("LEDGER_HEALTHCHECK_CA") or cert),
            private_key=_read(client_key) if client_key else None,
            certificate_chain=_read(client_cert) if client_cert else None,
        )
        name = os.environ.get("LEDGER_HEALTHCHECK_TLS_NAME", "")
        if name:
            options.append(("grpc.ssl_target_name_override", name))
        channel = grpc.secure_channel(target, credentials, options=options)
    else:
        channel = grpc.insecure_channel(target)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError as error:
            raise Unhealthy(f"health check of {target} failed: {error.code().name}") from None
    finally:
        channel.close()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        raise Unhealthy(f"{target} is {status}")
    return f"{target} {status}"


def check_metrics(timeout: float, required: list[str]) -> str:
    listen = os.environ.get("LEDGER_METRICS_LISTEN", "")
    if not listen:
        raise Misconfigured("LEDGER_METRICS_LISTEN is not set: the process serves no metrics")
    url = f"http://{probe_target(listen)}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read().decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError) as error:
        raise Unhealthy(f"{url}: {error}") from None
    samples = {line.split("{", 1)[0].split(" ", 1)[0] for line in body.splitlines() if line}
    missing = [name for name in required if name not in samples]
    if missing:
        raise Unhealthy(f"{url} lacks {', '.join(missing)}")
    return f"{url} ok"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ledger-healthcheck",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("check", choices=("grpc", "metrics"))
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    parser.add_argument(
        "--require",
        action="append",
        default=[],
        metavar="METRIC",
        help="metrics: a sample of this metric must be present (repeatable)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.check == "grpc":
            print(check_grpc(args.timeout))
        else:
            print(check_metrics(args.timeout, args.require))
    except Misconfigured as error:
        print(f"ledger-healthcheck: {error}", file=sys.stderr)
        return 2
    except (Unhealthy, OSError) as error:
        print(f"ledger-healthcheck: unhealthy: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
