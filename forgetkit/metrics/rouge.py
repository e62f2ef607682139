"""ROUGE-L recall of greedy answers (rouge-score, with stemming), as TOFU reports it."""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import torch
from nltk.stem import porter
from rouge_score import rouge_scorer, tokenize, tokenizers
from transformers import PreTrainedTokenizerBase

from forgetkit.data import Example
from forgetkit.metrics.generation import greedy_generate


class _CachedPorterStemmer:
    """rouge-score's Porter stemmer with its answers remembered: an audit scores the same few
    thousand words again and again, and stemming was most of ROUGE's time."""

    def __init__(self) -> None:
        self.stem = lru_cache(maxsize=1 << 16)(porter.PorterStemmer().stem)


class _StemmingTokenizer(tokenizers.Tokenizer):
    """The tokenisation of ``RougeScorer(use_stemmer=True)``, with the cached stemmer."""

    def __init__(self) -> None:
        self._stemmer = _CachedPorterStemmer()

    def tokenize(self, text: str) -> list[str]:
        return tokenize.tokenize(text, self._stemmer)


_SCORER = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_StemmingTokenizer())


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
