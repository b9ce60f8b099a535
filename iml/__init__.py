"""The `iml` command: the embedded demo, the verifier, and the simulated device."""
