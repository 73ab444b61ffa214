"""Applications built on pgbust that are not its demo: each runs from its own declaration."""
