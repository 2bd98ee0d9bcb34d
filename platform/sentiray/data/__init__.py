"""Data: the canonical schema, readers of public formats, the synthetic generator, storage."""
