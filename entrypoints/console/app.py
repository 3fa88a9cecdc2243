"""The console's web application: sessions, sign-in, CSRF, error pages and the page routes.

Every page is a client of the gRPC API: the signed-in person's bearer token, kept in the
server-side session, goes on each call (``AsyncLedgerClient(channel=..., token=...)`` on the
one shared channel), so the console can never do more than that person's token allows.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc.aio
from inventory_ledger_client import (
    AsyncLedgerClient,
    DeadlineExceeded,
    InvalidArgument,
    LedgerError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    RetryPolicy,
    Unauthenticated,
    Unavailable,
)
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from entrypoints.console.sessions import (
    SESSION_COOKIE,
    CsrfSigner,
    Session,
    SessionStore,
    VisitorPending,
    new_id,
    well_formed_id,
)

log = logging.getLogger("ledger.console")

PACKAGE_DIR = Path(__file__).resolve().parent
TEMPLATES_DIR = PACKAGE_DIR / "templates"
STATIC_DIR = PACKAGE_DIR / "static"
CALL_TIMEOUT_SECONDS = 10.0
SIGN_IN_TIMEOUT_SECONDS = 5.0
TOKEN_LENGTH_MAX = 4096
OPEN_MODE_RECHECK_SECONDS = 30.0
# Request bodies: the count upload (2 MiB of CSV and the multipart framing), a few KiB elsewhere
# (the sign-in form: a token of up to 4096 characters, percent-encoded).
UPLOAD_BODY_BYTES_MAX = 2 * 1024 * 1024 + 64 * 1024
BODY_BYTES_MAX = 32 * 1024
BODY_LIMITS = {"/reconcile": UPLOAD_BODY_BYTES_MAX}
# Sent with every answer: no script, style or form target from anywhere but the console.
SECURITY_HEADERS = (
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)


class InputError(ValueError):
    """Raised by a page when a query parameter or form field is malformed (a 400 page)."""


@dataclass(frozen=True)
class ConsoleConfig:
    """What the console needs to know about itself and its ledger.

    Args:
        channel_factory: makes the one ``grpc.aio`` channel to the ledger (called inside the
            event loop at start-up).
        allow_anonymous: serve visitors who have not signed in, calling without a token (the
            console listens on loopback, so a ledger in open mode needs no sign-in).
        secure_cookies: the console itself serves HTTPS: cookies get ``Secure``.
        channels: sales channels whose availability the positions page shows by default.
        target_label: the ledger's address, shown in the page header.
        trusted_hosts: the names a request's ``Host`` may carry (port aside); empty: any.
        nats_url: the NATS server whose DLQ stream the operations page lists (None: not shown).
        nats_prefix: the stream prefix ``ledger ingest --prefix`` used.
    """

    channel_factory: Callable[[], grpc.aio.Channel]
    allow_anonymous: bool = False
    secure_cookies: bool = False
    channels: tuple[str, ...] = ()
    target_label: str = ""
    call_timeout_seconds: float = CALL_TIMEOUT_SECONDS
    trusted_hosts: tuple[str, ...] = ()
    nats_url: str | None = None
    nats_prefix: str = ""


@dataclass
class Visit:
    """One request's session and the ledger client acting for it."""

    console: Console
    session: Session
    client: AsyncLedgerClient


PageHandler = Callable[[Request, Visit], Awaitable[Response]]


