"""How the server listens: plaintext, TLS or mutual TLS, and who may be exposed how.

``check_exposure`` runs before anything is opened: a listen address other than loopback
needs a token file, or ``--insecure`` to run open on purpose (docs/security.md).
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import grpc

from ledger.config import ConfigError, Settings

# The logger name its lines had before the edge left ledger/ (ledger/api/), kept for
# log filters and alerts (docs/decisions.md, issue 18).
log = logging.getLogger("ledger.api.transport")


def listen_host(listen: str) -> str:
    """``127.0.0.1:50051`` -> ``127.0.0.1``; ``[::1]:0`` -> ``::1``; ``:0`` -> ``''``."""
    host = listen.rsplit(":", 1)[0] if ":" in listen else listen
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_loopback(listen: str) -> bool:
    host = listen_host(listen)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name, '' or '0.0.0.0'-like wildcards: reachable from elsewhere


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(f"{what} {path}: cannot read: {error.strerror}") from None


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from the configured PEM files (mutual TLS with a client CA), or None."""
    if not (settings.tls_cert or settings.tls_key or settings.tls_client_ca):
        return None
    if not (settings.tls_cert and settings.tls_key):
        raise ConfigError("TLS needs both --tls-cert and --tls-key")
    key = _read(settings.tls_key, "--tls-key")
    cert = _read(settings.tls_cert, "--tls-cert")
    client_ca = _read(settings.tls_client_ca, "--tls-client-ca") if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def transport_name(settings: Settings) -> str:
    if settings.tls_client_ca:
        return "mutual TLS"
    return "TLS" if settings.tls_cert else "plaintext"


def check_exposure(settings: Settings) -> None:
    """Refuse to expose an open server by accident; warn loudly about risky set-ups."""
    server_credentials(settings)  # fail early on unreadable or half-given TLS files
    loopback = is_loopback(settings.listen)
    if not settings.token_file:
        if not loopback and not settings.insecure:
            raise ConfigError(
                f"--listen {settings.listen} is reachable from other machines: give"
                " --token-file (see docs/security.md), or --insecure to run without"
                " authentication on purpose"
            )
        log.warning(
            "NO AUTHENTICATION: no --token-file, so every caller may call every method for"
            " every channel, without rate limits (%s). Fine on a developer's machine, never"
            " in production.",
            "listening on loopback only" if loopback else "--insecure on a public address",
        )
    elif not loopback and not settings.tls_cert:
        log.warning(
            "bearer tokens travel in plaintext on %s: configure --tls-cert/--tls-key",
            settings.listen,
        )


def bind(server: grpc.aio.Server, settings: Settings) -> int:
    """Add the listening port (TLS when configured); returns the port."""
    credentials = server_credentials(settings)
    if credentials is None:
        port = server.add_insecure_port(settings.listen)
    else:
        port = server.add_secure_port(settings.listen, credentials)
    if port == 0:
        raise OSError(f"could not listen on {settings.listen}")
    return port
