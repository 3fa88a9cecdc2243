"""Configuration: command-line flags over environment variables over defaults.

The settings module: the only one in ``ledger``, ``projections`` and ``ingest`` that reads the
environment. The entrypoints read each group of settings here when the command needs it and
pass the values down (``LedgerService(group_commit=...)``, ``tune_after_startup(thresholds)``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DATABASE_URL = "sqlite:///./ledger.db"
# Load shedding: unary calls a replica serves at once (entrypoints.grpc.load_shedding).
DEFAULT_MAX_CALLS_IN_FLIGHT = 1024
# Eventual GetAvailability from memory (projections.availability_cache): the SKUs a replica
# keeps, least recently used evicted; about 1.3 KB per position plus ~0.5 KB per hold, so
# 10,000 SKUs of 4 locations are ~60 MB. 0 turns the cache off.
DEFAULT_AVAILABILITY_CACHE_SKUS = 10_000
# Garbage-collector thresholds and thread switch interval of the long-running processes
# (ledger.gc_tuning, ledger.gil_tuning explain the figures).
DEFAULT_GC_THRESHOLDS = (20_000, 50, 20)
DEFAULT_GIL_SWITCH_MS = 0.25
# Group commit (ledger.pipeline): how long the writer waits for batch-mates, and how many
# commands share one transaction.
DEFAULT_GROUP_COMMIT_LINGER_MS = 1.0
DEFAULT_GROUP_COMMIT_MAX = 256


class ConfigError(ValueError):
    """Raised when configuration is missing or malformed."""


@dataclass(frozen=True)
class GroupCommit:
    """How the writer batches commands into one transaction; docs/performance.md explains
    the trade."""

    linger_seconds: float = DEFAULT_GROUP_COMMIT_LINGER_MS / 1000
    max_commands: int = DEFAULT_GROUP_COMMIT_MAX

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> GroupCommit:
        """LEDGER_GROUP_COMMIT_LINGER_MS (default 1) and LEDGER_GROUP_COMMIT_MAX (default
        256)."""
        linger_text = environ.get("LEDGER_GROUP_COMMIT_LINGER_MS", "")
        max_text = environ.get("LEDGER_GROUP_COMMIT_MAX", "")
        try:
            linger_ms = float(linger_text or DEFAULT_GROUP_COMMIT_LINGER_MS)
            batch_max = int(max_text or DEFAULT_GROUP_COMMIT_MAX)
        except ValueError:
            linger_ms, batch_max = -1.0, 0  # reported below, like an out-of-range value
        # A ConfigError (exit 2, one line) like every other malformed setting.
        if not 0 <= linger_ms <= 100 or not 1 <= batch_max <= 10_000:
            raise ConfigError(
                "LEDGER_GROUP_COMMIT_LINGER_MS must be 0-100 and LEDGER_GROUP_COMMIT_MAX 1-10000,"
                f" not {linger_text!r} and {max_text!r}"
            )
        return cls(linger_ms / 1000, batch_max)


@dataclass(frozen=True)
class ProcessTuning:
    """Garbage collector and interpreter switch interval of a long-running process."""

    gc_thresholds: tuple[int, int, int] = DEFAULT_GC_THRESHOLDS
    gil_switch_ms: float = DEFAULT_GIL_SWITCH_MS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> ProcessTuning:
        """LEDGER_GC_THRESHOLDS and LEDGER_GIL_SWITCH_MS (ConfigError when malformed)."""
        from ledger.gc_tuning import thresholds_from_env
        from ledger.gil_tuning import switch_ms_from_env

        return cls(thresholds_from_env(environ), switch_ms_from_env(environ))


# JetStream redelivers an unacked message after this long (ingest.streams.ACK_WAIT_SECONDS).
DEFAULT_INGEST_ACK_WAIT_SECONDS = 30.0


@dataclass(frozen=True)
class Settings:
    listen: str = DEFAULT_LISTEN
    database_url: str = DEFAULT_DATABASE_URL
    expiry_sweep_seconds: float = 1.0
    grace_seconds: float = 5.0
    max_message_bytes: int = 4 * 1024 * 1024
    page_token_secret: str = "inventory-ledger-page-token"
    # "auto": in-process on SQLite, a separate `ledger projections` process on PostgreSQL.
    projections: str = "auto"
    # HOST:PORT of the Prometheus /metrics endpoint ("" = none; docs/operations.md).
    metrics_listen: str = ""
    # Comma-separated label values of `channel` / `source` (ledger.metrics.labels.BoundedValues):
    # "" = the first 20 distinct ones a process sees; others are counted as "(other)".
    metrics_channels: str = ""
    metrics_sources: str = ""
    # Security (docs/security.md): no token file = open mode, loopback only unless insecure.
    token_file: str = ""
    token_reload_seconds: float = 2.0
    insecure: bool = False
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""  # set: mutual TLS, client certificates required
    max_calls_in_flight: int = DEFAULT_MAX_CALLS_IN_FLIGHT
    availability_cache_skus: int = DEFAULT_AVAILABILITY_CACHE_SKUS
    # Where `ledger serve` writes (docs/decisions.md "The writer's own core"): "thread" in
    # this process; "process" a `ledger writer` child joining the ledger's writer seat;
    # "external" the seat's holder, started elsewhere. The last two need PostgreSQL.
    writer: str = "thread"
    # `ledger serve`: gRPC processes sharing the listen port (SO_REUSEPORT), all writing
    # through the ledger's writer process; above 1 needs --writer process or external.
    api_processes: int = 1
    # On the extra API processes `ledger serve` starts: the pid of the first one (which holds
    # the port and stops them); 0 elsewhere.
    api_worker: int = 0
    # Long-running processes: read by the command that tunes itself (ProcessTuning.from_env).
    tuning: ProcessTuning = ProcessTuning()
    # `ingest` / `dev`: read by those commands (ingest_ack_wait_from_env) before they connect.
    ingest_ack_wait_seconds: float = DEFAULT_INGEST_ACK_WAIT_SECONDS
    # The commands that open the ledger service (serve, dev, ingest, export, reconcile): read
    # by them (GroupCommit.from_env) with the rest of their settings.
    group_commit: GroupCommit = GroupCommit()

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        values: dict[str, object] = {
            "listen": os.environ.get("LEDGER_LISTEN", DEFAULT_LISTEN),
            "database_url": os.environ.get("LEDGER_DATABASE_URL", DEFAULT_DATABASE_URL),
            "expiry_sweep_seconds": _positive_seconds(
                "LEDGER_EXPIRY_SWEEP_SECONDS",
                os.environ.get("LEDGER_EXPIRY_SWEEP_SECONDS", ""),
                1.0,
            ),
            "page_token_secret": os.environ.get(
                "LEDGER_PAGE_TOKEN_SECRET", "inventory-ledger-page-token"
            ),
            "projections": os.environ.get("LEDGER_PROJECTIONS", "auto"),
            "metrics_listen": os.environ.get("LEDGER_METRICS_LISTEN", ""),
            "metrics_channels": os.environ.get("LEDGER_METRICS_CHANNELS", ""),
            "metrics_sources": os.environ.get("LEDGER_METRICS_SOURCES", ""),
            "token_file": os.environ.get("LEDGER_TOKEN_FILE", ""),
            "token_reload_seconds": _positive_seconds(
                "LEDGER_TOKEN_RELOAD_SECONDS",
                os.environ.get("LEDGER_TOKEN_RELOAD_SECONDS", ""),
                2.0,
            ),
            "insecure": os.environ.get("LEDGER_INSECURE", "").lower() in ("1", "true", "yes"),
            "tls_cert": os.environ.get("LEDGER_TLS_CERT", ""),
            "tls_key": os.environ.get("LEDGER_TLS_KEY", ""),
            "tls_client_ca": os.environ.get("LEDGER_TLS_CLIENT_CA", ""),
            "max_calls_in_flight": _positive_int(
                "LEDGER_MAX_CALLS_IN_FLIGHT",
                os.environ.get("LEDGER_MAX_CALLS_IN_FLIGHT", ""),
                DEFAULT_MAX_CALLS_IN_FLIGHT,
            ),
            "availability_cache_skus": _non_negative_int(
                "LEDGER_AVAILABILITY_CACHE_SKUS",
                os.environ.get("LEDGER_AVAILABILITY_CACHE_SKUS", ""),
                DEFAULT_AVAILABILITY_CACHE_SKUS,
            ),
            "writer": os.environ.get("LEDGER_WRITER", "thread"),
            "api_processes": _positive_int(
                "LEDGER_API_PROCESSES", os.environ.get("LEDGER_API_PROCESSES", ""), 1
            ),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        check_writer_mode(str(values["writer"]), str(values["database_url"]))
        if int(str(values["api_processes"])) > 1 and values["writer"] == "thread":
            raise ConfigError(
                "--api-processes above 1 needs --writer process or external (PostgreSQL):"
                " the API processes write through one writer"
            )
        # One mapping of mixed value types keyed by field name; each value was parsed to its
        # field's type above, which mypy cannot follow through a dict[str, object].
        return cls(**values)  # type: ignore[arg-type]


WRITER_MODES = ("thread", "process", "external")


def check_writer_mode(mode: str, database_url: str) -> None:
    if mode not in WRITER_MODES:
        raise ConfigError(
            f"LEDGER_WRITER / --writer must be one of {', '.join(WRITER_MODES)}, not {mode!r}"
        )
    if mode != "thread" and not database_url.startswith("postgres"):
        raise ConfigError(f"--writer {mode} needs PostgreSQL (SQLite has one writer: thread)")


def _positive_int(name: str, text: str, default: int) -> int:
    text = text.strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {text!r}") from None
    if value < 1:
        raise ConfigError(f"{name} must be at least 1, not {value}")
    return value


def _non_negative_int(name: str, text: str, default: int) -> int:
    return 0 if text.strip() == "0" else _positive_int(name, text, default)


def _positive_seconds(name: str, text: str, default: float) -> float:
    """A number of seconds from the environment: malformed is a ConfigError (exit 2), not a
    traceback from float()."""
    text = text.strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, not {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{name} must be a positive number of seconds, not {text!r}")
    return value


DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


def nats_url_from_env(environ: Mapping[str, str] = os.environ) -> str:
    """LEDGER_NATS_URL: the broker of the commands that talk to NATS (under their --nats)."""
    return environ.get("LEDGER_NATS_URL", DEFAULT_NATS_URL)


def log_format_from_env(environ: Mapping[str, str] = os.environ) -> str:
    """LEDGER_LOG_FORMAT (under --log-format): text or json, checked by the command line."""
    return environ.get("LEDGER_LOG_FORMAT", "text")


def debug_from_env(environ: Mapping[str, str] = os.environ) -> bool:
    """LEDGER_DEBUG=1 (or true): a failure's traceback, like --debug."""
    return environ.get("LEDGER_DEBUG", "") in ("1", "true")


