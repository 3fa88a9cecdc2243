"""Named limits (TigerBeetle style): every collection and range the ledger accepts is bounded."""

from datetime import timedelta

IDENTIFIER_LENGTH_MAX = 128
CHANNEL_LENGTH_MAX = 64
SOURCE_LENGTH_MAX = 64
REQUEST_ID_LENGTH_MAX = 128
MESSAGE_ID_LENGTH_MAX = 128
ORDER_REF_LENGTH_MAX = 128
REASON_LENGTH_MAX = 256
CORRELATION_ID_LENGTH_MAX = 128

# Quantities are int64 on the wire; we keep every bucket well inside that range so
# sums over many events can never overflow a signed 64-bit column or client.
QUANTITY_MAX = 10**15

RESERVATION_LINES_MAX = 100
MOVEMENTS_PER_REQUEST_MAX = 500
ELIGIBLE_LOCATIONS_MAX = 1000
PAGE_SIZE_DEFAULT = 100
PAGE_SIZE_MAX = 1000

RESERVATION_TTL_DEFAULT = timedelta(minutes=15)
RESERVATION_TTL_MIN = timedelta(seconds=1)
RESERVATION_TTL_MAX = timedelta(days=30)

# Optimistic-concurrency retries between processes (within a process commands are serialised).
CONFLICT_RETRIES_MAX = 20
