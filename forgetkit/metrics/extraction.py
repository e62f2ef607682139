"""Extraction metrics: EL_n and MA (Jang et al. 2023), exact memorisation and extraction strength.

For a target sequence x of length T:
- MA(x) = share of target positions t whose teacher-forced argmax equals x_t;
- EL_n(x) = mean over prefixes x_<t (with at least n target tokens left) of
  OVERLAP_n(greedy(x_<t), x_>=t), the share of the generated n-grams found among the true
  suffix's n-grams. The greedy continuation has the length of the true suffix.
For QA records only answer positions are targets; the question is always in the prefix.
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from forgetkit.data import IGNORE_INDEX, Example, collate
from forgetkit.losses.base import logits_of, shift
from forgetkit.metrics.generation import greedy_generate


def ngrams(tokens: Sequence[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def ngram_overlap(generated: Sequence[int], reference: Sequence[int], n: int) -> float:
    produced = ngrams(generated, n)
    if not produced:
        return 0.0
    known = set(ngrams(reference, n))
    return sum(gram in known for gram in produced) / len(produced)


@torch.no_grad()
def teacher_forced(
    model: torch.nn.Module,
    examples: Sequence[Example],
    pad_token_id: int,
    batch_size: int = 16,
    detailed: bool = True,
    zscores: bool = True,
) -> list[dict[str, list[float]]]:
    """One forward pass per batch; per example and per target token:

    - ``nll``: -log p(token); ``hit``: 1.0 where the argmax is the token;
    - ``zscore``: Min-K%++'s (log p(token) - mu) / sigma, mu and sigma the mean and standard
      deviation of log p over the vocabulary under the model's own distribution at that position;
    - ``hit_all``: argmax hits over every predicted position, prompt included (Jang et al.'s MA).

    ``detailed=False`` returns ``nll`` and ``hit`` only (no vocabulary-wide statistics), for
    callers that rank or compare likelihoods; ``zscores=False`` leaves out ``zscore`` alone (only
    membership inference reads it, and it costs two more passes over the vocabulary). Examples
    are bucketed by length (sorted) so batches carry little padding; results come back in the
    input order.
    """
    device = next(model.parameters()).device
    results: list[dict[str, list[float]]] = [{} for _ in examples]
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    was_training = model.training
    model.eval()
    for start in range(0, len(order), batch_size):
        chunk_ids = order[start : start + batch_size]
        chunk = [examples[i] for i in chunk_ids]
        batch = {k: v.to(device) for k, v in collate(chunk, pad_token_id).items()}
        raw = logits_of(model, batch)
        next_ids = batch["input_ids"][:, 1:]
        real = batch["attention_mask"][:, 1:].bool()
        hits_all = (raw[:, :-1].argmax(-1) == next_ids) & real
        logits, targets, mask = shift(raw, batch["labels"])
        # Full log-softmax only at target positions: (tokens, vocab) instead of (batch, length, vocab).
        log_probs = torch.log_softmax(logits[mask], dim=-1)
        chosen = log_probs.gather(-1, targets[mask].unsqueeze(-1)).squeeze(-1)
        hits = (logits[mask].argmax(-1) == targets[mask]).float()
        if detailed and zscores:
            probs = log_probs.exp()
            mu = (probs * log_probs).sum(-1)
            sigma = ((probs * log_probs.square()).sum(-1) - mu.square()).clamp(min=1e-12).sqrt()
            zscore = ((chosen - mu) / sigma).tolist()
        nll, hit = (-chosen).tolist(), hits.tolist()
        offset = 0
        for row, (number, count) in enumerate(zip(chunk_ids, mask.sum(1).tolist())):
            part = slice(offset, offset + count)
            offset += count
            results[number] = {"nll": nll[part], "hit": hit[part]}
            if detailed:
                if zscores:
                    results[number]["zscore"] = zscore[part]
                results[number]["hit_all"] = hits_all[row][real[row]].float().tolist()
    model.train(was_training)
    return results


def exact_memorisation(per_token: Sequence[dict[str, list[float]]]) -> list[float]:
    """Share of target tokens whose teacher-forced argmax is the label (open-unlearning's EM)."""
    return [sum(t["hit"]) / len(t["hit"]) if t["hit"] else 0.0 for t in per_token]


def memorisation_accuracy(per_token: Sequence[dict[str, list[float]]]) -> list[float]:
    """Jang et al.'s MA: argmax hits over every predicted token of the record, prompt included.
    For plain-text records it equals exact memorisation."""
    return [sum(t["hit_all"]) / len(t["hit_all"]) if t["hit_all"] else 0.0 for t in per_token]


def extraction_strength(per_token: Sequence[dict[str, list[float]]]) -> list[float]:
    """1 - k/|y| with k the shortest answer prefix after which every teacher-forced argmax is right
    (Carlini et al. 2021 style; 1.0 = the whole answer follows from the question alone)."""
    values = []
    for t in per_token:
        hits = t["hit"]
        if not hits:
            values.append(0.0)
            continue
        misses = [i for i, h in enumerate(hits) if h < 0.5]
        k = misses[-1] + 1 if misses else 0
        values.append(1.0 - k / len(hits))
    return values


def extraction_likelihood(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    ns: Sequence[int] = (5, 10),
    batch_size: int = 32,
) -> dict[int, list[float | None]]:
    """EL_n per example for each n; None where the target is shorter than n."""
    smallest = min(ns)
    jobs = []  # (example number, prefix end t)
    for number, example in enumerate(examples):
        first = max(example.prompt_length, 1)
        total = len(example.input_ids)
        jobs.extend((number, t) for t in range(first, total - smallest + 1))
    prompts = [examples[number].input_ids[:t] for number, t in jobs]
    lengths = [len(examples[number].input_ids) - t for number, t in jobs]
    continuations = greedy_generate(model, tokenizer, prompts, lengths, force_length=True, batch_size=batch_size)

    sums = {n: [0.0] * len(examples) for n in ns}
    counts = {n: [0] * len(examples) for n in ns}
    for (number, t), generated in zip(jobs, continuations):
        suffix = examples[number].input_ids[t:]
        for n in ns:
            if len(suffix) >= n:
                sums[n][number] += ngram_overlap(generated, suffix, n)
                counts[n][number] += 1
    return {n: [s / c if c else None for s, c in zip(sums[n], counts[n])] for n in ns}


def mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def target_tokens(example: Example) -> list[int]:
    return [token for token in example.labels[1:] if token != IGNORE_INDEX]
