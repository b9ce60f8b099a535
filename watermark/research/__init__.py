"""Research code: what a thief may do to a leaked model (the attack suite) and the watermark we measure ours
against (an Uchida-style baseline). Used by tests and benchmarks; never shipped in a function archive."""
