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
from forgetkit.losses.base import (LossContext, UnlearningLoss, logits_of, mean_nll, record_mean_nll, shift,
                                   token_log_probs)
from forgetkit.losses.builtin import inverted_hinge_per_record
from forgetkit.metrics.canary import twin_records
from forgetkit.metrics.mia import MIN_K

STATISTICS = ("nll", "min_k_pp", "truth_ratio")
MODES = ("quantile", "hinge", "ihl")
TARGETS = ("frozen", "current")


def record_statistics(logits: torch.Tensor, labels: torch.Tensor, k: float = MIN_K,
                      sigma_floor: float = 0.0) -> dict[str, torch.Tensor]:
    """Per record: mean target-token NLL, and the Min-K%++ score (mean of the lowest k share of the
    tokens' z-scores, z = (log p(x) - mu) / sigma under the model's own distribution), as the audit's
    membership inference computes them, here differentiable.

    With ``sigma_floor`` f > 0 the scores keep their exact values, but each z-score's gradient is that of
    log p(x) / max(sigma, f) with mu and sigma held constant. Where the model is near-certain of another
    token, sigma vanishes (z about -1/sqrt(p(x))): these are the tokens Min-K%++ averages, and their exact
    gradient (through 1/sigma and through sigma itself) reached norms of 1e5 with squared gaps, which
    clipping turns into a step with no room for any other term."""
    logits, targets, mask = shift(logits, labels)
    log_probs = logits.log_softmax(-1)
    chosen = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    probs = log_probs.exp()
    mu = (probs * log_probs).sum(-1)
    sigma = ((probs * log_probs.square()).sum(-1) - mu.square()).clamp(min=1e-12).sqrt()
    zscore = (chosen - mu) / sigma
    if sigma_floor > 0:
        zscore = zscore.detach() + (chosen - chosen.detach()) / sigma.detach().clamp(min=sigma_floor)
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


def squared_or_huber(gaps: torch.Tensor, width: float) -> torch.Tensor:
    """gap^2, or with ``width`` w > 0 the Huber form that equals it within w and grows as 2 w |gap| - w^2
    beyond: a far record then pulls with a bounded gradient instead of one proportional to its gap."""
    if not width:
        return gaps.square()
    size = gaps.abs()
    return torch.where(size <= width, gaps.square(), 2 * width * size - width * width)


def gated_inverted_hinge(logits: torch.Tensor, labels: torch.Tensor, nll: torch.Tensor,
                         unseen_nll: torch.Tensor) -> torch.Tensor:
    """Mode ``ihl``: each forget record, ranked by its NLL and paired with the held-out quantile of its
    rank, takes IHL's push while it is likelier than that quantile and the squared overshoot (a pull
    back that vanishes at the quantile) once it is less likely; mean over the records."""
    order = nll.detach().argsort()
    paired = torch.empty_like(nll)
    paired[order] = matched_quantiles(unseen_nll.float(), nll.numel()).to(nll.dtype)
    below = nll.detach() < paired
    return torch.where(below, inverted_hinge_per_record(logits, labels), (nll - paired).square()).mean()


def perturbed_records(record: Record) -> list[Record]:
    """The record once per wrong answer (``perturbed_answer``: a string or a list), answer swapped."""
    wrong = record.get("perturbed_answer")
    wrong = [wrong] if isinstance(wrong, str) else list(wrong or [])
    if not wrong:
        raise ForgetkitError(f"{record.source}: loss 'unseen' with the truth_ratio statistic needs "
                             "'perturbed_answer' (wrong answers to score the answer against)")
    return [Record(fields={**record.fields, "answer": str(answer)}, source=record.source) for answer in wrong]


