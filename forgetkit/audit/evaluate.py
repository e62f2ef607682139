"""Every per-set metric of one model: a teacher-forced pass, greedy answers, EL_n, truth ratios and
canary ranks, with per-record values kept beside the set's summary.

Suites pick what runs: ``extraction`` (EL5/EL10, MA, EM, ES, ROUGE-L, canary exposure, the share of
secrets verbatim in the greedy answer), ``tofu``
(probability, ROUGE-L, truth ratio; Forget Quality and Model Utility are computed across sets) and
``mia`` (per-record membership scores; the AUCs are computed across sets). Cheap numbers from the
teacher-forced pass (NLL, probability, EM, MA, ES) are always reported.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from forgetkit.audit.sets import EvalSet
from forgetkit.distributed import Ranks, gather_objects
from forgetkit.metrics import tofu
from forgetkit.metrics.canary import exposure, exposure_from_bottom
from forgetkit.metrics.likelihood import shared_prompt_nll
from forgetkit.metrics.extraction import (
    exact_memorisation,
    extraction_likelihood,
    extraction_strength,
    mean,
    memorisation_accuracy,
    teacher_forced,
)
from forgetkit.metrics.mia import SCORES, membership_scores
from forgetkit.metrics.rouge import greedy_answers, rouge_l_recall

SUITES = ("extraction", "tofu", "mia")


@dataclasses.dataclass
class EvalOptions:
    suites: tuple[str, ...] = SUITES
    max_new_tokens: int = 200
    batch_size: int = 16
    generation_batch_size: int = 32
    include_examples: bool = False
    ranks: Ranks = Ranks(0, 1)  # with several processes each evaluates every N-th record
    generate: bool = True  # False: teacher-forced numbers only (no ROUGE-L, no EL_n); a stopping rule's cheap pass


def mean_nll(per_token: list[dict[str, list[float]]]) -> list[float]:
    return [sum(t["nll"]) / len(t["nll"]) for t in per_token]


def answer_rouge(model, tokenizer, evalset: EvalSet, options: EvalOptions) -> tuple[list[float | None], list[str]]:
    answers = [""] * len(evalset.records)
    qa = evalset.qa
    if qa:
        generated = greedy_answers(
            model, tokenizer, [evalset.examples[i] for i in qa], options.max_new_tokens, options.generation_batch_size
        )
        for i, answer in zip(qa, generated):
            answers[i] = answer
    rouge = [rouge_l_recall(r["answer"], a) if r.is_qa else None for r, a in zip(evalset.records, answers)]
    return rouge, answers


def truth_ratios(model, pad: int, evalset: EvalSet, options: EvalOptions) -> dict[str, list[float | None]]:
    """Raw R per record, and the normalised probability for sets without paraphrases."""
    jobs = evalset.truth_ratio
    n = len(evalset.records)
    out: dict[str, list[float | None]] = {"truth_ratio": [None] * n}
    if jobs is None:
        return out
    # All answers of a question share one pass over the question (see metrics.likelihood).
    items = [
        (correct.input_ids[: correct.prompt_length],
         [e.input_ids[e.prompt_length :] for e in [correct, *jobs.perturbed[number]]])
        for number, correct in enumerate(jobs.correct)
    ]
    scores = shared_prompt_nll(model, pad, items, max_rows=options.batch_size)
    normalised: list[float | None] = [None] * n
    for number, record_index in enumerate(jobs.records):
        correct, *perturbed = [math.exp(-x) for x in scores[number]]
        out["truth_ratio"][record_index] = tofu.truth_ratio(correct, perturbed)
        if not jobs.has_paraphrase:
            normalised[record_index] = tofu.normalised_probability(correct, perturbed)
    if not jobs.has_paraphrase:
        out["normalised_probability"] = normalised
    return out


def canary_exposures(model, pad: int, evalset: EvalSet, options: EvalOptions) -> tuple[list[float | None], list[float | None]]:
    """Each secret's exposure from the top and from the bottom of its candidates' ranking."""
    jobs = evalset.canaries
    top: list[float | None] = [None] * len(evalset.records)
    bottom: list[float | None] = [None] * len(evalset.records)
    if jobs is None:
        return top, bottom
    flat = [e for group in jobs.candidates for e in group]
    # Whole-record log-likelihood: candidates may tokenise to different lengths, so sums, not means.
    totals = [sum(t["nll"]) for t in teacher_forced(model, flat, pad, options.batch_size, detailed=False)]
    offset = 0
    for record_index, group in zip(jobs.records, jobs.candidates):
        scores = totals[offset : offset + len(group)]
        offset += len(group)
        top[record_index] = exposure(scores[0], scores[1:])
        bottom[record_index] = exposure_from_bottom(scores[0], scores[1:])
    return top, bottom


@torch.no_grad()
def evaluate_set(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, evalset: EvalSet, options: EvalOptions
) -> dict[str, Any]:
    """Per-record metrics and the set's summary. With several processes every rank measures its
    share of the records and the shares are gathered in record order, so each rank ends with the
    whole set's result (and every caller, attacks included, runs distributed unchanged)."""
    ranks = options.ranks
    if ranks.world == 1:
        return _summarise(_per_record(model, tokenizer, evalset, options), evalset, options)
    mine = list(range(len(evalset.records)))[ranks.rank::ranks.world]
    shares = gather_objects((mine, _per_record(model, tokenizer, evalset.subset(mine), options)), ranks)
    per: dict[str, list[Any]] = {}
    for indices, share in shares:
        for key, values in share.items():
            column = per.setdefault(key, [None] * len(evalset.records))
            for index, value in zip(indices, values):
                column[index] = value
    return _summarise(per, evalset, options)


