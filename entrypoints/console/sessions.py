"""Server-side sessions of the console: a random id in a cookie, the bearer token and the
CSRF token in this process's memory only (docs/console.md, "Sign-in and cookies").

Only signed-in people have a stored session. A visitor who has not signed in (the sign-in
form, open mode on loopback) carries a random *visitor id* in the same cookie, and the CSRF
token of its forms is an HMAC of that id under a secret of this process: nothing is stored
for them, so no number of anonymous requests can push a signed-in session out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import string
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

SESSION_COOKIE = "ledger_console_session"
SESSION_IDLE_SECONDS_MAX = 30 * 60
SESSION_AGE_SECONDS_MAX = 12 * 60 * 60
SESSIONS_MAX = 10_000
# One principal (one token) keeps at most this many sessions; its oldest goes first.
SESSIONS_PER_PRINCIPAL_MAX = 16
# Anonymous visitors' pending work (a reconcile report in open mode), least recent first out.
VISITOR_PENDING_MAX = 256
_ID_ALPHABET = frozenset(string.ascii_letters + string.digits + "-_")
_ID_LENGTH_MIN, _ID_LENGTH_MAX = 32, 64


def new_id() -> str:
    """A fresh random session or visitor id (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def well_formed_id(value: str | None) -> bool:
    """Whether a cookie value could be an id this console made (length and alphabet)."""
    return (
        value is not None
        and _ID_LENGTH_MIN <= len(value) <= _ID_LENGTH_MAX
        and set(value) <= _ID_ALPHABET
    )


@dataclass
class Session:
    """One browser's session. ``token`` is None for a visitor who has not signed in (never
    stored; ``session_id`` is then the visitor id of the cookie)."""

    session_id: str
    csrf_token: str
    token: str | None = None
    principal: str = ""
    # Work waiting for a confirmation step (the reconcile report), by page.
    pending: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.monotonic)
    seen_at: float = field(default_factory=time.monotonic)

    @property
    def signed_in(self) -> bool:
        return self.token is not None

    def csrf_matches(self, presented: str | None) -> bool:
        """Whether a form's CSRF token is this session's (compared in constant time)."""
        if not presented:
            return False
        return hmac.compare_digest(presented.encode(), self.csrf_token.encode())


class CsrfSigner:
    """Stateless CSRF tokens for visitors who have not signed in: HMAC-SHA-256 of the visitor
    id under a per-process secret (a restart invalidates open forms, as it ends sessions)."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(32)

    def token_for(self, visitor_id: str) -> str:
        digest = hmac.new(self._secret, b"csrf\0" + visitor_id.encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(digest.digest()).decode().rstrip("=")

    def visitor(self, visitor_id: str) -> Session:
        """The (unstored) session of a visitor who has not signed in."""
        return Session(session_id=visitor_id, csrf_token=self.token_for(visitor_id))


class SessionStore:
    """Signed-in sessions by id: expiring (idle and absolute age), at most
    ``per_principal_max`` per principal (its least recently used goes), at most
    ``sessions_max`` in all (expired ones are swept first). Safe across threads."""

    def __init__(
        self,
        *,
        sessions_max: int = SESSIONS_MAX,
        per_principal_max: int = SESSIONS_PER_PRINCIPAL_MAX,
        idle_seconds_max: float = SESSION_IDLE_SECONDS_MAX,
        age_seconds_max: float = SESSION_AGE_SECONDS_MAX,
    ) -> None:
        if sessions_max < 1 or per_principal_max < 1:
            raise ValueError("sessions_max and per_principal_max must be at least 1")
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()
        self._sessions_max = sessions_max
        self._per_principal_max = per_principal_max
        self._idle_seconds_max = idle_seconds_max
        self._age_seconds_max = age_seconds_max

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id (touched), or None."""
        if not session_id:
            return None
        now = time.monotonic()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if self._expired(session, now):
                del self._sessions[session_id]
                return None
            session.seen_at = now
            self._sessions.move_to_end(session_id)
            return session

    def create(self, *, token: str, principal: str = "") -> Session:
        """A new signed-in session with fresh random id and CSRF token."""
        if not token:
            raise ValueError("only signed-in sessions are stored: a token is required")
        session = Session(
            session_id=new_id(), csrf_token=new_id(), token=token, principal=principal
        )
        owner = _owner(session)
        now = time.monotonic()
        with self._lock:
            for stale in [s for s in self._sessions.values() if self._expired(s, now)]:
                del self._sessions[stale.session_id]
            own = [s.session_id for s in self._sessions.values() if _owner(s) == owner]
            for oldest in own[: max(0, len(own) + 1 - self._per_principal_max)]:
                del self._sessions[oldest]
            self._sessions[session.session_id] = session
            while len(self._sessions) > self._sessions_max:
                self._sessions.popitem(last=False)
        return session

    def drop(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def _expired(self, session: Session, now: float) -> bool:
        return (
            now - session.seen_at > self._idle_seconds_max
            or now - session.created_at > self._age_seconds_max
        )


def _owner(session: Session) -> str:
    """Whose session it is: the principal's name, else (a name the ledger did not tell) the
    token's digest."""
    if session.principal:
        return "principal:" + session.principal
    return "token:" + hashlib.sha256((session.token or "").encode()).hexdigest()


class VisitorPending:
    """Pending work of visitors who have not signed in (open mode), by visitor id: bounded,
    the least recently used visitor's goes first. Only CSRF-checked forms add to it."""

    def __init__(self, visitors_max: int = VISITOR_PENDING_MAX) -> None:
        self._pending: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._visitors_max = visitors_max

    def for_visitor(self, visitor_id: str) -> dict[str, Any]:
        with self._lock:
            found = self._pending.get(visitor_id)
            if found is None:
                found = self._pending[visitor_id] = {}
                while len(self._pending) > self._visitors_max:
                    self._pending.popitem(last=False)
            self._pending.move_to_end(visitor_id)
            return found
