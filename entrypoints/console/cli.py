"""``ledger console``: its flags, and serving the application with uvicorn (docs/console.md)."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import socket

from entrypoints.console.app import ConsoleConfig, create_app
from entrypoints.remote import add_target_arguments, target_from_args
from ledger.config import ConfigError

log = logging.getLogger("ledger")

DEFAULT_LISTEN = "127.0.0.1:8080"


def add_console_parser(commands: argparse._SubParsersAction) -> None:
    console = commands.add_parser(
        "console",
        help="serve the auditor's web console, a client of a running ledger's gRPC API",
        description="Server-rendered pages (positions, stock ledger with running balances and"
        " CSV, as-of balances with a chart, hash-chain verification) over the gRPC API of"
        " --target. People sign in with their own ledger tokens, which the console keeps"
        " server-side and forwards on every call. Against a ledger in open mode, a console"
        " listening on loopback needs no sign-in.",
    )
    console.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"address of the web console (default {DEFAULT_LISTEN}; port 0 picks a free one)",
    )
    add_target_arguments(console, token=False)
    console.add_argument("--https-cert", help="serve HTTPS with this certificate chain (PEM)")
    console.add_argument("--https-key", help="the HTTPS private key (PEM)")
    console.add_argument(
        "--insecure",
        action="store_true",
        help="allow plain HTTP on a non-loopback address (tokens then cross the network in"
        " clear text)",
    )
    console.add_argument(
        "--channel",
        action="append",
        default=[],
        metavar="NAME",
        help="a sales channel whose availability the positions page shows (repeatable)",
    )
    console.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a name people reach the console by, beyond the --listen address and loopback"
        " (repeatable); requests with any other Host header are refused (DNS rebinding)",
    )
    console.add_argument(
        "--nats",
        metavar="URL",
        help="NATS server whose dead-letter stream the operations page lists, read-only (env"
        " LEDGER_NATS_URL; default: dead letters not shown)",
    )
    console.add_argument(
        "--nats-prefix",
        default="",
        help="the stream prefix `ledger ingest --prefix` used (like `ledger dlq --prefix`)",
    )
    console.add_argument("--log-level", default="INFO")


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[v6]:PORT`` → (host, port); raises :class:`ConfigError`."""
    host, colon, port = listen.rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--listen {listen!r} is not HOST:PORT")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def trusted_hosts(listen_host: str, names: list[str]) -> tuple[str, ...]:
    """The ``Host`` names the console answers (port aside): the listen address, loopback and
    ``names``. Empty (any name) only for a wildcard listen address given no names: it serves
    no visitor without sign-in, and cookies never follow a foreign name."""
    wildcard = listen_host in ("0.0.0.0", "::", "")
    if wildcard and not names:
        return ()
    hosts = [] if wildcard else [f"[{listen_host}]" if ":" in listen_host else listen_host]
    hosts += [*LOOPBACK_NAMES, *(name.strip().lower() for name in names if name.strip())]
    return tuple(dict.fromkeys(host.lower() for host in hosts))


def run_console(args: argparse.Namespace) -> int:
    """Check the flags, bind the port, serve until SIGTERM/SIGINT."""
    import uvicorn

    target = target_from_args(args)
    target.credentials()  # a missing or bad TLS file fails now, in one line
    host, port = split_listen(args.listen)
    if bool(args.https_cert) != bool(args.https_key):
        raise ConfigError("HTTPS needs both --https-cert and --https-key")
    https = bool(args.https_cert)
    loopback = is_loopback(host)
    if not loopback and not https and not args.insecure:
        raise ConfigError(
            f"--listen {args.listen} is not loopback: give --https-cert and --https-key (people"
            " type their tokens into the console), or --insecure"
        )
    config = ConsoleConfig(
        channel_factory=target.aio_channel,
        allow_anonymous=loopback,
        secure_cookies=https,
        channels=tuple(args.channel),
        target_label=target.target,
        trusted_hosts=trusted_hosts(host, list(getattr(args, "allowed_host", []) or [])),
        nats_url=getattr(args, "nats", None) or os.environ.get("LEDGER_NATS_URL") or None,
        nats_prefix=getattr(args, "nats_prefix", "") or "",
    )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ConfigError(f"--listen {args.listen}: {error.strerror or error}") from None
    sock.listen(128)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            log_config=None,
            access_log=False,
            ssl_certfile=args.https_cert,
            ssl_keyfile=args.https_key,
            lifespan="on",
        )
    )
    bound_host, bound_port = sock.getsockname()[:2]
    scheme = "https" if https else "http"
    shown = f"[{bound_host}]" if family == socket.AF_INET6 else bound_host
    log.info(
        "console listening on %s://%s:%d (ledger %s%s)",
        scheme,
        shown,
        bound_port,
        target.target,
        ", TLS" if target.tls else "",
    )
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        sock.close()
    log.info("stopped")
    return 0
