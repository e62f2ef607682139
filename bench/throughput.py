"""Every stage's speed and peak memory: fisher, unlearn and the audit's teacher-forced pass against a
plain forward(+backward) loop on the same model and batches; init and merge (no loop to compare) alone.

    python bench/throughput.py [--repeats 3] [--out bench/results/throughput.json]

Models: the quickstart's memorised tiny Llama (1.1M parameters) and a wider random Llama
(hidden 512, 4 layers, ~13M parameters). Data: the quickstart forget/retain sets.
The plain loop is what any training script does with the same batches: forward, mean NLL,
backward (and an AdamW step on the LoRA parameters for unlearn). Ratio = ours / plain tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from transformers import LlamaConfig, LlamaForCausalLM

from forgetkit.adapters import build_peft_model, lora_config
from forgetkit.console import console, quiet_libraries
from forgetkit.data import batches, collate, target_token_count
from forgetkit.benchmark.measure import measured, return_freed_memory
from forgetkit.losses.base import logits_of, mean_nll, shift
from forgetkit.metrics.extraction import teacher_forced
from forgetkit.losses.builtin import InvertedHinge
from forgetkit.models import discover_targets, load_model
from forgetkit.quickstart.run import ensure_quickstart_model
from forgetkit.stages.common import load_examples, table
from forgetkit.stages.fisher import FisherParams, accumulate_fisher, run_fisher
from forgetkit.stages.init import InitParams, run_init
from forgetkit.stages.merge import MergeParams, run_merge
from forgetkit.stages.unlearn import UnlearnParams, run_unlearn
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


def costed(fn, repeats: int) -> tuple[float, float]:
    """Median seconds over ``repeats`` runs and the largest peak memory (MiB) seen."""
    seconds, peaks = [], []
    for _ in range(repeats):
        with measured() as m:
            fn()
        seconds.append(m.seconds)
        peaks.append(m.peak_mib)
    return statistics.median(seconds), max(peaks)


def compare(tokens: int, ours: tuple[float, float], plain: tuple[float, float]) -> dict:
    return {"tokens": tokens, "ours_s": ours[0], "plain_s": plain[0], "ours_tok_s": tokens / ours[0],
            "plain_tok_s": tokens / plain[0], "ratio": plain[0] / ours[0], "ours_peak_mib": ours[1],
            "plain_peak_mib": plain[1]}


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
    return compare(tokens, costed(ours, repeats), costed(plain, repeats))


def bench_audit(model_dir: str, forget: str, retain: str, repeats: int) -> dict:
    """The audit's teacher-forced pass (per-token NLL, argmax hits, Min-K%++ statistics) against a
    plain forward + cross-entropy loop over the same length-bucketed batches."""
    loaded = load_model(model_dir)
    examples = load_examples(forget, loaded)[1] + load_examples(retain, loaded)[1]
    pad = loaded.tokenizer.pad_token_id
    order = sorted(examples, key=lambda e: len(e.input_ids))
    groups = [collate(order[i : i + 16], pad) for i in range(0, len(order), 16)]
    tokens = sum(target_token_count(g) for g in groups)

    @torch.no_grad()
    def plain():
        for batch in groups:
            logits, labels, mask = shift(logits_of(loaded.model, batch), batch["labels"])
            torch.nn.functional.cross_entropy(logits[mask], labels[mask], reduction="none").tolist()

    ours = lambda: teacher_forced(loaded.model, examples, pad, 16)
    ours(); plain()  # warm-up
    return compare(tokens, costed(ours, repeats), costed(plain, repeats))


def bench_init_merge(model_dir: str, forget: str, retain: str, scratch: Path) -> dict:
    """Stages with no training-loop counterpart: wall time and peak memory only."""
    out = {}
    with measured() as m:
        run_fisher(model_dir, forget, retain, scratch / "fisher.safetensors", FisherParams())
    out["fisher stage (CLI path)"] = {"seconds": m.seconds, "peak_mib": m.peak_mib}
    with measured() as m:
        run_init(model_dir, scratch / "init", InitParams(scheme="fila", rank=8), fisher=str(scratch / "fisher.safetensors"))
    out["init (FILA, rank 8)"] = {"seconds": m.seconds, "peak_mib": m.peak_mib}
    run_unlearn(model_dir, forget, scratch / "adapter", UnlearnParams(train=TrainConfig(epochs=1, batch_size=8,
                micro_batch_size=8)), retain=retain, init=str(scratch / "init"))
    with measured() as m:
        run_merge(model_dir, str(scratch / "adapter"), scratch / "merged", MergeParams())
    out["merge"] = {"seconds": m.seconds, "peak_mib": m.peak_mib}
    return out


def bench_unlearn(model_dir: str, forget: str, retain: str, repeats: int) -> dict:
    config = TrainConfig(lr=1e-3, epochs=2, batch_size=8, micro_batch_size=8)
    results_ours, results_plain, peaks_ours, peaks_plain, seconds_ours, seconds_plain = [], [], [], [], [], []
    for _ in range(repeats + 1):  # first round is warm-up
        loaded = load_model(model_dir)
        _, forget_ex = load_examples(forget, loaded)
        _, retain_ex = load_examples(retain, loaded)
        torch.manual_seed(0)
        model = build_peft_model(loaded.model, lora_config(discover_targets(loaded.model, "all"), 8, 16))
        with measured() as m:
            result = train(model, InvertedHinge(), forget_ex, retain_ex, loaded.tokenizer.pad_token_id, config,
                           accelerator=Accelerator(cpu=True))
        results_ours.append(result.tokens / result.seconds)
        peaks_ours.append(m.peak_mib)
        seconds_ours.append(result.seconds)

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
        with measured() as m:
            for f, r in plan:
                loss = mean_nll(logits_of(model, f), f["labels"]) + mean_nll(logits_of(model, r), r["labels"])
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                tokens += target_token_count(f) + target_token_count(r)
        results_plain.append(tokens / m.seconds)
        peaks_plain.append(m.peak_mib)
        seconds_plain.append(m.seconds)
    ours, plain = statistics.median(results_ours[1:]), statistics.median(results_plain[1:])
    return {"tokens": tokens, "ours_s": statistics.median(seconds_ours[1:]), "plain_s": statistics.median(seconds_plain[1:]),
            "ours_tok_s": ours, "plain_tok_s": plain, "ratio": ours / plain,
            "ours_peak_mib": max(peaks_ours[1:]), "plain_peak_mib": max(peaks_plain[1:])}


def run_all(models: dict[str, str], forget: str, retain: str, repeats: int, scratch: Path) -> tuple[dict, dict]:
    results, stages = {}, {}
    for label, model_dir in models.items():
        results[label] = {"fisher": bench_fisher(model_dir, forget, repeats),
                          "unlearn": bench_unlearn(model_dir, forget, retain, repeats),
                          "audit": bench_audit(model_dir, forget, retain, repeats)}
        stages[label] = bench_init_merge(model_dir, forget, retain, scratch / f"stages-{label.split()[0]}")
    return results, stages


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/throughput.json"))
    parser.add_argument("--memory-pass", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.memory_pass:
        return_freed_memory()
    quiet_libraries()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    folder = ensure_quickstart_model()
    forget, retain = str(folder / "forget.jsonl"), str(folder / "retain.jsonl")
    with tempfile.TemporaryDirectory() as scratch:
        models = {"tiny (1.1M)": str(folder / "model"), "wide (13M)": str(wide_model(Path(scratch) / "wide", folder / "model"))}
        if args.memory_pass:
            results, stages = run_all(models, forget, retain, 1, Path(scratch))
            args.out.write_text(json.dumps({"results": results, "stages": stages}) + "\n")
            return
        # Times come from this process, with glibc's default allocator. Peak memory comes from a second
        # process that returns freed memory to the system from its start (see forgetkit.benchmark.measure):
        # that costs time, and once a heap has grown its freed blocks are reused without showing up.
        results, stages = run_all(models, forget, retain, args.repeats, Path(scratch) / "timing")
        memory_file = Path(scratch) / "memory.json"
        glibc = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}  # from the first allocation
        subprocess.run([sys.executable, __file__, "--memory-pass", "--out", str(memory_file)], check=True,
                       env={**os.environ, **glibc})
        memory = json.loads(memory_file.read_text())
        for label in models:
            for stage, r in results[label].items():
                r["ours_peak_mib"] = memory["results"][label][stage]["ours_peak_mib"]
                r["plain_peak_mib"] = memory["results"][label][stage]["plain_peak_mib"]
            for stage, r in stages[label].items():
                r["peak_mib"] = memory["stages"][label][stage]["peak_mib"]
    rows = [(f"{m} {stage}", r["ours_tok_s"], r["plain_tok_s"], r["ratio"], r["ours_s"], r["ours_peak_mib"],
             r["plain_peak_mib"]) for m, by_stage in results.items() for stage, r in by_stage.items()]
    console.print(table("Throughput (CPU)", ["stage", "forgetkit tok/s", "plain tok/s", "ratio", "forgetkit s",
                                             "forgetkit peak MiB", "plain peak MiB"], rows))
    rows = [(f"{m} {stage}", r["seconds"], r["peak_mib"]) for m, by_stage in stages.items() for stage, r in by_stage.items()]
    console.print(table("Other stages (CPU)", ["stage", "seconds", "peak MiB"], rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"torch_threads": torch.get_num_threads(), "results": results, "stages": stages},
                                   indent=2) + "\n")


if __name__ == "__main__":
    main()
