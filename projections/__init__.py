"""Read models fed from the ledger's notification log (SPEC §2, §4.1)."""
