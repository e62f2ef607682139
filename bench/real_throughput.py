"""The real model's speed: SmolLM2-135M-Instruct's fisher, unlearn and audit passes against a plain
loop on the same batches, both against this machine's roofline, a profile of where the time goes,
and a new user's case (one epoch of unlearn, 20 TOFU forget questions, 40 retain, FILA rank 8, batch 8).

    python bench/real_throughput.py [--repeats 2] [--out bench/results/real_throughput.json]

Roofline: the FLOP/s of a large fp32 matmul measured in the same run, times the FLOPs a token needs:
2N forward (audit), 6N when every linear weight gets its gradient (fisher), and for LoRA training on a
frozen base 4N (forward, plus the backward through the activations; the frozen weights' gradients are
never formed) -- the usual 6N would credit the unlearn stage with work it rightly skips. N counts the
weights of every matmul a token goes through, the output head included (SmolLM2 ties it to the
embedding, whose lookup costs nothing). Tokens here are every position the model computes (prompt,
answer and padding), not only answer tokens.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import bench_audit, bench_fisher, bench_unlearn  # noqa: E402

from forgetkit.console import console, quiet_libraries  # noqa: E402
from forgetkit.data import batches, collate  # noqa: E402
from forgetkit.models import load_model  # noqa: E402
from forgetkit.stages.common import load_examples, table  # noqa: E402

MODEL = "smollm2-135m-instruct"
TOFU = Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu"


def matmul_flops(size: int = 2048, repeats: int = 20) -> float:
    """fp32 FLOP/s of a square matmul, the best of three timings (the machine's practical ceiling)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 * repeats / best


def matmul_params(model: torch.nn.Module) -> int:
    """Weights of every matmul a token passes through: the linear layers and the output head."""
    total = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    head = model.get_output_embeddings()
    if head is not None and not isinstance(head, torch.nn.Linear):
        total += head.weight.numel()
    return total


def positions(examples, batch_size: int, pad: int) -> tuple[int, int]:
    """(real tokens, computed positions including padding) over the batches a stage forms."""
    real = padded = 0
    for group in batches(examples, batch_size):
        batch = collate(group, pad)
        real += int(batch["attention_mask"].sum())
        padded += batch["input_ids"].numel()
    return real, padded


def write_tofu(scratch: Path, forget: int, retain: int) -> tuple[str, str]:
    rows = {"forget": (TOFU / "forget10.jsonl", forget), "retain": (TOFU / "retain90.jsonl", retain)}
    out = []
    for name, (source, count) in rows.items():
        lines = source.read_text().splitlines()[:count]
        path = scratch / f"tofu-{name}.jsonl"
        path.write_text("".join(json.dumps({k: json.loads(l)[k] for k in ("question", "answer")}) + "\n" for l in lines))
        out.append(str(path))
    return out[0], out[1]


def profile_unlearn_step(model_dir: str, forget: str, retain: str) -> list[dict]:
    """Self CPU time by operator over two IHL steps (LoRA rank 8 on every linear layer, batch 8)."""
    from accelerate import Accelerator
    from torch.profiler import ProfilerActivity, profile

    from forgetkit.adapters import build_peft_model, lora_config
    from forgetkit.losses.builtin import InvertedHinge
    from forgetkit.models import discover_targets
    from forgetkit.training import TrainConfig, train

    loaded = load_model(model_dir)
    forget_ex = load_examples(forget, loaded)[1][:16]
    retain_ex = load_examples(retain, loaded)[1]
    model = build_peft_model(loaded.model, lora_config(discover_targets(loaded.model, "all"), 8, 16))
    config = TrainConfig(lr=1e-3, epochs=1, batch_size=8, micro_batch_size=8)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train(model, InvertedHinge(), forget_ex, retain_ex, loaded.tokenizer.pad_token_id, config,
              accelerator=Accelerator(cpu=True))
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    return [{"op": e.key, "self_s": round(e.self_cpu_time_total / 1e6, 2), "share": round(e.self_cpu_time_total / total, 3),
             "calls": e.count} for e in top]


def new_user_case(scratch: Path) -> dict:
    """The issue's case through the stage functions the CLI calls: fisher, FILA rank 8, one epoch of
    IHL over 20 TOFU forget questions with 40 retain questions, batch 8 (3 steps)."""
    from forgetkit.stages.fisher import FisherParams, run_fisher
    from forgetkit.stages.init import InitParams, run_init
    from forgetkit.stages.unlearn import UnlearnParams, run_unlearn
    from forgetkit.training import TrainConfig

    forget, retain = write_tofu(scratch, 20, 40)
    timings = {}
    started = time.perf_counter()
    run_fisher(MODEL, forget, retain, scratch / "fisher.safetensors", FisherParams())
    timings["fisher_s"] = time.perf_counter() - started
    started = time.perf_counter()
    run_init(MODEL, scratch / "init", InitParams(scheme="fila", rank=8), fisher=str(scratch / "fisher.safetensors"))
    timings["init_s"] = time.perf_counter() - started
    started = time.perf_counter()
    meta = run_unlearn(MODEL, forget, scratch / "adapter",
                       UnlearnParams(train=TrainConfig(epochs=1, batch_size=8)), retain=retain, init=str(scratch / "init"))
    timings["unlearn_stage_s"] = time.perf_counter() - started
    timings["unlearn_train_s"] = meta.results["seconds"]
    timings["steps"] = meta.results["steps"]
    loaded = load_model(MODEL)
    pad = loaded.tokenizer.pad_token_id
    forget_ex, retain_ex = load_examples(forget, loaded)[1], load_examples(retain, loaded)[1]
    real_f, padded_f = positions(forget_ex, 8, pad)
    timings["forget_positions"], timings["forget_real_tokens"] = padded_f, real_f
    timings["mean_sequence_tokens"] = statistics.mean(len(e.input_ids) for e in forget_ex + retain_ex)
    return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/real_throughput.json"))
    args = parser.parse_args()
    quiet_libraries()
    from forgetkit.quickstart.run import ensure_quickstart_model

    folder = ensure_quickstart_model()
    forget, retain = str(folder / "forget.jsonl"), str(folder / "retain.jsonl")
    peak = matmul_flops()
    loaded = load_model(MODEL)
    n = matmul_params(loaded.model)
    pad = loaded.tokenizer.pad_token_id
    forget_ex, retain_ex = load_examples(forget, loaded)[1], load_examples(retain, loaded)[1]
    del loaded

    results = {
        "fisher": bench_fisher(MODEL, forget, args.repeats),
        "unlearn": bench_unlearn(MODEL, forget, retain, args.repeats),
        "audit": bench_audit(MODEL, forget, retain, args.repeats),
    }
    # Computed positions per stage (the same batches the loops form), for the roofline.
    fisher_pos = positions(forget_ex, 8, pad)[1]
    audit_pos = sum(collate(g, pad)["input_ids"].numel() for g in _audit_groups(forget_ex + retain_ex))
    unlearn_pos = unlearn_positions(forget_ex, retain_ex, pad)
    flops_per_token = {"fisher": 6 * n, "unlearn": 4 * n, "audit": 2 * n}
    seconds = {"fisher": results["fisher"]["ours_s"], "unlearn": results["unlearn"]["ours_s"], "audit": results["audit"]["ours_s"]}
    plain_seconds = {k: results[k]["plain_s"] for k in results}
    computed = {"fisher": fisher_pos, "unlearn": unlearn_pos, "audit": audit_pos}
    for stage, r in results.items():
        achieved = computed[stage] * flops_per_token[stage] / seconds[stage]
        r["positions"] = computed[stage]
        r["flops_per_token"] = flops_per_token[stage]
        r["ours_gflops"] = achieved / 1e9
        r["plain_gflops"] = computed[stage] * flops_per_token[stage] / plain_seconds[stage] / 1e9
        r["roofline_fraction"] = achieved / peak
        r["plain_roofline_fraction"] = r["plain_gflops"] * 1e9 / peak

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        profile = profile_unlearn_step(MODEL, *write_tofu(scratch, 16, 16))
        case = new_user_case(scratch)
    rows = [(stage, r["ours_tok_s"], r["plain_tok_s"], r["ratio"], r["ours_gflops"], r["roofline_fraction"])
            for stage, r in results.items()]
    console.print(table(f"SmolLM2-135M-Instruct (N={n / 1e6:.1f}M matmul weights; roofline {peak / 1e9:.1f} GFLOP/s)",
                        ["stage", "forgetkit answer tok/s", "plain tok/s", "ratio", "GFLOP/s", "of roofline"], rows))
    console.print(table("Where unlearn's time goes (self CPU, 2 IHL steps)", ["op", "seconds", "share", "calls"],
                        [(p["op"], p["self_s"], p["share"], p["calls"]) for p in profile]))
    console.print(case)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": MODEL, "matmul_params": n, "roofline_gflops": peak / 1e9,
                                    "torch_threads": torch.get_num_threads(), "results": results,
                                    "profile": profile, "new_user_case": case}, indent=2) + "\n")


def unlearn_positions(forget_ex, retain_ex, pad: int, epochs: int = 2, batch_size: int = 8, seed: int = 0) -> int:
    """Positions bench_unlearn's batches hold: every forget batch and the retain batch paired with it."""
    from forgetkit.training import RetainStream

    total = 0
    for epoch in range(epochs):
        stream = RetainStream(retain_ex, batch_size, seed, epoch)
        for group in batches(forget_ex, batch_size, torch.Generator().manual_seed(epoch)):
            total += collate(group, pad)["input_ids"].numel() + collate(stream.next(), pad)["input_ids"].numel()
    return total


def _audit_groups(examples):
    order = sorted(examples, key=lambda e: len(e.input_ids))
    return [order[i : i + 16] for i in range(0, len(order), 16)]


if __name__ == "__main__":
    main()
