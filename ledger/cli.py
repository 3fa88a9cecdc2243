"""Command line: ``ledger serve``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from ledger.config import ConfigError, Settings

log = logging.getLogger("ledger")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ledger", description="Inventory ledger")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gRPC service")
    serve.add_argument(
        "--listen", help="HOST:PORT to listen on (env LEDGER_LISTEN, default 127.0.0.1:50051)"
    )
    serve.add_argument(
        "--database",
        help="sqlite:///PATH or postgresql://USER:PASS@HOST:PORT/DB "
        "(env LEDGER_DATABASE_URL, default sqlite:///./ledger.db)",
    )
    serve.add_argument("--log-level", default="INFO")
    return parser


async def serve(settings: Settings) -> None:
    # Imported here so `ledger --help` stays fast and import has no side effects.
    from ledger.api.server import start_server
    from ledger.service import LedgerService

    service = await asyncio.to_thread(LedgerService.open, settings.database_url)
    running = await start_server(service, settings)
    service.start_expiry_sweeper(settings.expiry_sweep_seconds)
    host = settings.listen.rsplit(":", 1)[0]
    log.info(
        "ledger listening on %s:%d (database %s)",
        host,
        running.port,
        _redacted(settings.database_url),
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    log.info("shutting down: draining in-flight calls (grace %.0fs)", settings.grace_seconds)
    await running.stop(settings.grace_seconds)
    await asyncio.to_thread(service.close)
    log.info("stopped")


def _redacted(url: str) -> str:
    """Never log a database password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        user = credentials.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        settings = Settings.from_env(listen=args.listen, database_url=args.database)
        asyncio.run(serve(settings))
    except ConfigError as error:
        log.error("configuration error: %s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
