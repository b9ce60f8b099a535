"""The `iml` command: the demo, the verifier, the device reference client, the dev stack and the packager."""
