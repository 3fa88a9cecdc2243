"""Opaque, tamper-evident page tokens (AIP-158).

A token binds the listing's filter to the last key returned; an HMAC makes edits and
tokens from another listing fail with INVALID_ARGUMENT instead of returning wrong pages.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from entrypoints.grpc.errors import InvalidRequest
from ledger.domain import limits

_MAC_BYTES = 16


class PageTokens:
    def __init__(self, secret: str) -> None:
        self._key = hashlib.sha256(secret.encode()).digest()

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()[:_MAC_BYTES]

    def encode(self, listing: dict[str, Any], after: Any) -> str:
        body = json.dumps({"l": listing, "a": after}, sort_keys=True).encode()
        return base64.urlsafe_b64encode(self._mac(body) + body).decode().rstrip("=")

    def decode(self, token: str, listing: dict[str, Any]) -> Any:
        """The ``after`` key of a token issued for this same listing (None for no token)."""
        if not token:
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            mac, body = raw[:_MAC_BYTES], raw[_MAC_BYTES:]
            if not hmac.compare_digest(mac, self._mac(body)):
                raise ValueError("bad signature")
            data = json.loads(body)
        except ValueError:
            raise InvalidRequest(
                [("page_token", "not a page token issued by this service")]
            ) from None
        if data.get("l") != listing:
            raise InvalidRequest(
                [("page_token", "the other parameters changed since this token was issued")]
            )
        return data["a"]


def page_size_of(requested: int) -> int:
    """0 means the default; larger than the maximum is coerced (AIP-158)."""
    if requested == 0:
        return limits.PAGE_SIZE_DEFAULT
    return min(requested, limits.PAGE_SIZE_MAX)