def ingest_ack_wait_from_env(environ: Mapping[str, str] = os.environ) -> float:
    """LEDGER_INGEST_ACK_WAIT_SECONDS: the ingest consumer's AckWait, 1-3600 s."""
    text = environ.get("LEDGER_INGEST_ACK_WAIT_SECONDS", "")
    if not text.strip():
        return DEFAULT_INGEST_ACK_WAIT_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 1.0 <= seconds <= 3600.0:
        raise ConfigError(f"LEDGER_INGEST_ACK_WAIT_SECONDS must be 1-3600, not {text!r}")
    return seconds


def eventsourcing_env(database_url: str) -> dict[str, str]:
    """Translate a database URL into the `eventsourcing` library's environment.

    Persistence is always set explicitly: an unset PERSISTENCE_MODULE silently means in-memory.
    """
    parts = urlsplit(database_url)
    if parts.scheme == "sqlite":
        path = unquote(parts.path)
        # sqlite:///relative.db -> "relative.db"; sqlite:////abs/path.db -> "/abs/path.db"
        path = path[1:] if path.startswith("/") else path
        if not path:
            raise ConfigError(f"no database file in {database_url!r}")
        if path != ":memory:":
            parent = Path(path).expanduser().resolve().parent
            if not parent.is_dir():
                raise ConfigError(f"directory of the database file does not exist: {parent}")
        return {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": path,
            "SQLITE_LOCK_TIMEOUT": "10",
            "APPLICATION_RECORDER_TOPIC": "ledger.store.sqlite_recorder:LedgerSQLiteRecorder",
        }
    if parts.scheme in ("postgresql", "postgres"):
        if not parts.path.strip("/"):
            raise ConfigError(f"no database name in {database_url!r}")
        query = parse_qs(parts.query)
        # libpq also takes host/port/user/password as query parameters (e.g. a socket dir).
        return {
            "PERSISTENCE_MODULE": "ledger.store.postgres_recorder:LedgerPostgresFactory",
            "POSTGRES_DBNAME": unquote(parts.path.strip("/")),
            "POSTGRES_HOST": query.get("host", [unquote(parts.hostname or "127.0.0.1")])[0],
            "POSTGRES_PORT": query.get("port", [str(parts.port or 5432)])[0],
            "POSTGRES_USER": query.get("user", [unquote(parts.username or "postgres")])[0],
            "POSTGRES_PASSWORD": query.get("password", [unquote(parts.password or "")])[0],
            "POSTGRES_SCHEMA": query.get("schema", ["public"])[0],
            "POSTGRES_POOL_SIZE": query.get("pool_size", ["4"])[0],
            "POSTGRES_MAX_OVERFLOW": query.get("max_overflow", ["8"])[0],
            # Fail fast (then UNAVAILABLE) rather than hang a caller for the 30 s default.
            "POSTGRES_CONNECT_TIMEOUT": query.get("connect_timeout", ["2"])[0],
            "POSTGRES_LOCK_TIMEOUT": "10",
            "APPLICATION_RECORDER_TOPIC": "ledger.store.postgres_recorder:LedgerPostgresRecorder",
        }
    raise ConfigError(
        f"unsupported database URL {database_url!r}: use sqlite:///PATH or postgresql://..."
    )


def projections_in_process(settings: Settings) -> bool:
    if settings.projections not in ("auto", "in-process", "external"):
        raise ConfigError(
            f"--projections must be auto, in-process or external, not {settings.projections!r}"
        )
    if settings.projections == "auto":
        return settings.database_url.startswith("sqlite:")
    return settings.projections == "in-process"
