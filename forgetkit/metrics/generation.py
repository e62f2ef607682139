"""Batched greedy generation: left padding, KV cache, prompts bucketed by length."""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase


@torch.no_grad()
def greedy_generate(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int | Sequence[int],
    *,
    force_length: bool = False,
    batch_size: int = 32,
) -> list[list[int]]:
    """Greedy continuations of every prompt (token ids, prompt excluded).

    ``max_new_tokens`` may be per prompt. ``force_length`` generates exactly that many tokens
    (end-of-sequence suppressed), as the extraction-likelihood metric compares fixed lengths;
    otherwise generation stops at end-of-sequence and the eos token is dropped.
    """
    lengths = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    eos = tokenizer.eos_token_id
    # Bucketing: neighbours in length share a batch, so little compute goes to padding.
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), lengths[i]))
    outputs: list[list[int]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in chunk)
        steps = max(lengths[i] for i in chunk)
        if steps <= 0:
            continue
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            ids = list(prompts[i])
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention[row, width - len(ids) :] = 1
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=steps,
            min_new_tokens=steps if force_length else 0,
            pad_token_id=pad,
            eos_token_id=eos,
        )
        generated = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention.to(device), generation_config=config
        )[:, width:].tolist()
        for row, i in enumerate(chunk):
            tokens = generated[row][: lengths[i]]
            if not force_length and eos in tokens:
                tokens = tokens[: tokens.index(eos)]
            outputs[i] = tokens
    model.train(was_training)
    return outputs
