"""Checks the CLI runs before it opens, creates or logs anything: listen addresses, ports,
the database. Each failure is a ConfigError with one line that names the problem (exit 2)."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ledger.config import ConfigError, eventsourcing_env

PG_CONNECT_SECONDS = 3
_LIBPQ_KEYS = ("host", "port", "user", "password", "sslmode", "sslrootcert", "sslcert", "sslkey")


class DatabaseUnreachable(ConfigError):
    """PostgreSQL did not accept a connection (the message names host and database only)."""


def parse_listen(flag: str, value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) -> (host, port); port 0 asks for a free one."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{flag} {value!r}: give HOST:PORT (port 0 for any free port)")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{flag} {value!r}: the port must be 1-65535 (or 0 for any free port)")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not _valid_host(bare):
        raise ConfigError(f"{flag} {value!r}: {host!r} is not an IP address or a known host name")
    return bare, int(port_text)


def _valid_host(host: str) -> bool:
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return True
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return False
    return True


def check_listen(flag: str, value: str) -> None:
    """A well-formed address whose port (unless 0) nobody else holds."""
    host, port = parse_listen(flag, value)
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ConfigError(f"{flag} {value}: cannot listen there: {error.strerror}") from None


def check_database(database_url: str) -> None:
    """SQLite: the file can be created or written. PostgreSQL: the server accepts us."""
    env = eventsourcing_env(database_url)  # ConfigError for malformed URLs
    if "SQLITE_DBNAME" in env:
        _check_sqlite_path(env["SQLITE_DBNAME"])
    else:
        _check_postgres(database_url, env)


def check_postgres(database_url: str) -> None:
    """PostgreSQL accepts us (nothing to do for SQLite)."""
    env = eventsourcing_env(database_url)
    if "SQLITE_DBNAME" not in env:
        _check_postgres(database_url, env)


def _check_sqlite_path(name: str) -> None:
    if name == ":memory:":
        return
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_file() or not os.access(path, os.R_OK | os.W_OK):
            raise ConfigError(f"SQLite database {path} is not a writable file")
        return
    # The journal and WAL files go beside the database: the directory must take new files.
    try:
        with tempfile.TemporaryFile(dir=path.resolve().parent):
            pass
    except OSError as error:
        raise ConfigError(
            f"SQLite database {path}: cannot create files in {path.resolve().parent}:"
            f" {error.strerror}"
        ) from None


def _check_postgres(database_url: str, env: dict[str, str]) -> None:
    import psycopg

    password = env["POSTGRES_PASSWORD"]
    where = (
        f"host {env['POSTGRES_HOST']} port {env['POSTGRES_PORT']}"
        f" database {env['POSTGRES_DBNAME']} user {env['POSTGRES_USER']}"
    )
    try:
        psycopg.connect(_without_query(database_url), connect_timeout=PG_CONNECT_SECONDS).close()
    except psycopg.Error as error:
        reason = " ".join(str(error).split())
        if password:
            reason = reason.replace(password, "***")
        raise DatabaseUnreachable(f"PostgreSQL unreachable ({where}): {reason}") from None


def _without_query(database_url: str) -> str:
    """libpq takes the URL as is; only ``connect_timeout`` is ours to set."""
    parts = urlsplit(database_url)
    keep = [
        item
        for item in parts.query.split("&")
        if item and unquote(item.split("=", 1)[0]) in _LIBPQ_KEYS
    ]
    return parts._replace(query="&".join(keep)).geturl()
