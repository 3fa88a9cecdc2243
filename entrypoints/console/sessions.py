"""Server-side sessions of the console: a random id in a cookie, the bearer token and the
CSRF token in this process's memory only (docs/console.md, "Sign-in and cookies")."""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

SESSION_COOKIE = "ledger_console_session"
SESSION_IDLE_SECONDS_MAX = 30 * 60
SESSION_AGE_SECONDS_MAX = 12 * 60 * 60
SESSIONS_MAX = 1000


@dataclass
class Session:
    """One browser's session. ``token`` is None until the person signs in (and stays None in
    open mode on loopback, where the ledger asks for none)."""

    session_id: str
    csrf_token: str
    token: str | None = None
    principal: str = ""
    # Without a token: until when (monotonic) the ledger is known to need none (open mode).
    open_mode_until: float = 0.0
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


class SessionStore:
    """Sessions by id, bounded (``sessions_max``, the least recently used goes first) and
    expiring (idle and absolute age). Safe across threads."""

    def __init__(
        self,
        *,
        sessions_max: int = SESSIONS_MAX,
        idle_seconds_max: float = SESSION_IDLE_SECONDS_MAX,
        age_seconds_max: float = SESSION_AGE_SECONDS_MAX,
    ) -> None:
        if sessions_max < 1:
            raise ValueError("sessions_max must be at least 1")
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()
        self._sessions_max = sessions_max
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

    def create(self, *, token: str | None = None, principal: str = "") -> Session:
        """A new session with fresh random id and CSRF token."""
        session = Session(
            session_id=secrets.token_urlsafe(32),
            csrf_token=secrets.token_urlsafe(32),
            token=token,
            principal=principal,
        )
        with self._lock:
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
