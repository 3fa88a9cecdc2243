"""A worked example of a channel connector for the inventory ledger (see README.md)."""

from storefront_connector.connector import Settings, StorefrontConnector

__all__ = ["Settings", "StorefrontConnector"]
