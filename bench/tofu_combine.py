"""One table and one Forget Quality against Model Utility plot out of several bench/tofu.py results.

    python bench/tofu_combine.py bench/results/tofu-target-reference bench/results/tofu-budget150 ... \
        --out bench/results/tofu-goal

Grids that cannot share one invocation (FILA refuses --null-space, GA takes no retain weight) are run apart;
this puts their runs side by side. Every input must come from the same TOFU subset and the same full and
reference models, or the rows would not be comparable: a mismatch is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from forgetkit.benchmark.runner import seed_summary

from tofu import write_results


def result_files(paths: list[Path]) -> list[Path]:
    files = []
    for path in paths:
        found = sorted(path.glob("*.json")) if path.is_dir() else [path]
        if not found:
            sys.exit(f"{path}: no bench/tofu.py result (*.json) there")
        files += found
    return files


def combine(files: list[Path]) -> tuple[str, dict]:
    combined, stem = None, None
    for path in files:
        results = json.loads(path.read_text())
        if combined is None:
            combined, stem = dict(results, runs=[]), path.stem
        elif path.stem != stem or results["full"] != combined["full"]:
            sys.exit(f"{path}: another subset or other full/reference models than {files[0]}; not combined")
        combined["runs"] += results["runs"]
    combined["summary"] = seed_summary(combined["runs"])
    combined.pop("grid", None)  # each input had its own grid; the rows' labels say how they differ
    return stem, combined


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", type=Path, nargs="+", help="result folders or JSON files of bench/tofu.py")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    stem, results = combine(result_files(args.inputs))
    write_results(results, args.out, stem)


if __name__ == "__main__":
    main()
