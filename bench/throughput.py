"""Fisher and unlearn throughput against a plain forward+backward loop on the same model and batches.

    python bench/throughput.py [--repeats 3] [--out bench/results/throughput.json]

Models: the quickstart's memorised tiny Llama (1.1M parameters) and a wider random Llama
(hidden 512, 4 layers, ~13M parameters). Data: the quickstart forget/retain sets.
The plain loop is what any training script does with the same batches: forward, mean NLL,
backward (and an AdamW step on the LoRA parameters for unlearn). Ratio = ours / plain tokens/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from transformers import LlamaConfig, LlamaForCausalLM

from forgetkit.adapters import build_peft_model, lora_config
from forgetkit.console import console, quiet_libraries
from forgetkit.data import batches, collate, target_token_count
from forgetkit.losses.base import logits_of, mean_nll
from forgetkit.losses.builtin import InvertedHinge
from forgetkit.models import discover_targets, load_model
from forgetkit.quickstart.run import ensure_quickstart_model
from forgetkit.stages.common import load_examples, table
from forgetkit.stages.fisher import accumulate_fisher
from forgetkit.training import RetainStream, TrainConfig, train


def wide_model(folder: Path, tokenizer_dir: Path) -> Path:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=256,
                         tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_fisher(model_dir: str, forget: str, repeats: int) -> dict:
    loaded = load_model(model_dir)
    _, examples = load_examples(forget, loaded)
    targets = discover_targets(loaded.model, "all")
    modules = dict(loaded.model.named_modules())
    weights = [modules[n].weight for n in targets]
    groups = batches(examples, 8)
    tokens = sum(target_token_count(collate(g, loaded.tokenizer.pad_token_id)) for g in groups)

    def plain():
        for w in weights:
            w.requires_grad_(True)
        for group in groups:
            batch = collate(group, loaded.tokenizer.pad_token_id)
            torch.autograd.grad(mean_nll(logits_of(loaded.model, batch), batch["labels"]), weights)

    ours = lambda: accumulate_fisher(loaded, targets, examples, 8, "batch", "forget")
    ours(); plain()  # warm-up
    t_ours = statistics.median(timed(ours) for _ in range(repeats))
    t_plain = statistics.median(timed(plain) for _ in range(repeats))
    return {"tokens": tokens, "ours_tok_s": tokens / t_ours, "plain_tok_s": tokens / t_plain, "ratio": t_plain / t_ours}


def bench_unlearn(model_dir: str, forget: str, retain: str, repeats: int) -> dict:
    config = TrainConfig(lr=1e-3, epochs=2, batch_size=8, micro_batch_size=8)
    results_ours, results_plain = [], []
    for _ in range(repeats + 1):  # first round is warm-up
        loaded = load_model(model_dir)
        _, forget_ex = load_examples(forget, loaded)
        _, retain_ex = load_examples(retain, loaded)
        torch.manual_seed(0)
        model = build_peft_model(loaded.model, lora_config(discover_targets(loaded.model, "all"), 8, 16))
        result = train(model, InvertedHinge(), forget_ex, retain_ex, loaded.tokenizer.pad_token_id, config,
                       accelerator=Accelerator(cpu=True))
        results_ours.append(result.tokens / result.seconds)

        # The same micro-batches (forget and its paired retain), plain NLL fwd+bwd and AdamW.
        pad = loaded.tokenizer.pad_token_id
        plan = []
        for epoch in range(config.epochs):
            stream = RetainStream(retain_ex, config.micro_batch_size, config.seed, epoch)
            for group in batches(forget_ex, config.batch_size, torch.Generator().manual_seed(epoch)):
                plan.append((collate(group, pad), collate(stream.next(), pad)))
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-3)
        model.train()
        tokens = 0
        start = time.perf_counter()
        for f, r in plan:
            loss = mean_nll(logits_of(model, f), f["labels"]) + mean_nll(logits_of(model, r), r["labels"])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tokens += target_token_count(f) + target_token_count(r)
        results_plain.append(tokens / (time.perf_counter() - start))
    ours, plain = statistics.median(results_ours[1:]), statistics.median(results_plain[1:])
    return {"ours_tok_s": ours, "plain_tok_s": plain, "ratio": ours / plain}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/throughput.json"))
    args = parser.parse_args()
    quiet_libraries()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    folder = ensure_quickstart_model()
    forget, retain = str(folder / "forget.jsonl"), str(folder / "retain.jsonl")
    with tempfile.TemporaryDirectory() as scratch:
        models = {"tiny (1.1M)": str(folder / "model"), "wide (13M)": str(wide_model(Path(scratch) / "wide", folder / "model"))}
        results = {}
        for label, model_dir in models.items():
            results[label] = {"fisher": bench_fisher(model_dir, forget, args.repeats),
                              "unlearn": bench_unlearn(model_dir, forget, retain, args.repeats)}
    rows = [(f"{m} {stage}", r["ours_tok_s"], r["plain_tok_s"], r["ratio"])
            for m, stages in results.items() for stage, r in stages.items()]
    console.print(table("Throughput (tokens/s, CPU)", ["stage", "forgetkit", "plain loop", "ratio"], rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"torch_threads": torch.get_num_threads(), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
