"""Forgetting what a pretrained model knows by itself: recipes/pretrained_knowledge.sh on
SmolLM2-135M-Instruct, its probe accuracies before and after, and the time it took.

    python bench/pretrained_knowledge.py [--work runs/pretrained-knowledge] [--out bench/results/pretrained_knowledge.json]

The recipe runs through the CLI as a user runs it (the venv's forgetkit on PATH); this script only
times it and gathers the probes' JSON summaries into one table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETS = ("forget", "retain", "neighbours", "general")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "pretrained-knowledge")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pretrained_knowledge.json")
    args = parser.parse_args()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    started = time.perf_counter()
    subprocess.run(["bash", str(ROOT / "recipes" / "pretrained_knowledge.sh"), str(args.work)], check=True, env=env)
    seconds = time.perf_counter() - started

    rows = {}
    for name in SETS:
        before = json.loads((args.work / f"{name}-before.json").read_text())
        after = json.loads((args.work / f"{name}-after.json").read_text())
        rows[name] = {"questions": before["questions"], "known_before": before["known"], "known_after": after["known"],
                      "accuracy_before": before["accuracy"], "accuracy_after": after["accuracy"],
                      "subjects": sorted(before["subjects"])}
    report = json.loads((args.work / "report.json").read_text())["results"]
    extraction = {
        variant: {split: {k: report[variant]["sets"][split]["summary"].get(k) for k in ("rouge_l", "el10", "em")}
                  for split in ("forget", "retain")}
        for variant in ("base", "unlearned")
    }
    unlearn = json.loads((args.work / "adapter" / "forgetkit.json").read_text()) if (args.work / "adapter" / "forgetkit.json").is_file() else {}
    result = {"model": "smollm2-135m-instruct", "seconds": round(seconds, 1), "probes": rows, "extraction": extraction,
              "unlearn_seconds": unlearn.get("results", {}).get("seconds")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, row in rows.items():
        print(f"{name:11s} {row['known_before']:2d}/{row['questions']:2d} -> {row['known_after']:2d}/{row['questions']:2d}"
              f"  ({row['accuracy_before']:.3f} -> {row['accuracy_after']:.3f})")
    print(f"whole recipe {seconds:.0f}s; wrote {args.out}")


if __name__ == "__main__":
    main()