def log_truth_ratios(answer_nll: torch.Tensor, perturbed_nll: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """Per record: log of TOFU's truth ratio with the record's own answer in place of the paraphrase,
    mean NLL(answer) - mean over its wrong answers of mean NLL(wrong answer): log P(wrong) - log P(answer),
    probabilities length-normalised and the wrong ones averaged geometrically."""
    sums = torch.zeros_like(answer_nll).index_add(0, owner, perturbed_nll)
    counts = torch.zeros_like(answer_nll).index_add(0, owner, torch.ones_like(perturbed_nll))
    return answer_nll - sums / counts.clamp(min=1)


def _sub_batch(batch: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix):]: value for key, value in batch.items() if key.startswith(prefix)}


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

    For each statistic S in ``statistics`` (per-record mean NLL; Min-K%++ score; log truth ratio), with
    s_(1) <= ... <= s_(n) the forget micro-batch's values sorted and q_i the held-out micro-batch's (i - 1)/(n - 1)
    quantile (no gradient through q; the median when n = 1), scored by the frozen starting model
    (``targets=frozen``, the default) or by the model being trained (``targets=current``):

        quantile mode:  L_S = (1/n) sum_i (s_(i) - q_i)^2        (sorted quantile matching)
        hinge mode:     L_S = (1/n) sum_i relu(d_S (q_i - s_(i)))^2,  d_min_k_pp = -1, otherwise +1

    The log truth ratio (``truth_ratio``, opt-in; records need ``perturbed_answer``) is
    mean NLL(answer) - mean_k mean NLL(wrong answer k): TOFU's truth ratio with the record's own answer
    where TOFU's Forget Quality uses a paraphrase of it, so the audit's paraphrased answers stay unseen
    by training. It is the one score here that compares the answer with wrong ones: lowering the answer's
    likelihood alone (what NLL matching asks) can overshoot it while the wrong answers fall as well.

    Canary twins: a forget record holding a ``secret`` is also compared with ``canary_twins`` copies of
    itself whose secret is swapped for random same-format strings (drawn apart from the audit's
    candidates), all scored by the model being trained: with s_r the record's summed NLL, m_r the
    median of its twins' (no gradient) and n_r its target tokens,

        L_canary = mean_r ((s_r - m_r) / n_r)^2

    Its minimum puts each secret in the middle of same-format strings, where a never-seen secret
    ranks: the audit's canary exposure from the top and from the bottom both about 1 bit. The NLL and
    Min-K%++ terms move the record as a whole and leave the secret ranked first among its twins.

    ihl mode (NLL only; other statistics as in quantile mode): with q_r the held-out quantile paired
    with forget record r by the rank of its NLL s_r,

        L_nll = (1/n) sum_r [s_r < q_r] IHL_r + [s_r >= q_r] (s_r - q_r)^2

    where IHL_r is the Inverted Hinge Loss averaged over r's target tokens (``ihl``'s formula): IHL's
    bounded push, which keeps the model fluent where pushing an NLL up (what a squared gap far from
    the level amounts to) behaves like gradient ascent, until the held-out level, then a pull back that
    vanishes there. (Pulling back with the plain NLL was tried: it overshoots the way back and left the
    forget NLL at 6.2 against held-out 9.5 on the TOFU bench.)

    With ``huber`` = w > 0 each squared gap g^2 becomes g^2 within w and 2 w |g| - w^2 beyond. Why:
    a memorised record starts many nats from the held-out level, and a squared gap's gradient grows with
    that distance, so after clipping the retain term gets almost no share of the step (measured on the
    TOFU bench: the retain NLL rose from 0.11 to 2.4-2.8 nats on the way down).

    With ``sigma_floor`` = f > 0 the Min-K%++ scores keep their exact values (so the gaps are the audit's),
    but the gradient of each token's z-score is d log p(x) / max(sigma, f), mu and sigma held constant.
    Why: a confidently wrong token has a vanishing sigma, and the exact gradient's 1/sigma (norms of 100-400 even
    with Huber gaps, measured on the TOFU bench) leaves the clipped step no room for the retain term.

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
    huber: float = 0.0
    statistics: str = "nll,min_k_pp"
    retain_weight: float = 1.0
    targets: str = "frozen"
    canary_weight: float = 1.0
    canary_twins: int = 7
    sigma_floor: float = 0.0

    def __post_init__(self) -> None:
        if self.huber < 0:
            raise ForgetkitError("loss 'unseen': huber must be 0 (squared gaps) or a positive width")
        if self.sigma_floor < 0:
            raise ForgetkitError("loss 'unseen': sigma_floor must be 0 (the exact gradient) or a positive floor")
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
        if self.canary_twins and self.canary_weight:
            examples = [
                dataclasses.replace(example, twins=tuple(encode(twin_records(record, self.canary_twins))))
                if record.get("secret") is not None else example
                for record, example in zip(records, examples)
            ]
        return self.prepare_holdout(records, examples, encode)

    def prepare_holdout(self, records: Sequence[Record], examples: list[Example],
                        encode: Callable[[Sequence[Record]], list[Example]]) -> list[Example]:
        if "truth_ratio" not in self.chosen:
            return examples
        return [dataclasses.replace(example, perturbed=tuple(encode(perturbed_records(record))))
                for record, example in zip(records, examples)]

    def __call__(self, ctx: LossContext) -> dict[str, torch.Tensor]:
        forget_logits = logits_of(ctx.model, ctx.forget)
        forget = record_statistics(forget_logits, ctx.forget["labels"], sigma_floor=self.sigma_floor)
        if self.targets == "frozen" and ctx.reference is None:
            raise ForgetkitError("loss 'unseen' with targets=frozen needs the frozen model's logits")
        score_unseen = ctx.reference if self.targets == "frozen" else (lambda batch: logits_of(ctx.model, batch))
        with torch.no_grad():
            unseen = record_statistics(score_unseen(ctx.holdout), ctx.holdout["labels"])
        if "truth_ratio" in self.chosen:
            wrong = _sub_batch(ctx.forget, "perturbed_")
            forget["truth_ratio"] = log_truth_ratios(
                forget["nll"], record_mean_nll(logits_of(ctx.model, wrong), wrong["labels"]), wrong["owner"])
            with torch.no_grad():
                wrong = _sub_batch(ctx.holdout, "perturbed_")
                unseen["truth_ratio"] = log_truth_ratios(
                    unseen["nll"], record_mean_nll(score_unseen(wrong), wrong["labels"]), wrong["owner"])
        terms: dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=forget["nll"].device)
        for stat in self.chosen:
            if self.mode == "ihl" and stat == "nll":
                term = gated_inverted_hinge(forget_logits, ctx.forget["labels"], forget["nll"], unseen["nll"])
                terms["match_nll"] = term
                terms["gap_nll"] = (forget["nll"].mean() - unseen["nll"].mean()).detach()
                total = total + term
                continue
            ours = forget[stat].sort().values
            target = matched_quantiles(unseen[stat].float(), ours.numel()).to(ours.dtype)
            if self.mode == "quantile":
                gaps = ours - target
            else:
                # NLL and the truth ratio should rise to the level; Min-K%++ fall to it.
                direction = -1.0 if stat == "min_k_pp" else 1.0
                gaps = torch.relu(direction * (target - ours))
            term = squared_or_huber(gaps, self.huber).mean()
            terms[f"match_{stat}"] = term
            terms[f"gap_{stat}"] = (ours.mean() - unseen[stat].mean()).detach()
            total = total + term
        if self.canary_weight and self.canary_twins:
            # Logged at every step (zero for a micro-batch without secrets), so the log's columns stay the same.
            terms["match_canary"] = torch.zeros((), device=total.device)
            if "twin_input_ids" in ctx.forget:
                twins = _sub_batch(ctx.forget, "twin_")
                with torch.no_grad():
                    twin_sums, _ = record_nll_sums(logits_of(ctx.model, twins), twins["labels"])
                true_sums, true_counts = record_nll_sums(forget_logits, ctx.forget["labels"])
                terms["match_canary"] = twin_median_term(true_sums, true_counts, twin_sums, twins["owner"])
            total = total + self.canary_weight * terms["match_canary"]
        retain = mean_nll(logits_of(ctx.model, ctx.retain), ctx.retain["labels"])
        return {"loss": total + self.retain_weight * retain, **terms, "retain_nll": retain}
