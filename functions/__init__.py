"""The pipeline: the step chain (chain.py), one module per step (steps/), the runner with Pub/Sub semantics,
the functions-framework entry points (main.py), the events, the object names, and the recipe."""
