"""Audit speed on the TOFU forget10 set (400 questions) against (a) a one-by-one loop and (b) a raw
batched ``generate`` over the same prompts.

    python bench/audit_speed.py [--tofu ../shared/data/tofu] [--max-new-tokens 64] [--batch-size 16] [--generation-batch-size 32] [--repeats 3]

Model: a random tiny Llama (hidden 256, 4 layers) with a BPE tokenizer trained on the TOFU text,
built in a temporary folder. A random model never emits end-of-sequence, so every answer runs to
``--max-new-tokens``; 64 is about the length of a TOFU answer (mean ~45 tokens here).

- ours: the audit's TOFU suite on the set (forgetkit.audit.evaluate.evaluate_set): a bucketed
  teacher-forced pass, batched greedy answers with ROUGE-L, and every paraphrased and perturbed
  answer's probability in bucketed batches;
- (a) one-by-one: what research scripts do: per question, ``generate`` alone, then one forward
  pass per answer (original, paraphrased, each perturbed);
- (b) raw batched generate: only the greedy answers, ``generate`` over the same prompts in
  batches of the same size in file order, left-padded, nothing else. Compared with our greedy
  answers alone (the generation part of the audit).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from forgetkit.audit.evaluate import EvalOptions, evaluate_set
from forgetkit.audit.sets import load_eval_set
from forgetkit.console import console, quiet_libraries
from forgetkit.data import load_records
from forgetkit.metrics.generation import left_padded
from forgetkit.metrics.rouge import greedy_answers, rouge_l_recall
from forgetkit.models import load_model
from forgetkit.quickstart.model import corpus_text, train_tokenizer
from forgetkit.stages.audit import AuditParams
from forgetkit.stages.common import table

ROOT = Path(__file__).resolve().parents[1]


def build_model(folder: Path, tofu: Path) -> Path:
    records = [r.fields for r in load_records(tofu / "forget10.jsonl")] + [r.fields for r in load_records(tofu / "retain90.jsonl")][:2000]
    tokenizer = train_tokenizer(corpus_text(records), vocab_size=4000)
    tokenizer.model_max_length = 512
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512,
                         tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def one_by_one(model, tokenizer, evalset, max_new_tokens: int) -> dict[str, float]:
    """Runs the loop; returns its generation and likelihood halves' seconds."""
    start = time.perf_counter()
    config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=tokenizer.eos_token_id)
    for example, record in zip(evalset.examples, evalset.records):
        prompt = torch.tensor([example.input_ids[: example.prompt_length]])
        out = model.generate(input_ids=prompt, generation_config=config)[0, prompt.shape[1]:]
        rouge_l_recall(record["answer"], tokenizer.decode(out, skip_special_tokens=True))
    generated = time.perf_counter()
    jobs = [e for e in evalset.examples]
    jobs += evalset.truth_ratio.correct + [e for group in evalset.truth_ratio.perturbed for e in group]
    for example in jobs:
        ids = torch.tensor([example.input_ids])
        logits = model(input_ids=ids).logits[0, :-1].float()
        labels = torch.tensor(example.labels[1:])
        keep = labels != -100
        torch.nn.functional.cross_entropy(logits[keep], labels[keep])
    end = time.perf_counter()
    return {"one_by_one_generation_s": generated - start, "one_by_one_likelihood_s": end - generated}


@torch.no_grad()
def raw_generate(model, tokenizer, evalset, max_new_tokens: int, batch_size: int) -> None:
    config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=tokenizer.eos_token_id)
    prompts = [e.input_ids[: e.prompt_length] for e in evalset.examples]
    for start in range(0, len(prompts), batch_size):
        input_ids, attention = left_padded(prompts[start : start + batch_size], tokenizer.pad_token_id)
        model.generate(input_ids=input_ids, attention_mask=attention, generation_config=config)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tofu", type=Path, default=ROOT.parent / "shared" / "data" / "tofu")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=AuditParams.batch_size)
    parser.add_argument("--generation-batch-size", type=int, default=AuditParams.generation_batch_size)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "audit_speed.json")
    args = parser.parse_args()
    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_model(str(build_model(Path(tmp) / "model", args.tofu)), dtype="float32")
    model, tokenizer = loaded.model, loaded.tokenizer
    evalset = load_eval_set("forget", str(args.tofu / "forget10.jsonl"), loaded, truncate=False,
                            canary_candidates=0, need_truth_ratio=True)
    options = EvalOptions(suites=("tofu",), max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                          generation_batch_size=args.generation_batch_size)
    qa = evalset.examples
    answer_tokens = statistics.mean(len(e.input_ids) - e.prompt_length for e in qa)
    console.print(f"TOFU forget10: {len(qa)} questions, mean answer {answer_tokens:.1f} tokens, "
                  f"{torch.get_num_threads()} CPU threads")
    # Each measure alternates with the one it is compared to, so a machine that slows down or
    # speeds up during the run moves both sides of a ratio alike; medians over --repeats.
    ours, loop = [], []
    for _ in range(args.repeats):
        ours.append(timed(lambda: evaluate_set(model, tokenizer, evalset, options), 1))
        loop.append(one_by_one(model, tokenizer, evalset, args.max_new_tokens))
    halves = {key: statistics.median(run[key] for run in loop) for key in loop[0]}
    greedy, raw = [], []
    for _ in range(args.repeats):
        greedy.append(timed(lambda: greedy_answers(model, tokenizer, qa, args.max_new_tokens, args.generation_batch_size), 1))
        raw.append(timed(lambda: raw_generate(model, tokenizer, evalset, args.max_new_tokens, args.generation_batch_size), 1))
    results = {
        "ours_tofu_suite_s": statistics.median(ours),
        "one_by_one_s": statistics.median(sum(run.values()) for run in loop), **halves,
        "ours_greedy_answers_s": statistics.median(greedy),
        "raw_batched_generate_s": statistics.median(raw),
        "speedup_per_repeat": [sum(run.values()) / t for run, t in zip(loop, ours)],
    }
    results["speedup_vs_one_by_one"] = results["one_by_one_s"] / results["ours_tofu_suite_s"]
    results["greedy_vs_raw_generate"] = results["raw_batched_generate_s"] / results["ours_greedy_answers_s"]
    rows = [(k, v) for k, v in results.items() if not isinstance(v, list)]
    console.print(table("Audit speed, TOFU forget10", ["measure", "value"], rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"questions": len(qa), "mean_answer_tokens": answer_tokens, "max_new_tokens": args.max_new_tokens,
               "batch_size": args.batch_size, "generation_batch_size": args.generation_batch_size, "torch_threads": torch.get_num_threads(), "results": results}
    args.out.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
