"""Gradient checkpointing on the real model: peak memory and time of fisher and unlearn on
SmolLM2-135M-Instruct at sequence length 512, with and without --gradient-checkpointing.

    python bench/checkpointing.py [--records 2] [--out bench/results/checkpointing.json]

Each run is its own process (peak resident memory is per process), through the CLI as a user runs
it. Records are TOFU retain answers joined and cut to exactly 512 tokens. fisher: every linear
layer, one batch of ``--records``; unlearn: IHL, plain LoRA rank 8 on every linear layer, one step
of ``--records`` sequences in one micro-batch (the retain set is the same records).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "smollm2-135m-instruct"
TOFU = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tofu" / "retain90.jsonl"
RUNNER = """
import resource, sys, time
from forgetkit.cli import app
started = time.perf_counter()
try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    print("PEAK_MIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "SECONDS", time.perf_counter() - started)
"""


def long_records(count: int, length: int, out: Path) -> None:
    from transformers import AutoTokenizer

    from forgetkit.models import resolve_model_dir

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(MODEL))
    answers = [json.loads(line)["answer"] for line in TOFU.read_text().splitlines()]
    rows, pool = [], iter(answers)
    for _ in range(count):
        ids: list[int] = []
        while len(ids) < length:
            ids += tokenizer(" " + next(pool), add_special_tokens=False).input_ids
        rows.append({"text": tokenizer.decode(ids[:length])})
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))


def run(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, "-c", RUNNER, *args], capture_output=True, text=True)
    line = next((l for l in done.stdout.splitlines() if l.startswith("PEAK_MIB")), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(f"failed: {' '.join(args)}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    parts = line.split()
    return {"peak_mib": round(float(parts[1]), 1), "seconds": round(float(parts[3]), 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=2)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--out", type=Path, default=Path("bench/results/checkpointing.json"))
    options = parser.parse_args()
    results: dict = {"model": MODEL, "records": options.records, "sequence_length": options.length}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        data = scratch / "long.jsonl"
        long_records(options.records, options.length, data)
        for flag in (False, True):
            extra = ["--gradient-checkpointing"] if flag else []
            key = "checkpointing" if flag else "plain"
            results[f"fisher_{key}"] = run(["fisher", MODEL, str(data), "--batch-size", str(options.records),
                                            "-o", str(scratch / f"f-{key}.st"), *extra])
            results[f"unlearn_{key}"] = run(["unlearn", MODEL, str(data), "--retain", str(data), "--epochs", "1",
                                             "--batch-size", str(options.records), "--micro-batch-size",
                                             str(options.records), "-o", str(scratch / f"a-{key}"), *extra])
            # what the stage itself measured: its own training time
            meta = json.loads((scratch / f"a-{key}" / "forgetkit.json").read_text())
            results[f"unlearn_{key}"]["train_seconds"] = meta["results"]["seconds"]
            print(key, results[f"fisher_{key}"], results[f"unlearn_{key}"], flush=True)
    results["measured_at"] = time.strftime("%Y-%m-%d %H:%M")
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
