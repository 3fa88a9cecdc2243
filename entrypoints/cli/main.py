"""Command line: ``ledger serve``, ``ledger dev``, ``ledger projections [run|rebuild|status]``,
``ledger ingest``, ``ledger dlq``, ``ledger publish``, ``ledger import-snapshot|import-wms``,
``ledger export`` and ``ledger reconcile``.

The parser is in ``parser``, the commands in ``processes``, ``read_models``, ``nats_admin``,
``audit`` and ``tokens``; failures become exit statuses in ``failures``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from entrypoints.cli.audit import run_export, run_reconcile
from entrypoints.cli.audit_remote import run_audit
from entrypoints.cli.failures import StopNow, known_failure, stop_now
from entrypoints.cli.nats_admin import run_dlq, run_import, run_publish
from entrypoints.cli.parser import build_parser
from entrypoints.cli.processes import (
    run_dev,
    run_ingest,
    run_projections,
    serve,
)
from entrypoints.cli.read_models import projections_status, rebuild_projections
from entrypoints.cli.tokens import create_token
from entrypoints.cli.writer import run_writer
from entrypoints.console.cli import run_console
from ledger.config import (
    GroupCommit,
    ProcessTuning,
    Settings,
    debug_from_env,
    ingest_ack_wait_from_env,
    log_format_from_env,
    nats_url_from_env,
)
from ledger.logs import one_line

log = logging.getLogger("ledger")


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; known failures are one line and exit 2, anything else one line and
    exit 1 (the traceback only with --debug or LEDGER_DEBUG=1)."""
    from ledger.logs import LOG_FORMATS, configure_logging

    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `serve` re-runs it for workers
    log_format = getattr(args, "log_format", None) or log_format_from_env()
    if log_format not in LOG_FORMATS:
        print(f"LEDGER_LOG_FORMAT must be text or json, not {log_format!r}", file=sys.stderr)
        return 2
    configure_logging(args.log_level, log_format)
    debug = getattr(args, "debug", False) or debug_from_env()
    long_running = args.command in _LONG_RUNNING and getattr(args, "action", "run") == "run"
    if long_running:
        # Until its event loop takes over the signals (start-up checks, imports): stop cleanly.
        signal.signal(signal.SIGTERM, stop_now)
    try:
        return _run(args)
    except (KeyboardInterrupt, StopNow):
        if long_running:
            log.info("stopped")
            return 0
        log.error("interrupted")  # Ctrl-C in a one-shot command
        return 130
    except Exception as error:
        known = known_failure(error)
        if known is not None:
            log.error("%s", known, exc_info=error if debug else None)
            return 2
        log.error(
            "unexpected error: %s%s",
            one_line(error),
            "" if debug else " (run with --debug for the traceback)",
            exc_info=error if debug else None,
        )
        return 1


_LONG_RUNNING = ("serve", "writer", "dev", "ingest", "projections", "console")


def _nats_url(args: argparse.Namespace) -> str:
    return args.nats or nats_url_from_env()


def _service_settings(args: argparse.Namespace) -> Settings:
    """A one-shot command that opens the ledger service (export, reconcile)."""
    return Settings.from_env(database_url=args.database, group_commit=GroupCommit.from_env())


