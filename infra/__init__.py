"""The ground floor: ports (storage, bus, KMS) and their adapters (embedded and cloud), the bootstrap that
builds them, the signed ledger, the staging envelope, settings, logs; envelope/ is the sealed IML library."""
