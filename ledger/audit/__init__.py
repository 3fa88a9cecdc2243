"""Audit reads: ledger entries, as-of balances on both time axes, chain verification."""
