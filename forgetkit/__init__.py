"""forgetkit: make a language model forget specific data by training small LoRA adapters."""

import logging

__version__ = "0.1.0"

# peft imports bitsandbytes (the nf4 attack's extra) whenever it is installed, and bitsandbytes warns on
# import about an optional CPU kernel package on machines with AVX-512 BF16: noise in every command.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
