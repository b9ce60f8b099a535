"""The five pipeline steps as plain handlers, and their functions-framework entry points (main.py)."""
