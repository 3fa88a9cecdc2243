"""The composition root: builds the gateway, the shop, the sync and the order hooks, and is
the only place that knows how they fit together (``main`` gives it its settings)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from storefront_connector.ledger import LedgerGateway
from storefront_connector.orders import RESERVATION_TTL_SECONDS, OrderHooks
from storefront_connector.shop import ShopServer, StandInShop
from storefront_connector.sync import RECONCILE_SECONDS, StockSync

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    ledger_target: str  # HOST:PORT of the ledger's gRPC endpoint
    channel: str
    skus: tuple[str, ...]
    shop_host: str = "127.0.0.1"
    shop_port: int = 0  # 0: any free port (see StorefrontConnector.shop_url)
    reconcile_seconds: float = RECONCILE_SECONDS
    reservation_ttl_seconds: int = RESERVATION_TTL_SECONDS
    token: str | None = None  # bearer token (scopes: query, reserve; channel: this one)
    root_certificates: bytes | None = None  # PEM CA bundle: TLS to the ledger


class StorefrontConnector:
    """One channel's connector. ``start()``, then ``stop()``; or use it as a context manager."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ledger = LedgerGateway(
            settings.ledger_target,
            token=settings.token,
            root_certificates=settings.root_certificates,
        )
        self.shop = StandInShop(settings.channel)
        self.sync = StockSync(
            self.ledger,
            self.shop,
            settings.channel,
            settings.skus,
            reconcile_seconds=settings.reconcile_seconds,
        )
        self.hooks = OrderHooks(
            self.ledger, settings.channel, ttl_seconds=settings.reservation_ttl_seconds
        )
        self.http = ShopServer(
            self.shop,
            self.hooks,
            self.health,
            host=settings.shop_host,
            port=settings.shop_port,
        )

    @property
    def shop_url(self) -> str:
        return self.http.url

    def health(self) -> dict[str, Any]:
        book = self.sync.book.snapshot()
        return {
            "channel": self.settings.channel,
            "watching": self.sync.watching.is_set(),
            "in_sync": self.sync.in_sync(),
            "watches_started": self.sync.watches_started,
            "reconciliations": self.sync.reconciliations,
            "skus": {
                sku: {"ledger": s.wanted, "position": s.position, "shop": s.published}
                for sku, s in book.items()
            },
        }

    def start(self) -> StorefrontConnector:
        self.sync.start()
        self.http.start()
        log.info(
            "storefront connector for channel %s: ledger %s, shop %s",
            self.settings.channel,
            self.settings.ledger_target,
            self.shop_url,
        )
        return self

    def stop(self) -> None:
        self.sync.stop()  # first, so the watch's end is not taken for an outage
        self.http.stop()
        self.ledger.close()

    def __enter__(self) -> StorefrontConnector:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
