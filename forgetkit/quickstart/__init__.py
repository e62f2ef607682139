"""The embedded default: fictitious people, a tiny model that memorised them, and the full chain."""