class Console:
    """The application's state: configuration, sessions, the ledger channel, templates."""

    def __init__(self, config: ConsoleConfig, sessions: SessionStore | None = None) -> None:
        self.config = config
        self.sessions = sessions or SessionStore()
        self.csrf = CsrfSigner()
        self.visitor_pending = VisitorPending()
        self.templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
        self.channel: grpc.aio.Channel | None = None
        # Without a token: until when (monotonic) the ledger is known to need none (open mode).
        self.open_mode_until = 0.0

    # ---- sessions and clients ----------------------------------------------------------------

    def session_for(self, request: Request) -> tuple[Session, bool]:
        """The request's signed-in session, else the visitor's unstored one (True: a new
        visitor id, whose cookie must be set). Nothing is stored for a visitor."""
        found = self.known_session(request)
        if found is not None:
            return found, False
        return self.csrf.visitor(new_id()), True

    def known_session(self, request: Request) -> Session | None:
        """The signed-in session of the request's cookie, else the visitor the cookie names,
        else None (no cookie, or not one this console could have set)."""
        cookie = request.cookies.get(SESSION_COOKIE)
        found = self.sessions.get(cookie)
        if found is not None:
            return found
        return self.csrf.visitor(cookie) if cookie and well_formed_id(cookie) else None

    def pending(self, session: Session) -> dict[str, Any]:
        """Where a page keeps work waiting for a confirmation step for this session."""
        if session.signed_in:
            return session.pending
        return self.visitor_pending.for_visitor(session.session_id)

    def client(self, token: str | None) -> AsyncLedgerClient:
        if self.channel is None:
            raise RuntimeError("the console's ledger channel is not open (start-up not run)")
        return AsyncLedgerClient(
            channel=self.channel,
            token=token,
            timeout=self.config.call_timeout_seconds,
            retry=RetryPolicy(max_attempts=2),
        )

    def set_cookie(self, response: Response, session: Session) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            session.session_id,
            path="/",
            httponly=True,
            samesite="strict",
            secure=self.config.secure_cookies,
        )

    def clear_cookie(self, response: Response) -> None:
        response.delete_cookie(
            SESSION_COOKIE,
            path="/",
            httponly=True,
            samesite="strict",
            secure=self.config.secure_cookies,
        )

    # ---- rendering -------------------------------------------------------------------------

    def render(
        self,
        request: Request,
        session: Session,
        template: str,
        context: dict[str, Any],
        status_code: int = 200,
    ) -> HTMLResponse:
        context = {
            "session": session,
            "csrf_token": session.csrf_token,
            "anonymous_allowed": self.config.allow_anonymous,
            "target_label": self.config.target_label,
            "path": request.url.path,
            **context,
        }
        response = self.templates.TemplateResponse(
            request, template, context, status_code=status_code
        )
        response.headers["cache-control"] = "no-store"
        return response

    def error_page(
        self,
        request: Request,
        session: Session,
        status_code: int,
        title: str,
        message: str,
        **context: Any,
    ) -> HTMLResponse:
        return self.render(
            request,
            session,
            "error.html",
            {"status_code": status_code, "title": title, "message": message, **context},
            status_code=status_code,
        )

    def sign_in_redirect(self, request: Request, reason: str = "") -> RedirectResponse:
        # Back to the page after sign-in; a form's target cannot be opened with GET.
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        params = [f"next={quote(target, safe='')}"] if request.method == "GET" else []
        params += [f"reason={reason}"] if reason else []
        return RedirectResponse("/sign-in" + ("?" + "&".join(params) if params else ""), 303)

    def ledger_error(self, request: Request, session: Session, error: LedgerError) -> Response:
        """The page for a failed ledger call (the call's correlation id on it)."""
        common = {"correlation_id": error.correlation_id or "", "method": error.method}
        if isinstance(error, Unauthenticated):
            if session.signed_in:
                # The token was revoked (or the token file replaced): sign the session out.
                self.sessions.drop(session.session_id)
                return self.sign_in_redirect(request, "expired")
            return self.sign_in_redirect(request)
        if isinstance(error, PermissionDenied):
            scope = error.metadata.get("scope", "") if error.reason == "MISSING_SCOPE" else ""
            channel = error.metadata.get("channel", "")
            if scope:
                message = f"Your token lacks the “{scope}” scope, which {error.method} needs."
            elif channel:
                message = f"Your token may not act for the channel “{channel}”."
            else:
                message = error.message
            return self.error_page(
                request,
                session,
                403,
                "Not allowed",
                message,
                missing_scope=scope,
                denied_channel=channel,
                **common,
            )
        if isinstance(error, InvalidArgument):
            violations = [f"{v.field}: {v.description}" for v in error.field_violations]
            return self.error_page(
                request, session, 400, "Not a valid request", error.message, violations=violations
            )
        if isinstance(error, NotFound):
            return self.error_page(request, session, 404, "Not found", error.message, **common)
        if isinstance(error, ResourceExhausted):
            wait = f" Try again in {error.retry_after:.0f} s." if error.retry_after else ""
            return self.error_page(
                request, session, 429, "Too many calls", error.message + wait, **common
            )
        if isinstance(error, Unavailable | DeadlineExceeded):
            return self.error_page(
                request,
                session,
                503,
                "The ledger did not answer",
                f"{error.code.name}: {error.message}",
                **common,
            )
        log.warning("ledger call failed: %s", error)
        return self.error_page(
            request, session, 502, "The ledger refused the call", str(error), **common
        )


def page(handler: PageHandler) -> Callable[[Request], Awaitable[Response]]:
    """A GET page: the session (made if missing), sign-in when needed, ledger errors as
    pages."""

    async def endpoint(request: Request) -> Response:
        console: Console = request.app.state.console
        session, created = console.session_for(request)
        response = await _run(console, request, session, handler)
        if created:
            console.set_cookie(response, session)
        return response

    return endpoint


