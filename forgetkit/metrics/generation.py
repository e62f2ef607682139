"""Batched generation: left padding, KV cache, prompts bucketed by length."""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase


def left_padded(prompts: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids) :] = torch.tensor(list(ids), dtype=torch.long)
        attention[row, width - len(ids) :] = 1
    return input_ids, attention


def by_length(prompts: Sequence[Sequence[int]], lengths: Sequence[int]) -> list[int]:
    # Bucketing: neighbours in length share a batch, so little compute goes to padding.
    return sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), lengths[i]))


def per_prompt(value: int | Sequence[int], count: int) -> list[int]:
    return [value] * count if isinstance(value, int) else list(value)


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
    lengths = per_prompt(max_new_tokens, len(prompts))
    return _generate(model, tokenizer, prompts, lengths, batch_size, force_length=force_length, samples=1)


@torch.no_grad()
def sample_generate(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int | Sequence[int],
    *,
    samples: int,
    temperature: float = 1.0,
    top_k: int = 50,
    seed: int = 0,
    batch_size: int = 32,
) -> list[list[list[int]]]:
    """``samples`` sampled continuations per prompt; ``batch_size`` counts sequences."""
    lengths = per_prompt(max_new_tokens, len(prompts))
    torch.manual_seed(seed)
    flat = _generate(
        model, tokenizer, prompts, lengths, max(1, batch_size // samples),
        samples=samples, sampling={"do_sample": True, "temperature": temperature, "top_k": top_k},
    )
    return [flat[i * samples : (i + 1) * samples] for i in range(len(prompts))]


def _generate(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    lengths: list[int],
    prompts_per_batch: int,
    *,
    samples: int,
    force_length: bool = False,
    sampling: dict | None = None,
) -> list[list[int]]:
    """Continuations, ``samples`` consecutive entries per prompt, in the prompts' order."""
    device = next(model.parameters()).device
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    order = by_length(prompts, lengths)
    outputs: list[list[int]] = [[] for _ in range(len(prompts) * samples)]
    was_training = model.training
    model.eval()
    for start in range(0, len(order), prompts_per_batch):
        chunk = order[start : start + prompts_per_batch]
        steps = max(lengths[i] for i in chunk)
        if steps <= 0:
            continue
        input_ids, attention = left_padded([prompts[i] for i in chunk], pad)
        config = GenerationConfig(
            **{"do_sample": False, **(sampling or {})},
            max_new_tokens=steps,
            min_new_tokens=steps if force_length else 0,
            pad_token_id=pad,
            eos_token_id=eos,
            num_return_sequences=samples,
        )
        generated = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention.to(device), generation_config=config
        )[:, input_ids.shape[1] :].tolist()
        for row, tokens in enumerate(generated):
            i = chunk[row // samples]
            tokens = tokens[: lengths[i]]
            if not force_length and eos in tokens:
                tokens = tokens[: tokens.index(eos)]
            outputs[i * samples + row % samples] = tokens
    model.train(was_training)
    return outputs
