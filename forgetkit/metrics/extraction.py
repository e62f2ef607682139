"""Extraction metrics of Jang et al. (2023): extraction likelihood EL_n and memorisation accuracy MA.

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
    model: torch.nn.Module, examples: Sequence[Example], pad_token_id: int, batch_size: int = 16
) -> list[dict[str, list[float]]]:
    """Per example: each target token's NLL and whether the argmax hit it (one forward pass)."""
    device = next(model.parameters()).device
    results: list[dict[str, list[float]]] = [{} for _ in examples]
    was_training = model.training
    model.eval()
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start : start + batch_size])
        batch = {k: v.to(device) for k, v in collate(chunk, pad_token_id).items()}
        logits, targets, mask = shift(logits_of(model, batch), batch["labels"])
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        hits = logits.argmax(-1) == targets
        for row, example in enumerate(chunk):
            keep = mask[row]
            results[start + row] = {"nll": nll[row][keep].tolist(), "hit": hits[row][keep].float().tolist()}
    model.train(was_training)
    return results


def memorisation_accuracy(per_token: Sequence[dict[str, list[float]]]) -> list[float]:
    return [sum(t["hit"]) / len(t["hit"]) if t["hit"] else 0.0 for t in per_token]


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
