"""``unseen``: an unlearning loss whose optimum is "looks never seen", not "as unlikely as possible".

IHL, GA and NPO keep lowering the forget records' likelihood for as long as they run, past the level
of data the model never saw, and a membership-inference attacker then finds the forget set by how
*unlikely* it is. This loss instead matches the distribution of per-record membership scores of the
forget records to that of held-out records: by default as the frozen starting model scored them (the
target does not move), or (``targets=current``) under the model being trained.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import torch

from forgetkit.data import Example, Record
from forgetkit.errors import ForgetkitError
from forgetkit.losses.base import LossContext, UnlearningLoss, logits_of, mean_nll, shift, token_log_probs
from forgetkit.metrics.canary import twin_records
from forgetkit.metrics.mia import MIN_K

STATISTICS = ("nll", "min_k_pp")
MODES = ("quantile", "hinge")
TARGETS = ("frozen", "current")


def record_statistics(logits: torch.Tensor, labels: torch.Tensor, k: float = MIN_K) -> dict[str, torch.Tensor]:
    """Per record: mean target-token NLL, and the Min-K%++ score (mean of the lowest k share of the
    tokens' z-scores, z = (log p(x) - mu) / sigma under the model's own distribution), as the audit's
    membership inference computes them, here differentiable."""
    logits, targets, mask = shift(logits, labels)
    log_probs = logits.log_softmax(-1)
    chosen = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    probs = log_probs.exp()
    mu = (probs * log_probs).sum(-1)
    sigma = ((probs * log_probs.square()).sum(-1) - mu.square()).clamp(min=1e-12).sqrt()
    zscore = (chosen - mu) / sigma
    counts = mask.sum(1).clamp(min=1)
    nll = -(chosen * mask).sum(1) / counts
    lowest = []
    for row in range(zscore.shape[0]):
        values = zscore[row][mask[row]]
        if values.numel() == 0:
            lowest.append(zscore.new_zeros(()))
            continue
        count = max(1, math.ceil(values.numel() * k))
        lowest.append(torch.topk(values, count, largest=False).values.mean())
    return {"nll": nll, "min_k_pp": torch.stack(lowest)}


def matched_quantiles(reference: torch.Tensor, count: int) -> torch.Tensor:
    """The reference sample's quantiles at levels (i - 1) / (count - 1), i = 1..count (the median for
    one), linear interpolation: for samples of equal size, exactly the reference sorted, so pairing
    the sorted samples is the one-dimensional optimal transport and a forget batch distributed like
    the held-out one costs nothing."""
    if count == 1:
        levels = torch.full((1,), 0.5, dtype=reference.dtype, device=reference.device)
    else:
        levels = torch.linspace(0.0, 1.0, count, dtype=reference.dtype, device=reference.device)
    return torch.quantile(reference, levels)


def record_nll_sums(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per record: the summed target-token NLL (what the audit ranks a canary by) and the token count."""
    log_probs, mask = token_log_probs(logits, labels)
    return -log_probs.sum(1), mask.sum(1)


def twin_median_term(true_sums: torch.Tensor, true_counts: torch.Tensor, twin_sums: torch.Tensor,
                     owner: torch.Tensor) -> torch.Tensor:
    """mean over the records with twins of ((s_r - m_r) / n_r)^2: s_r the record's summed NLL, m_r the
    median (lower middle for an even count) of its twins' summed NLLs (no gradient), n_r its target tokens.
    Zero when each secret sits in the middle of its twins, as a never-seen secret does on average."""
    rows = owner.unique()
    medians = torch.stack([twin_sums[owner == row].detach().median() for row in rows])
    gaps = (true_sums[rows] - medians) / true_counts[rows].clamp(min=1)
    return gaps.square().mean()


