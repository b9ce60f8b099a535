"""Per-model fingerprints in the weights: derive, embed, read back from a leaked file, and accuse (the
verifier and its evidence report)."""