def form_page(
    handler: PageHandler, *, needs_sign_in: bool = True, max_files: int = 0, max_fields: int = 8
) -> Callable[[Request], Awaitable[Response]]:
    """A POST: refused with 403 before ``handler`` runs unless the form's ``csrf_token`` is
    the session's (``needs_sign_in=False``: the sign-in form itself). Without a session or
    visitor cookie, or (``needs_sign_in``) without sign-in where it is needed, the body is
    not read at all; the form is parsed once, with ``max_files`` and ``max_fields``."""

    async def endpoint(request: Request) -> Response:
        console: Console = request.app.state.console
        session = console.known_session(request)
        if session is None:
            return _csrf_refused(console, request, None)
        if needs_sign_in and not session.signed_in and not console.config.allow_anonymous:
            return console.sign_in_redirect(request)
        form = await request.form(max_files=max_files, max_fields=max_fields)
        presented = form.get("csrf_token")
        if session is None or not session.csrf_matches(
            presented if isinstance(presented, str) else None
        ):
            return _csrf_refused(console, request, session)
        if not needs_sign_in:
            return await handler(request, Visit(console, session, console.client(None)))
        return await _run(console, request, session, handler)

    return endpoint


def _csrf_refused(console: Console, request: Request, session: Session | None) -> Response:
    shown = session or console.csrf.visitor(new_id())
    response = console.error_page(
        request,
        shown,
        403,
        "Form refused",
        "The form's CSRF token is missing or wrong; nothing was done. Reload the page and "
        "try again.",
        csrf_refused=True,
    )
    if session is None:
        console.set_cookie(response, shown)
    return response


async def _run(
    console: Console, request: Request, session: Session, handler: PageHandler
) -> Response:
    if not session.signed_in and not console.config.allow_anonymous:
        return console.sign_in_redirect(request)
    visit = Visit(console, session, console.client(session.token))
    try:
        if not session.signed_in and console.open_mode_until < time.monotonic():
            # Not signed in on loopback: serve only a ledger that asks for no token (one
            # cheap call; Unauthenticated leads to the sign-in page).
            await visit.client.get_projection_status(timeout=SIGN_IN_TIMEOUT_SECONDS)
            console.open_mode_until = time.monotonic() + OPEN_MODE_RECHECK_SECONDS
        return await handler(request, visit)
    except LedgerError as error:
        return console.ledger_error(request, session, error)
    except InputError as error:
        return console.error_page(request, session, 400, "Not a valid request", str(error))


# ---- sign-in and sign-out ------------------------------------------------------------------


async def sign_in_form(request: Request) -> Response:
    console: Console = request.app.state.console
    session, created = console.session_for(request)
    response = _sign_in_page(console, request, session, "", 200)
    if created:
        console.set_cookie(response, session)
    return response


def _sign_in_page(
    console: Console, request: Request, session: Session, problem: str, status_code: int
) -> HTMLResponse:
    reason = request.query_params.get("reason", "")
    notes = {
        "expired": "The ledger no longer accepts your token; sign in again.",
        "signed-out": "You are signed out.",
    }
    return console.render(
        request,
        session,
        "sign_in.html",
        {
            "next": safe_next(request.query_params.get("next", "")),
            "problem": problem,
            "note": notes.get(reason, ""),
        },
        status_code=status_code,
    )


async def sign_in(request: Request, visit: Visit) -> Response:
    """Check the token with one cheap call; on success a NEW session holds it (the old id,
    known before sign-in, is dropped: no session fixation)."""
    console = visit.console
    form = await request.form()
    token = str(form.get("token") or "").strip()
    next_path = safe_next(str(form.get("next") or ""))
    if not token or len(token) > TOKEN_LENGTH_MAX or not token.isprintable():
        return _sign_in_page(console, request, visit.session, "Enter your ledger token.", 400)
    principal = ""
    client = console.client(token)
    try:
        await client.get_projection_status(timeout=SIGN_IN_TIMEOUT_SECONDS)
    except PermissionDenied as denied:
        # A valid token without the `query` scope (an auditor's): authentication passed.
        principal = denied.metadata.get("principal", "")
    except Unauthenticated:
        return _sign_in_page(
            console, request, visit.session, "The ledger does not accept this token.", 401
        )
    except LedgerError as error:
        return _sign_in_page(
            console,
            request,
            visit.session,
            f"The ledger could not check the token ({error.code.name}); try again.",
            503,
        )
    if not principal:
        principal = await _principal_named_by_a_refusal(client)
    if visit.session.signed_in:
        console.sessions.drop(visit.session.session_id)
    session = console.sessions.create(token=token, principal=principal)
    log.info("console sign-in%s", f" as {principal}" if principal else "")
    response = RedirectResponse(next_path or "/positions", status_code=303)
    console.set_cookie(response, session)
    return response


