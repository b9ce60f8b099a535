"""The five steps, one module each, each a plain function `handle(event, ports)` returning its outputs (events
the chain routes, functions/chain.py). They know nothing of HTTP, CloudEvents or which adapters they got.
generate and watermark import TensorFlow; encrypt, publish and expire never do."""
