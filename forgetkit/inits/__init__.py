"""LoRA initialisation schemes. Built-ins live in ``builtin``; plugins subclass ``base.InitScheme``."""

from forgetkit.inits.base import FisherStats, InitScheme

__all__ = ["FisherStats", "InitScheme"]
