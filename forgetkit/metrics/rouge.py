"""ROUGE-L recall of greedy answers (rouge-score, with stemming), as TOFU reports it."""

from __future__ import annotations

from typing import Sequence

import torch
from rouge_score import rouge_scorer
from transformers import PreTrainedTokenizerBase

from forgetkit.data import Example
from forgetkit.metrics.generation import greedy_generate

_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_recall(reference: str, prediction: str) -> float:
    return _SCORER.score(reference, prediction)["rougeL"].recall


def greedy_answers(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    max_new_tokens: int,
    batch_size: int = 32,
) -> list[str]:
    prompts = [e.input_ids[: e.prompt_length] for e in examples]
    generated = greedy_generate(model, tokenizer, prompts, max_new_tokens, batch_size=batch_size)
    return [tokenizer.decode(tokens, skip_special_tokens=True).strip() for tokens in generated]
