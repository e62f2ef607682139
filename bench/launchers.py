"""The same fisher and unlearn runs on one process and on two, under each kind of launch: data-parallel
(torchrun-style, a whole base per process), FSDP2 (the base split) and DeepSpeed ZeRO-3 (unlearn in a
DeepSpeed engine). What splitting costs, and that every launch follows the one-process run.

    python bench/launchers.py [--epochs 2] [--out bench/results/launchers.json]

Model: the quickstart's memorised tiny Llama (1.1M parameters, 4 blocks); data: its forget and retain
sets. unlearn: IHL, rank 8, global batch 8 in micro-batches of 2. Two CPU processes with one thread each
against one process with one thread (the launch's own OMP_NUM_THREADS=1), so the comparison is of the
same compute. Wall time counts process start and model loading; train time is the stage's own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from forgetkit.artifacts import load_tensor_artifact, read_metadata
from forgetkit.console import console
from forgetkit.quickstart.run import prepare_workdir
from forgetkit.stages.common import table

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LAUNCHES = {
    "one process": None,
    "data-parallel x2": "two_processes_cpu.yaml",
    "FSDP2 x2": "fsdp_two_processes_cpu.yaml",
    "DeepSpeed ZeRO-3 x2": "zero3_two_processes_cpu.yaml",
}


def command(config: str | None, *args) -> list[str]:
    if config is None:
        return [str(BIN / "forgetkit"), *map(str, args)]
    path = ROOT / "recipes" / "accelerate" / config
    return [str(BIN / "accelerate"), "launch", "--config_file", str(path), "-m", "forgetkit.cli", *map(str, args)]


def timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/launchers.json"))
    args = parser.parse_args()
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        model = prepare_workdir(work)
        forget, retain = work / "forget.jsonl", work / "retain.jsonl"
        train_args = ("--epochs", args.epochs, "--batch-size", 8, "--micro-batch-size", 2, "--lr", "1e-3", "--rank", 8)
        for name, config in LAUNCHES.items():
            tag = name.split()[0].lower().replace("-", "_")
            fisher_out, adapter = work / f"fisher_{tag}.safetensors", work / f"adapter_{tag}"
            fisher_wall = timed(command(config, "fisher", model, forget, "--retain", retain, "--dtype", "float32",
                                        "-o", fisher_out))
            unlearn_wall = timed(command(config, "unlearn", model, forget, "--retain", retain, *train_args, "-o", adapter))
            meta = read_metadata(adapter).results
            split = meta.get("sharded_base")
            results[name] = {
                "fisher_wall_s": round(fisher_wall, 2),
                "unlearn_wall_s": round(unlearn_wall, 2),
                "unlearn_train_s": meta["seconds"],
                "tokens_per_second": meta["tokens_per_second"],
                "weights_held": round(split["held_bytes"] / split["model_bytes"], 4) if split else 1.0,
                "split_by": split["by"] if split else None,
            }
            if config is not None:  # against the one-process run
                one_fisher, fisher = load_tensor_artifact(work / "fisher_one.safetensors"), load_tensor_artifact(fisher_out)
                results[name]["fisher_max_rel_diff"] = max(
                    ((one_fisher[k] - fisher[k]).abs().max() / one_fisher[k].abs().max()).item() for k in one_fisher)
                curve_one = json.loads((work / "adapter_one" / "training_log.json").read_text())
                curve = json.loads((adapter / "training_log.json").read_text())
                results[name]["loss_max_rel_diff"] = max(abs(a["loss"] - b["loss"]) / abs(a["loss"])
                                                         for a, b in zip(curve_one, curve))
                w_one, w = load_file(str(work / "adapter_one" / "adapter_model.safetensors")), load_file(
                    str(adapter / "adapter_model.safetensors"))
                results[name]["adapter_max_abs_diff"] = max((w_one[k] - w[k]).abs().max().item() for k in w_one)
            r = results[name]
            rows.append([name, r["split_by"] or "-", f"{r['weights_held']:.1%}", f"{r['fisher_wall_s']:.1f}",
                         f"{r['unlearn_wall_s']:.1f}", f"{r['unlearn_train_s']:.2f}", f"{r['tokens_per_second']:.0f}",
                         f"{r.get('fisher_max_rel_diff', 0):.1e}", f"{r.get('loss_max_rel_diff', 0):.1e}",
                         f"{r.get('adapter_max_abs_diff', 0):.1e}"])
    console.print(table("Launches (quickstart model, 2 CPU processes)",
                        ["launch", "split", "weights held", "fisher wall s", "unlearn wall s", "unlearn train s",
                         "tokens/s", "fisher rel diff", "loss rel diff", "adapter abs diff"], rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"torch": torch.__version__, "epochs": args.epochs, "results": results}, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