@dataclasses.dataclass
class MatchUnseen(UnlearningLoss):
    """Match the forget records' membership scores to never-seen records' (forgetkit's calibrated loss).

    For each statistic S in ``statistics`` (per-record mean NLL; Min-K%++ score), with s_(1) <= ... <=
    s_(n) the forget micro-batch's values sorted and q_i the held-out micro-batch's (i - 1)/(n - 1)
    quantile (no gradient through q; the median when n = 1), scored by the frozen starting model
    (``targets=frozen``, the default) or by the model being trained (``targets=current``):

        quantile mode:  L_S = (1/n) sum_i (s_(i) - q_i)^2        (sorted quantile matching)
        hinge mode:     L_S = (1/n) sum_i relu(d_S (q_i - s_(i)))^2,  d_nll = +1, d_min_k_pp = -1

    Canary twins: a forget record holding a ``secret`` is also compared with ``canary_twins`` copies of
    itself whose secret is swapped for random same-format strings (drawn apart from the audit's
    candidates), all scored by the model being trained: with s_r the record's summed NLL, m_r the
    median of its twins' (no gradient) and n_r its target tokens,

        L_canary = mean_r ((s_r - m_r) / n_r)^2

    Its minimum puts each secret in the middle of same-format strings, where a never-seen secret
    ranks: the audit's canary exposure from the top and from the bottom both about 1 bit. The NLL and
    Min-K%++ terms move the record as a whole and leave the secret ranked first among its twins.

    Loss = sum_S L_S + canary_weight * L_canary + retain_weight * retain NLL. The quantile mode's
    minimum is reached exactly when the forget scores are distributed like held-out ones: it pulls an
    over-forgotten record back as hard as it pushes a remembered one. The hinge mode only pushes until
    the held-out level.

    Why frozen targets: with ``current`` targets the forget and held-out scores can also meet by both
    degrading (measured: a quickstart run at lr 4e-3 "matched" at NLL ~17 on every set), since nothing
    pins the held-out side; the frozen model's scores of never-seen people are a fixed point to reach.
    """

    name = "unseen"
    needs_holdout = True
    mode: str = "quantile"
    statistics: str = "nll,min_k_pp"
    retain_weight: float = 1.0
    targets: str = "frozen"
    canary_weight: float = 1.0
    canary_twins: int = 7

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ForgetkitError(f"loss 'unseen': mode must be one of {', '.join(MODES)}, not '{self.mode}'")
        if self.targets not in TARGETS:
            raise ForgetkitError(f"loss 'unseen': targets must be one of {', '.join(TARGETS)}, not '{self.targets}'")
        if self.canary_twins < 0:
            raise ForgetkitError("loss 'unseen': canary_twins must be 0 or more")
        self.needs_reference = self.targets == "frozen"  # the trainer then provides the frozen model's logits
        self.chosen = [s.strip() for s in str(self.statistics).split(",") if s.strip()]
        unknown = [s for s in self.chosen if s not in STATISTICS]
        if unknown or not self.chosen:
            raise ForgetkitError(f"loss 'unseen': statistics must be among {', '.join(STATISTICS)}")

    def prepare_examples(self, records: Sequence[Record], examples: list[Example],
                         encode: Callable[[Sequence[Record]], list[Example]]) -> list[Example]:
        if not self.canary_twins or not self.canary_weight:
            return examples
        out = []
        for record, example in zip(records, examples):
            twins = encode(twin_records(record, self.canary_twins)) if record.get("secret") is not None else []
            out.append(dataclasses.replace(example, twins=tuple(twins)))
        return out

    def __call__(self, ctx: LossContext) -> dict[str, torch.Tensor]:
        forget_logits = logits_of(ctx.model, ctx.forget)
        forget = record_statistics(forget_logits, ctx.forget["labels"])
        with torch.no_grad():
            if self.targets == "frozen":
                if ctx.reference is None:
                    raise ForgetkitError("loss 'unseen' with targets=frozen needs the frozen model's logits")
                held_out_logits = ctx.reference(ctx.holdout)
            else:
                held_out_logits = logits_of(ctx.model, ctx.holdout)
            unseen = record_statistics(held_out_logits, ctx.holdout["labels"])
        terms: dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=forget["nll"].device)
        for stat in self.chosen:
            ours = forget[stat].sort().values
            target = matched_quantiles(unseen[stat].float(), ours.numel()).to(ours.dtype)
            if self.mode == "quantile":
                term = (ours - target).square().mean()
            else:
                direction = 1.0 if stat == "nll" else -1.0  # NLL should rise to the level; Min-K%++ fall to it
                term = torch.relu(direction * (target - ours)).square().mean()
            terms[f"match_{stat}"] = term
            terms[f"gap_{stat}"] = (ours.mean() - unseen[stat].mean()).detach()
            total = total + term
        if self.canary_weight and self.canary_twins:
            # Logged at every step (zero for a micro-batch without secrets), so the log's columns stay the same.
            terms["match_canary"] = torch.zeros((), device=total.device)
            if "twin_input_ids" in ctx.forget:
                twins = {key[len("twin_"):]: value for key, value in ctx.forget.items() if key.startswith("twin_")}
                with torch.no_grad():
                    twin_sums, _ = record_nll_sums(logits_of(ctx.model, twins), twins["labels"])
                true_sums, true_counts = record_nll_sums(forget_logits, ctx.forget["labels"])
                terms["match_canary"] = twin_median_term(true_sums, true_counts, twin_sums, twins["owner"])
            total = total + self.canary_weight * terms["match_canary"]
        retain = mean_nll(logits_of(ctx.model, ctx.retain), ctx.retain["labels"])
        return {"loss": total + self.retain_weight * retain, **terms, "retain_nll": retain}
