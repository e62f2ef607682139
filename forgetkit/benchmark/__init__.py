"""The TOFU benchmark's building blocks: its splits, and the models it unlearns from."""
