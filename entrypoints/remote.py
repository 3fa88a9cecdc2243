"""How an edge client (``ledger audit``, ``ledger console``) reaches a running ledger: the
target address, TLS files, the bearer token, and the flags that set them.

The TLS credentials and channel options come from the Python client
(``inventory_ledger_client``), so a channel built here is the one ``LedgerClient`` would build
from the same files; :meth:`RemoteTarget.client` builds that client directly.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from inventory_ledger_client._core import channel_credentials, channel_options

from ledger.config import ConfigError

if TYPE_CHECKING:
    from inventory_ledger_client import AsyncLedgerClient, LedgerClient

DEFAULT_TARGET = "127.0.0.1:50051"
TARGET_ENVIRONMENT = "LEDGER_TARGET"
TOKEN_ENVIRONMENT = "LEDGER_TOKEN"
CORRELATION_HEADER = "x-correlation-id"


@dataclass(frozen=True)
class RemoteTarget:
    """A running ledger's gRPC address and the TLS files to reach it with.

    Plaintext when neither ``tls_ca`` nor a client certificate is given; TLS otherwise (the
    system's roots when ``tls_ca`` is empty). A file that cannot be read, or a client
    certificate without its key, raises :class:`ConfigError` with one line.
    """

    target: str
    tls_ca: str = ""
    tls_server_name: str = ""
    tls_client_cert: str = ""
    tls_client_key: str = ""

    @property
    def tls(self) -> bool:
        return bool(self.tls_ca or self.tls_client_cert or self.tls_client_key)

    def check(self) -> RemoteTarget:
        """Raise :class:`ConfigError` for a malformed target or TLS option; return self."""
        check_target(self.target)
        if bool(self.tls_client_cert) != bool(self.tls_client_key):
            raise ConfigError("mutual TLS needs both --tls-client-cert and --tls-client-key")
        if self.tls_server_name and not self.tls:
            raise ConfigError("--tls-server-name needs TLS (--tls-ca or a client certificate)")
        return self

    def credentials(self) -> grpc.ChannelCredentials | None:
        """The channel's TLS credentials, or None for plaintext."""
        self.check()
        if not self.tls:
            return None
        return channel_credentials(
            tls=True,
            root_certificates=_read_pem("--tls-ca", self.tls_ca),
            private_key=_read_pem("--tls-client-key", self.tls_client_key),
            certificate_chain=_read_pem("--tls-client-cert", self.tls_client_cert),
            credentials=None,
        )

    def options(self) -> list[tuple[str, Any]]:
        """Channel options (the TLS name override when ``tls_server_name`` is set)."""
        return channel_options((), self.tls_server_name or None)

    def channel(self) -> grpc.Channel:
        """A blocking channel to the target."""
        credentials = self.credentials()
        if credentials is None:
            return grpc.insecure_channel(self.target, options=self.options())
        return grpc.secure_channel(self.target, credentials, options=self.options())

    def aio_channel(self) -> grpc.aio.Channel:
        """An asyncio channel to the target (create it inside the running event loop)."""
        credentials = self.credentials()
        if credentials is None:
            return grpc.aio.insecure_channel(self.target, options=self.options())
        return grpc.aio.secure_channel(self.target, credentials, options=self.options())

    def client(self, token: str | None, **options: Any) -> LedgerClient:
        """A :class:`LedgerClient` on a channel of its own (closed with the client)."""
        from inventory_ledger_client import LedgerClient

        credentials = self.credentials()
        return LedgerClient(
            self.target,
            token=token,
            credentials=credentials,
            options=self.options(),
            **options,
        )

    def aio_client(self, token: str | None, **options: Any) -> AsyncLedgerClient:
        """An :class:`AsyncLedgerClient` on a channel of its own (create it in the loop)."""
        from inventory_ledger_client import AsyncLedgerClient

        credentials = self.credentials()
        return AsyncLedgerClient(
            self.target,
            token=token,
            credentials=credentials,
            options=self.options(),
            **options,
        )


def check_target(target: str) -> str:
    """``HOST:PORT`` (or a gRPC URI such as ``unix:/path``, ``dns:///host:port``)."""
    if not target:
        raise ConfigError("--target is empty; give HOST:PORT")
    if target.startswith(("unix:", "unix-abstract:", "dns:", "ipv4:", "ipv6:")):
        return target
    host, colon, port = target.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--target {target!r} is not HOST:PORT")
    return target


def call_metadata(token: str | None, correlation_id: str | None = None) -> list[tuple[str, str]]:
    """Metadata for one call on a raw stub: the bearer token and the correlation id."""
    metadata: list[tuple[str, str]] = []
    if token:
        metadata.append(("authorization", f"Bearer {token}"))
    if correlation_id:
        metadata.append((CORRELATION_HEADER, correlation_id))
    return metadata


def add_target_arguments(parser: argparse.ArgumentParser, *, token: bool = True) -> None:
    """``--target`` and the TLS flags; with ``token`` (the CLI) also ``--token-file``.

    The console passes ``token=False``: its users sign in with their own tokens.
    """
    parser.add_argument(
        "--target",
        metavar="HOST:PORT",
        help=f"the ledger's gRPC address (env {TARGET_ENVIRONMENT}, default {DEFAULT_TARGET})",
    )
    parser.add_argument("--tls-ca", default="", help="CA bundle (PEM) to verify the server with")
    parser.add_argument(
        "--tls-server-name", default="", help="TLS name to verify when it differs from the host"
    )
    parser.add_argument("--tls-client-cert", default="", help="client certificate (PEM): mTLS")
    parser.add_argument("--tls-client-key", default="", help="client private key (PEM): mTLS")
    if token:
        parser.add_argument(
            "--token-file",
            metavar="PATH",
            help=f"a file holding the bearer token (env {TOKEN_ENVIRONMENT}: the token itself;"
            " default: none, for a server in open mode)",
        )


def target_from_args(args: argparse.Namespace) -> RemoteTarget:
    """The :class:`RemoteTarget` the flags (or ``LEDGER_TARGET``) name, checked."""
    target = args.target or os.environ.get(TARGET_ENVIRONMENT) or DEFAULT_TARGET
    return RemoteTarget(
        target=target,
        tls_ca=args.tls_ca or "",
        tls_server_name=args.tls_server_name or "",
        tls_client_cert=args.tls_client_cert or "",
        tls_client_key=args.tls_client_key or "",
    ).check()


def token_from_args(args: argparse.Namespace) -> str | None:
    """The bearer token: ``--token-file``'s one line, else ``LEDGER_TOKEN``, else None."""
    path = getattr(args, "token_file", None)
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or str(error)
            raise ConfigError(f"--token-file {path}: {reason}") from None
        lines = text.strip().splitlines()
        if len(lines) != 1 or not lines[0].strip():
            raise ConfigError(f"--token-file {path}: holds {len(lines)} lines; give just the token")
        return lines[0].strip()
    return os.environ.get(TOKEN_ENVIRONMENT) or None


def _read_pem(flag: str, path: str) -> bytes | None:
    if not path:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(f"{flag} {path}: {error.strerror or error}") from None
    if b"-----BEGIN" not in data:
        raise ConfigError(f"{flag} {path}: not a PEM file")
    return data
