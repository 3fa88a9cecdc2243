"""``ledger token create``: a new bearer token and its token file entry."""

from __future__ import annotations

import argparse
import json
import logging

log = logging.getLogger("ledger")


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


def create_token(args: argparse.Namespace) -> int:
    """``ledger token create``: the token, then its token file entry (JSON)."""
    from entrypoints.grpc.tokens import TokenFileError, new_token, principal_entry

    token = new_token()
    try:
        entry = principal_entry(
            args.name,
            token,
            _split(args.scopes) or [],
            _split(args.channels),
            args.rate,
            args.burst,
        )
    except TokenFileError as error:
        log.error("%s", str(error).replace("token file the new entry: ", ""))
        return 2
    print(token)
    print(json.dumps(entry))
    return 0
