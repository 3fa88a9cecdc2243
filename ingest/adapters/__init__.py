"""Source adapters (contract §5): translate non-canonical feeds into canonical movement messages.

- :mod:`ingest.adapters.base`: the interface (:class:`Adapter`, :class:`Record`,
  :class:`AdapterError`);
- :mod:`ingest.adapters.threepl_snapshot`: a 3PL inventory snapshot CSV -> ``cycle_count``
  messages on the bulk lane;
- :mod:`ingest.adapters.wms_transactions`: a WMS inventory-transaction export (JSON lines) ->
  movements on the live lane;
- :mod:`ingest.adapters.publish`: runs an adapter over a file and publishes what it produces.

See docs/adapters.md.
"""

from ingest.adapters.base import Adapter, AdapterError, CanonicalPayload, Record

__all__ = ["Adapter", "AdapterError", "CanonicalPayload", "Record"]
