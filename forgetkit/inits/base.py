"""The contract for LoRA initialisation schemes."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from peft import PeftModel


@dataclasses.dataclass
class FisherStats:
    """Diagonal Fisher sums per target weight (in the module's own weight layout) and token totals."""

    forget: dict[str, torch.Tensor]
    retain: dict[str, torch.Tensor]
    forget_tokens: int
    retain_tokens: int


class InitScheme:
    """Base class of LoRA init schemes (built-in or plugin).

    A scheme may set peft ``LoraConfig`` fields (``lora_config_overrides``) and then edit the
    adapter of the freshly built model in ``initialise``. A scheme whose starting adapter is
    not zero must subtract it from the base weights so the model still computes the original
    function, and set ``mutates_base``: the trainer then rebuilds that residual base, and the
    saved result is converted back into a plain LoRA of the difference for the original base.
    """

    name: ClassVar[str] = ""
    needs_fisher: ClassVar[bool] = False
    mutates_base: ClassVar[bool] = False

    def lora_config_overrides(self) -> dict[str, Any]:
        return {}

    def initialise(self, model: PeftModel, fisher: FisherStats | None) -> None:
        """Edit the ``default`` adapter (and the base weights if ``mutates_base``) in place."""