def _run(args: argparse.Namespace) -> int:
    tuning = None
    if args.command in ("serve", "writer", "ingest", "projections"):
        tuning = ProcessTuning.from_env()  # a bad setting fails before anything starts
    if args.command == "writer":
        settings = _checked(
            Settings.from_env(
                database_url=args.database,
                tuning=tuning,
                group_commit=GroupCommit.from_env(),
                metrics_listen=args.metrics_listen,
                writer="process",
            ),
        )
        from ledger.preflight import check_listen

        check_listen("--listen", args.listen)
        return run_writer(settings, args.listen, args.advertise_host, args.exit_with_parent)
    elif args.command == "serve":
        settings = _checked(
            Settings.from_env(
                listen=args.listen,
                database_url=args.database,
                projections=args.projections,
                writer=args.writer,
                api_processes=args.api_processes,
                api_worker=args.api_worker,
                tuning=tuning,
                group_commit=GroupCommit.from_env(),
                metrics_listen=args.metrics_listen,
                metrics_channels=args.metrics_channels,
                metrics_sources=args.metrics_sources,
            ),
            listen=True,
        )
        return asyncio.run(serve(_with_security(settings, args), args.argv))
    elif args.command == "dev":
        settings = _checked(
            Settings.from_env(
                listen=args.listen,
                database_url=args.database,
                projections="in-process",
                group_commit=GroupCommit.from_env(),
                ingest_ack_wait_seconds=ingest_ack_wait_from_env(),
                metrics_listen=args.metrics_listen,
                metrics_channels=args.metrics_channels,
                metrics_sources=args.metrics_sources,
            ),
            listen=True,
            nats_listen=args.nats_listen,
        )
        asyncio.run(run_dev(_with_security(settings, args), args.nats_listen, args.nats_dir))
    elif args.command == "ingest":
        settings = _checked(
            Settings.from_env(
                database_url=args.database,
                tuning=tuning,
                group_commit=GroupCommit.from_env(),
                ingest_ack_wait_seconds=ingest_ack_wait_from_env(),
                metrics_listen=args.metrics_listen,
                metrics_sources=args.metrics_sources,
            )
        )
        asyncio.run(run_ingest(settings, _nats_url(args), args.batch_size, args.units, args.prefix))
    elif args.command == "dlq":
        return asyncio.run(run_dlq(args, _nats_url(args)))
    elif args.command == "publish":
        return asyncio.run(run_publish(args.file, _nats_url(args), args.prefix, args.units))
    elif args.command in ("import-snapshot", "import-wms"):
        return asyncio.run(run_import(args, _nats_url(args)))
    elif args.command == "export":
        if args.lot is not None or args.as_of is not None:
            if args.lot is None or args.sku is None or args.location_id is not None:
                log.error("give --lot with --sku (no --location-id); --as-of needs --lot")
                return 2
        elif (args.sku is None) != (args.location_id is None):
            log.error("give both --sku and --location-id, or neither")
            return 2
        return run_export(args, _reachable(_service_settings(args)))
    elif args.command == "token":
        return create_token(args)
    elif args.command == "audit":
        return run_audit(args)
    elif args.command == "console":
        return run_console(args)
    elif args.command == "reconcile":
        return run_reconcile(args, _reachable(_service_settings(args)))
    else:
        settings = Settings.from_env(
            database_url=args.database, tuning=tuning, metrics_listen=args.metrics_listen
        )
        if args.action == "rebuild":
            return rebuild_projections(_reachable(settings), args.batch_size)
        if args.action == "status":
            return projections_status(_reachable(settings))
        asyncio.run(run_projections(_checked(settings), args.batch_size))
    return 0


def _reachable(settings: Settings) -> Settings:
    """A one-shot command's PostgreSQL answers (a SQLite file is checked by the command)."""
    from ledger.preflight import check_postgres

    check_postgres(settings.database_url)
    return settings


def _checked(settings: Settings, listen: bool = False, nats_listen: str = "") -> Settings:
    """Addresses and the database of a long-running process, before anything is opened or
    logged: a bad one is refused (exit 2), never replaced by a random port."""
    from ledger.preflight import check_database, check_listen

    if listen and not settings.api_worker:  # a worker shares the port its parent holds
        check_listen("--listen", settings.listen)
    if nats_listen:
        check_listen("--nats-listen", nats_listen)
    if settings.metrics_listen:
        check_listen("--metrics-listen", settings.metrics_listen)
    check_database(settings.database_url)
    return settings


def _with_security(settings: Settings, args: argparse.Namespace) -> Settings:
    """``serve`` / ``dev`` flags over the environment's security settings."""
    import dataclasses

    overrides = {
        name: getattr(args, name)
        for name in ("token_file", "insecure", "tls_cert", "tls_key", "tls_client_ca")
        if getattr(args, name, None) is not None
    }
    return dataclasses.replace(settings, **overrides)


if __name__ == "__main__":
    sys.exit(main())
