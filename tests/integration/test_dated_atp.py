"""Dated ATP through a real server on both backends (issue 17, contract §4.1 `horizon`).

`projected_available` is the channel figure computed as if every inbound transfer due by the
horizon had arrived: the units due join `on_hand` before `available`, `available_to` and the
channel policy are taken, so a safety-stock shortfall and other channels' fences still count.
STRONG (the aggregates) and EVENTUAL (the read model) must answer the same.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from inventory.ledger.v1 import availability_pb2, policy_service_pb2

from tests.integration.test_grpc_ledger import Client, movement
from tests.integration.test_read_models_api import _ts, availability, served

__all__ = ["served"]  # the two-backend server fixture, shared with the read-model tests

SKU = "S-DATED"


def _set_up(client: Client, eta: datetime) -> int:
    """A holds 8 and sends 4 to B and 4 to C, both due at ``eta``. B: nothing on hand,
    safety stock 2 (available -2). C: 3 on hand, all ring-fenced for `market`.
    Returns the ledger position of the last write."""
    client.receive(SKU, "A", 8)
    client.receive(SKU, "C", 3)
    client.policies.SetSafetyStock(
        policy_service_pb2.SetSafetyStockRequest(
            request_id="dated-ss", sku=SKU, location_id="B", qty=2
        ),
        timeout=10,
    )
    client.policies.SetChannelFence(
        policy_service_pb2.SetChannelFenceRequest(
            request_id="dated-fence", sku=SKU, location_id="C", channel="market", qty=3
        ),
        timeout=10,
    )
    results = client.record(
        *(
            movement(
                "transfer_dispatch",
                SKU,
                "A",
                qty=4,
                transfer_id=f"T-{target}",
                to_location_id=target,
                expected_at=_ts(eta),
            )
            for target in ("B", "C")
        )
    )
    return max(r.ledger_position for r in results)


def test_dated_atp_keeps_safety_stock_and_fences(served: Client) -> None:
    """Goal: safety stock 2, nothing on hand and 4 due by the horizon answers 2 (not 4), and
    another channel's fence still takes its share of what arrives, on STRONG and EVENTUAL.
    Method: the set-up above, read at the ETA, one second before it and without a horizon (0),
    both ways."""
    eta = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=6)
    written = _set_up(served, eta)
    reads = {
        "eventual": {"min_position": written},
        "strong": {"consistency": availability_pb2.CONSISTENCY_STRONG},
    }
    for name, how in reads.items():
        due = availability(served, SKU, "web", horizon=_ts(eta), **how)
        # A: 0 left. B: max(0, -2 + 4) = 2. C: max(0, 3 + 4 - 3 fenced for market) = 4.
        assert (due.channel_available, due.projected_available) == (0, 6), name
        figures = {f.location_id: (f.available_to, f.projected_available) for f in due.locations}
        assert figures == {"A": (0, 0), "B": (0, 2), "C": (0, 4)}, name
        # Its own fence costs `market` nothing: B 2 + C 3 + 4.
        market = availability(served, SKU, "market", horizon=_ts(eta), **how)
        assert (market.channel_available, market.projected_available) == (3, 9), name
        early = availability(served, SKU, "web", horizon=_ts(eta - timedelta(seconds=1)), **how)
        assert (early.channel_available, early.projected_available) == (0, 0), name
        undated = availability(served, SKU, "market", **how)
        dated_figures = [
            undated.projected_available,
            *(f.projected_available for f in undated.locations),
        ]
        assert (undated.channel_available, dated_figures) == (3, [0, 0, 0, 0]), name
