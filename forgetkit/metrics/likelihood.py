"""Answer likelihoods for many answers to the same question, sharing the question's forward pass.

TOFU's truth ratio scores each question's paraphrased answer and five perturbed ones. Run one by
one (or as independent sequences) the question is recomputed for every answer. Here each question
runs once, together with the opening all its answers share ("The author's full name is ..."); its
key/value cache is then repeated for each answer and only the rest of the answer is computed. On
TOFU forget10 that leaves about 110k of the 200k tokens a one-by-one loop runs.

Questions are taken a pool at a time: the pool's questions run in one left-padded pass (explicit
positions, so every token sits where it would in the plain sequence), then the pool's answers,
sorted by length, run in batches that draw on any of its questions' caches, so answers of
different questions pad together instead of each question's short and long answers.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import torch
import torch.nn.functional as F

Item = tuple[Sequence[int], Sequence[Sequence[int]]]
POOL_BATCHES = 4  # a pool holds the answers of about this many batches


@dataclass
class _Group:
    """Answers ``answers`` of item ``item``: the prompt plus their shared opening, and what follows."""

    item: int
    answers: list[int]
    prefix: list[int]
    opening: list[int]
    rests: list[list[int]]
    lengths: list[int]


def _shared_opening(targets: Sequence[Sequence[int]]) -> int:
    """Length of the prefix all targets share, leaving every target at least one token of its own."""
    limit = min(len(t) for t in targets) - 1
    length = 0
    while length < limit and all(t[length] == targets[0][length] for t in targets):
        length += 1
    return length


@torch.no_grad()
def shared_prompt_nll(
    model: torch.nn.Module,
    pad_token_id: int,
    items: Sequence[Item],
    max_rows: int = 64,
) -> list[list[float]]:
    """For each (prompt ids, [target ids, ...]): the mean NLL of every target given the prompt.

    ``max_rows`` bounds the answers of one forward pass. A question with more answers than a pool
    holds is split, its prompt then running once per part.
    """
    device = next(model.parameters()).device
    results: list[list[float]] = [[0.0] * len(targets) for _, targets in items]
    pool_rows = POOL_BATCHES * max_rows
    groups = []
    for n, (prompt, targets) in enumerate(items):
        for start in range(0, len(targets), pool_rows):
            answers = list(range(start, min(start + pool_rows, len(targets))))
            chosen = [list(targets[k]) for k in answers]
            c = _shared_opening(chosen)
            groups.append(_Group(n, answers, list(prompt), chosen[0][:c], [t[c:] for t in chosen], [len(t) for t in chosen]))
    groups.sort(key=lambda g: (sum(map(len, g.rests)) / len(g.rests), g.item))
    was_training = model.training
    model.eval()
    pool: list[_Group] = []
    for group in groups + [None]:
        if pool and (group is None or sum(len(g.answers) for g in pool) + len(group.answers) > pool_rows):
            _score_pool(model, pad_token_id, pool, max_rows, results, device)
            pool = []
        if group is not None:
            pool.append(group)
    model.train(was_training)
    return results


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    # A PEFT wrapper forwards its keyword arguments: what counts is the model it wraps.
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _forward_takes(type(inner), "logits_to_keep")


@lru_cache(maxsize=None)
def _forward_takes(model_class: type, name: str) -> bool:
    return name in inspect.signature(model_class.forward).parameters


def _score_pool(model, pad: int, pool: list[_Group], max_rows: int, results: list[list[float]], device) -> None:
    prefixes = [g.prefix + g.opening for g in pool]
    longest = max(len(p) for p in prefixes)
    prefix_ids = torch.full((len(pool), longest), pad, dtype=torch.long, device=device)
    prefix_mask = torch.zeros_like(prefix_ids)
    for row, prefix in enumerate(prefixes):
        prefix_ids[row, longest - len(prefix) :] = torch.tensor(prefix, device=device)
        prefix_mask[row, longest - len(prefix) :] = 1
    positions = (prefix_mask.cumsum(1) - 1).clamp(min=0)
    # Only the logits that predict the opening and each answer's first own token are used.
    window = max(len(g.opening) for g in pool) + 1
    keep = {"logits_to_keep": window} if _accepts_logits_to_keep(model) else {}
    out = model(input_ids=prefix_ids, attention_mask=prefix_mask, position_ids=positions, use_cache=True, **keep)
    tail = out.logits[:, -window:].float()
    opening_nll = torch.zeros(len(pool), device=device)
    for slot, group in enumerate(pool):
        if group.opening:
            c = len(group.opening)
            labels = torch.tensor(group.opening, device=device)
            opening_nll[slot] = F.cross_entropy(tail[slot, window - 1 - c : window - 1], labels, reduction="sum")
    prefix_cache = out.past_key_values

    rows = sorted(
        ((slot, a) for slot, group in enumerate(pool) for a in range(len(group.answers))),
        key=lambda sa: len(pool[sa[0]].rests[sa[1]]),
    )
    for start in range(0, len(rows), max_rows):
        chunk = rows[start : start + max_rows]
        last_chunk = start + max_rows >= len(rows)
        cache = prefix_cache if last_chunk else copy.deepcopy(prefix_cache)
        owner = torch.tensor([slot for slot, _ in chunk], device=device)
        cache.reorder_cache(owner)  # each answer gets its own copy of its question's keys/values
        rests = [pool[slot].rests[a] for slot, a in chunk]
        width = max(len(r) for r in rests)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long, device=device)
        mask = torch.zeros((len(chunk), width), dtype=torch.long, device=device)
        for row, rest in enumerate(rests):
            ids[row, : len(rest)] = torch.tensor(rest, device=device)
            mask[row, : len(rest)] = 1
        attention = torch.cat([prefix_mask[owner], mask], 1)
        answer_positions = prefix_mask.sum(1)[owner].unsqueeze(1) + torch.arange(width, device=device)
        logits = model(input_ids=ids, attention_mask=attention, position_ids=answer_positions, past_key_values=cache).logits
        # Softmax only where an answer token is predicted, on contiguous (tokens, vocab) rows.
        later = mask[:, 1:].bool()
        totals = opening_nll[owner] + F.cross_entropy(tail[owner, -1], ids[:, 0], reduction="none")
        rest_nll = F.cross_entropy(logits[:, :-1][later].float(), ids[:, 1:][later], reduction="none")
        row_of = torch.arange(len(chunk), device=device).unsqueeze(1).expand_as(later)[later]
        totals = totals.index_add(0, row_of, rest_nll)
        lengths = torch.tensor([pool[slot].lengths[a] for slot, a in chunk], device=device).clamp(min=1)
        for (slot, a), value in zip(chunk, (totals / lengths).tolist()):
            group = pool[slot]
            results[group.item][group.answers[a]] = value