async def _principal_named_by_a_refusal(client: AsyncLedgerClient) -> str:
    """The principal's name, for the header: the ledger names it only when it refuses a
    scope, so ask, one scope after another, calls it refuses by validation once the scope
    check passed (nothing is read or written). '' for a token the ledger refuses none of
    (``admin``), or when a probe fails otherwise."""
    now = dt.datetime.now(dt.UTC)
    probes: list[Callable[[], Awaitable[Any]]] = [
        lambda: client.get_position_as_of("", "", now, timeout=SIGN_IN_TIMEOUT_SECONDS),
        lambda: client.get_item_policy("", timeout=SIGN_IN_TIMEOUT_SECONDS),
        lambda: client.get_reservation("", timeout=SIGN_IN_TIMEOUT_SECONDS),
        lambda: client.record_movements([], timeout=SIGN_IN_TIMEOUT_SECONDS),
    ]
    for probe in probes:
        try:
            await probe()
        except PermissionDenied as denied:
            return str(denied.metadata.get("principal", ""))
        except (InvalidArgument, NotFound):
            continue  # past the scope check: the empty request itself was refused
        except LedgerError:
            return ""
    return ""


async def sign_out(request: Request, visit: Visit) -> Response:
    console = visit.console
    console.sessions.drop(visit.session.session_id)
    response = RedirectResponse("/sign-in?reason=signed-out", status_code=303)
    console.clear_cookie(response)
    return response


def safe_next(value: str) -> str:
    """A local path to return to after sign-in, or "" (never another site)."""
    if not value.startswith("/") or value.startswith("//") or "\\" in value:
        return ""
    if value.startswith(("/sign-in", "/sign-out")):
        return ""
    return value


# ---- the application -------------------------------------------------------------------------


class BodyTooLarge(Exception):
    """Raised from ``receive`` when a request body passes its limit."""


class BodyLimit:
    """Refuses a request body larger than its path's limit with 413: at once by its
    ``Content-Length``, else (chunked) as soon as the bytes received pass it, before any
    handler has seen them whole."""

    def __init__(self, app: ASGIApp, limits: dict[str, int], default: int) -> None:
        self.app = app
        self.limits = limits
        self.default = default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope["path"], self.default)
        length = Headers(scope=scope).get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _too_large(send, limit)
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge()
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge:
            if not started:
                await _too_large(send, limit)


async def _too_large(send: Send, limit: int) -> None:
    body = f"Request body larger than {limit} bytes; nothing was done.\n".encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def home(request: Request) -> Response:
    return RedirectResponse("/positions", status_code=303)


async def health(request: Request) -> Response:
    return Response("ok\n", media_type="text/plain")


def create_app(config: ConsoleConfig, sessions: SessionStore | None = None) -> Starlette:
    """The console as an ASGI application (``uvicorn`` serves it in ``ledger console``)."""
    from entrypoints.console import dead_letters, operations, pages, reconcile

    console = Console(config, sessions)
    dead_letter_source = dead_letters.DeadLetterSource(config.nats_url, config.nats_prefix)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        console.channel = config.channel_factory()
        try:
            yield
        finally:
            channel, console.channel = console.channel, None
            await channel.close()
            await dead_letter_source.close()

    routes = [
        Route("/", home),
        Route("/healthz", health),
        Route("/sign-in", sign_in_form, methods=["GET"]),
        Route("/sign-in", form_page(sign_in, needs_sign_in=False), methods=["POST"]),
        Route("/sign-out", form_page(sign_out), methods=["POST"]),
        Route("/positions", page(pages.positions)),
        Route("/ledger", page(pages.stock_ledger)),
        Route("/ledger.csv", page(pages.stock_ledger_csv)),
        Route("/as-of", page(pages.as_of)),
        Route("/verify", page(pages.verify_form)),
        Route("/verify/run", page(pages.verify_run)),
        Route("/verify/events", page(pages.verify_events)),
        Route("/reconcile", page(reconcile.reconcile_form), methods=["GET"]),
        Route(
            "/reconcile",
            form_page(reconcile.reconcile_upload, max_files=1, max_fields=8),
            methods=["POST"],
        ),
        Route("/reconcile/post", form_page(reconcile.reconcile_post), methods=["POST"]),
        Route("/operations", page(operations.operations)),
        Route("/operations/dead-letters", page(dead_letters.dead_letters)),
        Route("/operations/dead-letters/{sequence:int}", page(dead_letters.dead_letter)),
        Mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.console = console
    app.state.dead_letters = dead_letter_source
    app.add_middleware(BodyLimit, limits=BODY_LIMITS, default=BODY_BYTES_MAX)
    if config.trusted_hosts:
        # DNS rebinding: a page of another name that resolves to this console is refused.
        app.add_middleware(
            TrustedHostMiddleware, allowed_hosts=list(config.trusted_hosts), www_redirect=False
        )
    app.add_middleware(SecurityHeaders)
    return app
