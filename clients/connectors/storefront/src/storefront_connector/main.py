"""``python -m storefront_connector``: run one channel's connector until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from storefront_connector.connector import Settings, StorefrontConnector
from storefront_connector.orders import RESERVATION_TTL_SECONDS
from storefront_connector.sync import RECONCILE_SECONDS

TOKEN_ENVIRONMENT = "STOREFRONT_LEDGER_TOKEN"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m storefront_connector",
        description="Keep a shop's stock in sync with the inventory ledger for one channel, "
        "and turn its orders into reservations.",
    )
    parser.add_argument("--ledger", required=True, metavar="HOST:PORT", help="ledger gRPC address")
    parser.add_argument("--channel", required=True, help="the shop's channel, e.g. web")
    parser.add_argument(
        "--skus",
        required=True,
        action="append",
        metavar="SKU[,SKU...]",
        help="SKUs the shop sells (comma-separated; repeatable)",
    )
    parser.add_argument("--shop-host", default="127.0.0.1")
    parser.add_argument("--shop-port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--reconcile-seconds", type=float, default=RECONCILE_SECONDS)
    parser.add_argument("--reservation-ttl-seconds", type=int, default=RESERVATION_TTL_SECONDS)
    parser.add_argument(
        "--token-file",
        type=Path,
        help=f"file holding the ledger bearer token (or set {TOKEN_ENVIRONMENT})",
    )
    parser.add_argument("--tls-ca", type=Path, help="PEM CA bundle: connect to the ledger by TLS")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    skus = tuple(dict.fromkeys(s.strip() for arg in args.skus for s in arg.split(",") if s.strip()))
    token = (
        args.token_file.read_text().strip()
        if args.token_file is not None
        else os.environ.get(TOKEN_ENVIRONMENT) or None
    )
    return Settings(
        ledger_target=args.ledger,
        channel=args.channel,
        skus=skus,
        shop_host=args.shop_host,
        shop_port=args.shop_port,
        reconcile_seconds=args.reconcile_seconds,
        reservation_ttl_seconds=args.reservation_ttl_seconds,
        token=token,
        root_certificates=args.tls_ca.read_bytes() if args.tls_ca is not None else None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    log = logging.getLogger("storefront_connector")
    connector = StorefrontConnector(settings_from(args)).start()
    log.info("shop listening on %s", connector.shop_url)
    try:
        stopping.wait()
    finally:
        connector.stop()
    log.info("stopped")
    return 0