def _per_record(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, evalset: EvalSet, options: EvalOptions
) -> dict[str, list[Any]]:
    pad = tokenizer.pad_token_id
    suites = set(options.suites)
    forced = teacher_forced(model, evalset.examples, pad, options.batch_size, zscores="mia" in suites)
    nll = mean_nll(forced)
    per: dict[str, list[Any]] = {
        "nll": nll,
        "probability": [math.exp(-x) for x in nll],
        "em": exact_memorisation(forced),
        "ma": memorisation_accuracy(forced),
        "es": extraction_strength(forced),
    }
    answers: list[str] = []
    if suites & {"extraction", "tofu"} and options.generate:
        per["rouge_l"], answers = answer_rouge(model, tokenizer, evalset, options)
    if "extraction" in suites:
        if options.generate:
            # Does the secret itself come out in the greedy answer (None for records without one)?
            per["secret_in_answer"] = [float(r["secret"] in a) if r.is_qa and r.get("secret") else None
                                       for r, a in zip(evalset.records, answers)]
            el = extraction_likelihood(model, tokenizer, evalset.examples, ns=(5, 10), batch_size=options.generation_batch_size)
            per["el5"], per["el10"] = el[5], el[10]
        per["canary_exposure"], per["canary_exposure_low"] = canary_exposures(model, pad, evalset, options)
    if "tofu" in suites:
        ratios = truth_ratios(model, pad, evalset, options)
        per["truth_ratio"] = ratios["truth_ratio"]
        if "normalised_probability" in ratios:
            per["probability_raw"] = per["probability"]
            per["probability"] = ratios["normalised_probability"]
    if "mia" in suites:
        scores = [membership_scores(t, evalset.target_text(i)) for i, t in enumerate(forced)]
        for name in SCORES:
            per[f"mia_{name}"] = [s[name] for s in scores]
    per["_tokens"] = [len(t["nll"]) for t in forced]  # for the set's perplexity; not reported
    per["_nll_sum"] = [sum(t["nll"]) for t in forced]
    if options.include_examples:
        per["generated_answer"] = answers or [""] * len(evalset.records)
    return per


def _summarise(per: dict[str, list[Any]], evalset: EvalSet, options: EvalOptions) -> dict[str, Any]:
    tokens, nll_sum = per.pop("_tokens"), per.pop("_nll_sum")
    skip = ("mia_", "generated_answer")
    summary: dict[str, Any] = {key: mean(values) for key, values in per.items() if not key.startswith(skip)}
    summary["perplexity"] = math.exp(sum(nll_sum) / max(sum(tokens), 1))
    if "truth_ratio" in per:
        present = [r for r in per["truth_ratio"] if r is not None]
        summary["truth_ratio"] = tofu.truth_ratio_summary(present, forget=evalset.role == "forget") if present else None
    summary["records"] = len(evalset.records)
    if options.include_examples:
        per["record"] = [r.fields for r in evalset.records]
    return {"summary": summary, "per_example": per}
