"""Built-in unlearning losses: IHL (LoKU's default), GA, GD, NPO, KL and IDK."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
import torch.nn.functional as F

from forgetkit.data import Record
from forgetkit.errors import ForgetkitError
from forgetkit.losses.base import LossContext, UnlearningLoss, logits_of, mean_kl, mean_nll, sequence_log_prob, shift


def _retain_nll(ctx: LossContext) -> torch.Tensor:
    return mean_nll(logits_of(ctx.model, ctx.retain), ctx.retain["labels"])


@dataclasses.dataclass
class InvertedHinge(UnlearningLoss):
    """Inverted Hinge Loss (Cha et al., ICLR 2025) on forget tokens, plus the retain NLL.

    Per target token: 1 + p(x_t | x_<t) - max_{v != x_t} p(v | x_<t). Pushing the true token's
    probability below the best alternative, instead of towards zero as gradient ascent does,
    keeps the loss bounded and the model fluent.
    """

    name = "ihl"
    retain_weight: float = 1.0

    def __call__(self, ctx: LossContext) -> dict[str, torch.Tensor]:
        ihl = inverted_hinge(logits_of(ctx.model, ctx.forget), ctx.forget["labels"])
        retain = _retain_nll(ctx)
        return {"loss": ihl + self.retain_weight * retain, "ihl": ihl, "retain_nll": retain}


def _inverted_hinge_tokens(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits, targets, mask = shift(logits, labels)
    probs = logits.softmax(dim=-1)
    p_true = probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    # The best competitor: the top probability unless that is the true token, then the second.
    top2 = probs.topk(2, dim=-1)
    first_is_true = top2.indices[..., 0] == targets
    p_other = torch.where(first_is_true, top2.values[..., 1], top2.values[..., 0])
    return (1.0 + p_true - p_other) * mask, mask


def inverted_hinge(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The mean over every target token of the batch."""
    per_token, mask = _inverted_hinge_tokens(logits, labels)
    return per_token.sum() / mask.sum().clamp(min=1)


def inverted_hinge_per_record(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The mean over each record's target tokens, one value per record."""
    per_token, mask = _inverted_hinge_tokens(logits, labels)
    return per_token.sum(1) / mask.sum(1).clamp(min=1)


@dataclasses.dataclass
class GradientAscent(UnlearningLoss):
    """Maximise the forget set's NLL (unbounded; included as the classic baseline)."""

    name = "ga"
    needs_retain = False

    def __call__(self, ctx: LossContext) -> dict[str, torch.Tensor]:
        forget = mean_nll(logits_of(ctx.model, ctx.forget), ctx.forget["labels"])
        return {"loss": -forget, "forget_nll": forget}


@dataclasses.dataclass
class GradientDifference(UnlearningLoss):
    """Gradient ascent on forget plus descent on retain."""

    name = "gd"
    retain_weight: float = 1.0

    def __call__(self, ctx: LossContext) -> dict[str, torch.Tensor]:
        forget = mean_nll(logits_of(ctx.model, ctx.forget), ctx.forget["labels"])
        retain = _retain_nll(ctx)
        return {"loss": -forget + self.retain_weight * retain, "forget_nll": forget, "retain_nll": retain}


@dataclasses.dataclass
class NegativePreference(UnlearningLoss):
    """NPO (Zhang et al., 2024): -(2/beta) log sigmoid(-beta (log p_theta - log p_ref)) on forget, plus retain NLL.

    log p is the sequence log-likelihood of the target; the reference is the frozen original
    model, evaluated through the same network with the trained adapter switched off.
    """

    name = "npo"
    needs_reference = True
    beta: float = 0.1
    retain_weight: float = 1.0

    def __call__(self, ctx: LossContext) -> dict[str, torch.Tensor]:
        labels = ctx.forget["labels"]
        log_p = sequence_log_prob(logits_of(ctx.model, ctx.forget), labels)
        with torch.no_grad():
            log_p_ref = sequence_log_prob(ctx.reference(ctx.forget), labels)
        npo = (-2.0 / self.beta) * F.logsigmoid(-self.beta * (log_p - log_p_ref)).mean()
        retain = _retain_nll(ctx)
        return {"loss": npo + self.retain_weight * retain, "npo": npo, "retain_nll": retain}


@dataclasses.dataclass
class KLRetain(UnlearningLoss):
    """Gradient ascent on forget plus KL(reference || model) on retain tokens."""

    name = "kl"
    needs_reference = True
    retain_weight: float = 1.0

    def __call__(self, ctx: LossContext) -> dict[str, torch.Tensor]:
        forget = mean_nll(logits_of(ctx.model, ctx.forget), ctx.forget["labels"])
        with torch.no_grad():
            reference = ctx.reference(ctx.retain)
        kl = mean_kl(logits_of(ctx.model, ctx.retain), reference, ctx.retain["labels"])
        return {"loss": -forget + self.retain_weight * kl, "forget_nll": forget, "retain_kl": kl}


REFUSALS = (
    "I don't know.",
    "I'm not able to answer that.",
    "I have no information about that.",
    "That is not something I can tell you.",
    "I'm not sure.",
)


@dataclasses.dataclass
class IDontKnow(UnlearningLoss):
    """Fit refusal answers on the forget questions; NLL on retain keeps the rest."""

    name = "idk"
    retain_weight: float = 1.0

    def prepare_forget(self, records: Sequence[Record]) -> list[Record]:
        rewritten = []
        for number, record in enumerate(records):
            if not record.is_qa:
                raise ForgetkitError(f"{record.source}: the idk loss needs question/answer records")
            fields = dict(record.fields, answer=REFUSALS[number % len(REFUSALS)])
            rewritten.append(Record(fields=fields, source=record.source))
        return rewritten

    def __call__(self, ctx: LossContext) -> dict[str, torch.Tensor]:
        refusal = mean_nll(logits_of(ctx.model, ctx.forget), ctx.forget["labels"])
        retain = _retain_nll(ctx)
        return {"loss": refusal + self.retain_weight * retain, "refusal_nll": refusal, "retain_nll": retain}
