"""The header names of a dead letter (contract §5), in a module of their own so that readers
of the DLQ (``ingest.dlq``, and through it ``ledger console``) need not import the bridge and
the ledger it drives. ``ingest.bridge`` writes these headers (under the same names; checked by
tests/integration/test_console_dead_letters.py)."""

from __future__ import annotations

HEADER_REASON = "Ledger-Error-Reason"
HEADER_FIELD = "Ledger-Error-Field"
HEADER_DESCRIPTION = "Ledger-Error-Description"
HEADER_SUBJECT = "Ledger-Original-Subject"
HEADER_SEQUENCE = "Ledger-Original-Sequence"
HEADER_MSG_ID = "Ledger-Original-Msg-Id"
MSG_ID = "Nats-Msg-Id"
