"""Principals and their bearer tokens, from the token file (docs/security.md).

The file holds SHA-256 digests of tokens, never tokens. It is JSON (or TOML when its name
ends in ``.toml``)::

    {"defaults": {"rate_per_second": 100, "burst": 200},
     "principals": [{"name": "web-shop", "token_sha256": "<64 hex>",
                     "scopes": ["query", "reserve"], "channels": ["web"],
                     "rate_per_second": 50, "burst": 100}]}

:class:`TokenRegistry` re-reads the file when it changes (checked at most every
``check_seconds``, on the next call) and on :meth:`TokenRegistry.reload` (SIGHUP). A file
that does not load at start is a configuration error; one that breaks later keeps the
previous principals and logs an error.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger.config import ConfigError
from ledger.use_cases.context import ANONYMOUS as ANONYMOUS_NAME

# The logger name its lines had before the edge left ledger/ (ledger/api/), kept for
# log filters and alerts (docs/decisions.md, issue 18).
log = logging.getLogger("ledger.api.tokens")

SCOPES = ("query", "reserve", "record", "policy", "audit", "admin")
ADMIN = "admin"
DEFAULT_RATE_PER_SECOND = 100.0
DEFAULT_BURST = 200
TOKEN_PREFIX = "ldg_"

_NAME = re.compile(r"^[A-Za-z0-9._:@-]{1,64}$")
_CHANNEL = re.compile(r"^[a-z0-9_-]{1,64}$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_PRINCIPAL_KEYS = {"name", "token_sha256", "scopes", "channels", "rate_per_second", "burst"}
_LIMIT_KEYS = {"rate_per_second", "burst"}


@dataclass(frozen=True)
class Principal:
    """Who a token stands for, what it may do, and for which channels."""

    name: str
    scopes: frozenset[str]
    # None: every channel; otherwise the only channels requests may name.
    channels: frozenset[str] | None = None
    # 0: no limit.
    rate_per_second: float = 0.0
    burst: int = 0
    token_sha256: str = ""

    def has_scope(self, scope: str) -> bool:
        return ADMIN in self.scopes or scope in self.scopes

    def may_act_for(self, channel: str) -> bool:
        return self.channels is None or channel in self.channels


# Open mode (no token file): everyone is this principal, unrestricted and unlimited.
ANONYMOUS_PRINCIPAL = Principal(ANONYMOUS_NAME, frozenset({ADMIN}))


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh random bearer token (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def principal_entry(
    name: str,
    token: str,
    scopes: list[str],
    channels: list[str] | None = None,
    rate_per_second: float | None = None,
    burst: int | None = None,
) -> dict[str, Any]:
    """The token file entry for ``token`` (validated like a loaded one)."""
    entry: dict[str, Any] = {"name": name, "token_sha256": hash_token(token), "scopes": scopes}
    if channels is not None:
        entry["channels"] = channels
    if rate_per_second is not None:
        entry["rate_per_second"] = rate_per_second
    if burst is not None:
        entry["burst"] = burst
    parse_principals({"principals": [entry]}, "the new entry")
    return entry


class TokenFileError(ConfigError):
    """The token file is missing or malformed."""


def _fail(source: str, where: str, problem: str) -> TokenFileError:
    return TokenFileError(f"token file {source}: {where}: {problem}")


def _limits(values: dict[str, Any], source: str, where: str) -> dict[str, Any]:
    limits: dict[str, Any] = {}
    if "rate_per_second" in values:
        rate = values["rate_per_second"]
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate >= 0:
            raise _fail(source, f"{where}.rate_per_second", "must be a number >= 0 (0: no limit)")
        limits["rate_per_second"] = float(rate)
    if "burst" in values:
        burst = values["burst"]
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise _fail(source, f"{where}.burst", "must be an integer >= 1")
        limits["burst"] = burst
    return limits


def parse_principals(data: Any, source: str) -> tuple[Principal, ...]:
    """Validate a decoded token file; unknown keys are refused (a typo must not grant)."""
    if not isinstance(data, dict) or not isinstance(data.get("principals"), list):
        raise _fail(source, "top level", 'must be an object with a "principals" list')
    extra = set(data) - {"principals", "defaults"}
    if extra:
        raise _fail(source, "top level", f"unknown keys {sorted(extra)}")
    defaults_in = data.get("defaults", {})
    if not isinstance(defaults_in, dict) or set(defaults_in) - _LIMIT_KEYS:
        raise _fail(source, "defaults", "may only hold rate_per_second and burst")
    defaults = {"rate_per_second": DEFAULT_RATE_PER_SECOND, "burst": DEFAULT_BURST}
    defaults.update(_limits(defaults_in, source, "defaults"))
    principals: list[Principal] = []
    names: set[str] = set()
    digests: set[str] = set()
    for index, item in enumerate(data["principals"]):
        where = f"principals[{index}]"
        if not isinstance(item, dict):
            raise _fail(source, where, "must be an object")
        extra = set(item) - _PRINCIPAL_KEYS
        if extra:
            raise _fail(source, where, f"unknown keys {sorted(extra)}")
        name = item.get("name")
        if not isinstance(name, str) or not _NAME.match(name) or name == ANONYMOUS_NAME:
            raise _fail(
                source, f"{where}.name", "1-64 characters of [A-Za-z0-9._:@-], not 'anonymous'"
            )
        if name in names:
            raise _fail(source, f"{where}.name", f"{name!r} appears twice")
        digest = item.get("token_sha256")
        if not isinstance(digest, str) or not _SHA256_HEX.match(digest.lower()):
            raise _fail(source, f"{where}.token_sha256", "must be 64 hex digits (SHA-256)")
        digest = digest.lower()
        if digest in digests:
            raise _fail(source, f"{where}.token_sha256", "the same token is given twice")
        scopes = item.get("scopes")
        if (
            not isinstance(scopes, list)
            or not scopes
            or not all(isinstance(s, str) and s in SCOPES for s in scopes)
        ):
            raise _fail(source, f"{where}.scopes", f"a non-empty list of {', '.join(SCOPES)}")
        channels = item.get("channels")
        if channels is not None and (
            not isinstance(channels, list)
            or not channels
            or not all(isinstance(c, str) and _CHANNEL.match(c) for c in channels)
        ):
            raise _fail(
                source,
                f"{where}.channels",
                "a non-empty list of channels ([a-z0-9_-]{1,64}); omit it for every channel",
            )
        limits = {**defaults, **_limits(item, source, where)}
        names.add(name)
        digests.add(digest)
        principals.append(
            Principal(
                name=name,
                scopes=frozenset(scopes),
                channels=None if channels is None else frozenset(channels),
                rate_per_second=limits["rate_per_second"],
                burst=limits["burst"],
                token_sha256=digest,
            )
        )
    return tuple(principals)


def load_token_file(path: str | Path) -> tuple[Principal, ...]:
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        raise TokenFileError(f"token file {source}: cannot read: {error.strerror}") from None
    try:
        if source.endswith(".toml"):
            data: Any = tomllib.loads(raw.decode("utf-8"))
        else:
            data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise TokenFileError(f"token file {source}: not valid: {error}") from None
    return parse_principals(data, source)


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


class TokenRegistry:
    """The principals of a token file, reloaded when the file changes."""

    def __init__(
        self,
        path: str,
        *,
        check_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._check_seconds = check_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp = _stamp(path)
        self._principals = load_token_file(path)  # at start a broken file is fatal
        self._next_check = clock() + check_seconds
        self.reloads = 0

    @property
    def principals(self) -> tuple[Principal, ...]:
        return self._principals

    def authenticate(self, token: str) -> Principal | None:
        """The principal of ``token``, or None. Every digest is compared in constant time."""
        self._maybe_reload()
        digest = hash_token(token)
        found = None
        for principal in self._principals:
            if hmac.compare_digest(principal.token_sha256, digest):
                found = principal
        return found

    def reload(self) -> bool:
        """Re-read the file now; on failure keep the previous principals and log an error."""
        with self._lock:
            self._stamp = _stamp(self.path)
            self._next_check = self._clock() + self._check_seconds
            try:
                principals = load_token_file(self.path)
            except TokenFileError as error:
                log.error(
                    "%s; keeping the %d principals loaded before", error, len(self._principals)
                )
                return False
            self._principals = principals
            self.reloads += 1
        log.info("token file %s loaded: %d principals", self.path, len(principals))
        return True

    def _maybe_reload(self) -> None:
        now = self._clock()
        if now < self._next_check:
            return
        with self._lock:
            if now < self._next_check:
                return
            self._next_check = now + self._check_seconds
            changed = _stamp(self.path) != self._stamp
        if changed:
            self.reload()
