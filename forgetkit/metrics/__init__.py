"""Metrics over a model and a set of encoded examples; each returns per-example values."""
