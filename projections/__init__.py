"""Read models fed from the ledger's notification log (contract §2, §4.1)."""
