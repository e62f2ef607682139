"""Answer likelihoods for many answers to the same question, sharing the question's forward pass.

TOFU's truth ratio scores each question's paraphrased answer and five perturbed ones. Run one by
one (or as independent sequences) the question is recomputed for every answer; here it is run once,
its key/value cache is repeated for every answer, and only the answer tokens are computed: about
40% fewer tokens on TOFU. Prompts of equal length are stacked, so no padding enters the prompt
and positions are those of the plain sequence; answers are right-padded and masked.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


@torch.no_grad()
def shared_prompt_nll(
    model: torch.nn.Module,
    pad_token_id: int,
    items: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]],
    max_rows: int = 64,
) -> list[list[float]]:
    """For each (prompt ids, [target ids, ...]): the mean NLL of every target given the prompt.

    Rows (one per target) are sorted by prompt length, then by target length, and cut into batches
    of ``max_rows``: a batch's prompts all have one length (no padding there), its targets little
    padding, and each distinct prompt of a batch is run once.
    """
    device = next(model.parameters()).device
    results: list[list[float]] = [[0.0] * len(targets) for _, targets in items]
    rows = sorted(
        ((n, k) for n, (_, targets) in enumerate(items) for k in range(len(targets))),
        # Within one prompt length, rows ordered by their own target's length: less padding than
        # keeping a record's answers together, and a prompt shared by rows of a batch still runs once.
        key=lambda nk: (len(items[nk[0]][0]), len(items[nk[0]][1][nk[1]]), nk[0], nk[1]),
    )
    was_training = model.training
    model.eval()
    batch: list[tuple[int, int]] = []
    for row in rows + [None]:
        if batch and (row is None or len(batch) >= max_rows or len(items[row[0]][0]) != len(items[batch[0][0]][0])):
            _score_rows(model, pad_token_id, items, batch, results, device)
            batch = []
        if row is not None:
            batch.append(row)
    model.train(was_training)
    return results


def _score_rows(model, pad: int, items, batch: list[tuple[int, int]], results: list[list[float]], device) -> None:
    prompts_used = list(dict.fromkeys(n for n, _ in batch))
    slot = {n: i for i, n in enumerate(prompts_used)}
    prompts = torch.tensor([list(items[n][0]) for n in prompts_used], device=device)
    out = model(input_ids=prompts, use_cache=True)
    last = out.logits[:, -1].float()  # predicts each answer's first token
    owner = torch.tensor([slot[n] for n, _ in batch], device=device)
    cache = out.past_key_values
    cache.reorder_cache(owner)  # one copy of the prompt's keys/values per answer
    targets = [list(items[n][1][k]) for n, k in batch]
    width = max(len(t) for t in targets)
    ids = torch.full((len(targets), width), pad, dtype=torch.long, device=device)
    mask = torch.zeros((len(targets), width), dtype=torch.long, device=device)
    for row, target in enumerate(targets):
        ids[row, : len(target)] = torch.tensor(target, device=device)
        mask[row, : len(target)] = 1
    attention = torch.cat([torch.ones((len(targets), prompts.shape[1]), dtype=torch.long, device=device), mask], 1)
    logits = model(input_ids=ids, attention_mask=attention, past_key_values=cache).logits
    # Softmax only where a target token is predicted, on contiguous (tokens, vocab) rows.
    later = mask[:, 1:].bool()
    totals = F.cross_entropy(last[owner], ids[:, 0], reduction="none")
    rest = F.cross_entropy(logits[:, :-1][later].float(), ids[:, 1:][later], reduction="none")
    row_of = torch.arange(len(targets), device=device).unsqueeze(1).expand_as(later)[later]
    totals = totals.index_add(0, row_of, rest)
    means = (totals / mask.sum(1).clamp(min=1)).tolist()
    for (n, k), value in zip(batch, means):
        results[n][k] = value
