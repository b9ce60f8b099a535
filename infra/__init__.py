"""Ports (storage, bus, KMS, ledger, settings), their embedded adapters, and the envelope formats."""
