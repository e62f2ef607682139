"""The contract between the trainer and an unlearning loss, and the token-level helpers losses share."""

from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from forgetkit.data import IGNORE_INDEX, Example, Record

Batch = dict[str, torch.Tensor]


@dataclasses.dataclass
class LossContext:
    """What a loss sees at one step.

    ``reference(batch)`` returns the logits of the frozen original model (the adapter's starting
    function) without gradients; the trainer provides it only to losses with ``needs_reference``.
    ``holdout`` is a micro-batch of records the model never saw, given to losses with
    ``needs_holdout`` (what a forgotten record should look like).
    """

    model: nn.Module
    forget: Batch
    retain: Batch | None
    reference: Callable[[Batch], torch.Tensor] | None = None
    holdout: Batch | None = None


class UnlearningLoss:
    """Base class of every unlearning objective (built-in or plugin).

    Subclasses are dataclasses whose fields are their hyper-parameters (set from the CLI with
    ``--loss-param name=value``) and implement ``__call__`` returning a dict of scalar tensors,
    with the optimised objective under ``"loss"`` and any parts worth logging beside it.
    """

    name: ClassVar[str] = ""
    needs_retain: ClassVar[bool] = True
    needs_reference: ClassVar[bool] = False
    needs_holdout: ClassVar[bool] = False

    def prepare_forget(self, records: Sequence[Record]) -> list[Record]:
        """Hook to rewrite forget records before encoding (e.g. swap answers for refusals)."""
        return list(records)

    def prepare_examples(self, records: Sequence[Record], examples: list[Example],
                         encode: Callable[[Sequence[Record]], list[Example]]) -> list[Example]:
        """Hook to attach more to each encoded forget example (e.g. its secret's twins); ``encode``
        encodes records the way the forget set was."""
        return examples

    def prepare_holdout(self, records: Sequence[Record], examples: list[Example],
                        encode: Callable[[Sequence[Record]], list[Example]]) -> list[Example]:
        """The same hook for the held-out records of ``needs_holdout`` losses."""
        return examples

    def __call__(self, ctx: LossContext) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def model_inputs(batch: Batch) -> dict[str, torch.Tensor]:
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def logits_of(model: nn.Module, batch: Batch) -> torch.Tensor:
    return model(**model_inputs(batch)).logits


def shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Align position t's logits with token t+1; return (logits, targets with 0 at ignored, mask)."""
    logits = logits[:, :-1]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 up to float32; float64 stays
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    return logits, targets.masked_fill(~mask, 0), mask


def token_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(label) (zero where masked) and the mask, both (batch, length - 1)."""
    logits, targets, mask = shift(logits, labels)
    log_probs = -F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    return log_probs * mask, mask


def mean_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood over every target token of the batch."""
    log_probs, mask = token_log_probs(logits, labels)
    return -log_probs.sum() / mask.sum().clamp(min=1)


def mean_kl(logits: torch.Tensor, reference_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(reference || model) of the next-token distributions, averaged over the target tokens."""
    logits, _, mask = shift(logits, labels)
    reference, _, _ = shift(reference_logits, labels)
    log_q, log_p = logits.log_softmax(-1), reference.log_softmax(-1)
    per_token = (log_p.exp() * (log_p - log_q)).sum(-1)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def record_mean_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per sequence: the mean NLL of its target tokens."""
    log_probs, mask = token_log_probs(logits, labels)
    return -log_probs.sum(1) / mask.sum(1).clamp(min=1)


def sequence_log_prob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(target | prompt) per sequence (sum over its target tokens)."""
    log_probs, _ = token_log_probs(logits, labels)
    return log_probs.sum(dim=1)
