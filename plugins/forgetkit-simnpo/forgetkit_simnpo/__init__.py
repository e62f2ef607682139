"""SimNPO (Fan et al., 2024, "Simplicity Prevails"): NPO without a reference model.

Per forget sequence y: -(2/beta) log sigmoid(-(beta/|y|) log p(y|x) - gamma), i.e. NPO with the
reference replaced by length normalisation and a margin; plus the retain NLL.

This package exists to show how a third party adds a loss: subclass
``forgetkit.losses.UnlearningLoss`` as a dataclass (its fields become ``--loss-param`` options)
and declare it under the ``forgetkit.losses`` entry-point group. Nothing in forgetkit changes.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from forgetkit.losses import LossContext, UnlearningLoss
from forgetkit.losses.base import logits_of, mean_nll, token_log_probs


@dataclasses.dataclass
class SimNPO(UnlearningLoss):
    name = "simnpo"
    beta: float = 2.5
    gamma: float = 0.0
    retain_weight: float = 1.0

    def __call__(self, ctx: LossContext) -> dict[str, torch.Tensor]:
        log_probs, mask = token_log_probs(logits_of(ctx.model, ctx.forget), ctx.forget["labels"])
        mean_log_p = log_probs.sum(1) / mask.sum(1).clamp(min=1)
        simnpo = (-2.0 / self.beta) * F.logsigmoid(-self.beta * mean_log_p - self.gamma).mean()
        retain = mean_nll(logits_of(ctx.model, ctx.retain), ctx.retain["labels"])
        return {"loss": simnpo + self.retain_weight * retain, "simnpo": simnpo, "retain_nll": retain}
