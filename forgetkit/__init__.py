"""forgetkit: make a language model forget specific data by training small LoRA adapters."""

__version__ = "0.1.0"
