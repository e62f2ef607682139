"""How cost grows: fisher, unlearn and audit time for 1x, 2x and 4x the forget set, on two model sizes.

    python bench/scaling.py [--tofu ../shared/data/tofu] [--sizes 1,2,4] [--out bench/results/scaling.json]

Forget sets: the first 2, 4 and 8 TOFU forget10 authors (40, 80, 160 questions); the retain set
for fisher and unlearn is as many retain90 questions. Models: random Llamas (hidden 128 and 256,
4 layers) with a BPE tokenizer trained on the TOFU text; a random model's cost is a trained one's.
Each stage runs through its Python API exactly as the CLI calls it (model loading included);
unlearn runs 2 epochs of IHL at rank 8, the audit the TOFU suite on the forget set with 32 new
tokens. Cost per 1,000 tokens should stay flat if the growth is linear.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from forgetkit.benchmark.finetune import tiny_llama_config
from forgetkit.benchmark.measure import measured
from forgetkit.benchmark.tofu_splits import FILES, corpus_rows, read_jsonl
from forgetkit.console import console, quiet_libraries
from forgetkit.data import encode, load_records
from forgetkit.quickstart.model import corpus_text, train_tokenizer
from forgetkit.stages.audit import AuditParams, run_audit
from forgetkit.stages.common import table
from forgetkit.stages.fisher import FisherParams, run_fisher
from forgetkit.stages.unlearn import UnlearnParams, run_unlearn
from forgetkit.training import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
AUTHORS_AT_1X = 2
QUESTIONS_PER_AUTHOR = 20


def build_models(folder: Path, tofu: Path, hidden_sizes: list[int]) -> dict[int, Path]:
    tokenizer = train_tokenizer(corpus_text(corpus_rows(tofu)), 2048)
    tokenizer.model_max_length = 512
    out = {}
    for hidden in hidden_sizes:
        torch.manual_seed(0)
        config = tiny_llama_config(tokenizer, hidden_size=hidden, num_attention_heads=4, max_position_embeddings=512)
        path = folder / f"h{hidden}"
        LlamaForCausalLM(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
        out[hidden] = path
    return out


def write_sets(folder: Path, tofu: Path, multiples: list[int]) -> dict[int, tuple[Path, Path]]:
    forget_rows, retain_rows = read_jsonl(tofu / FILES["forget"]), read_jsonl(tofu / FILES["retain"])
    out = {}
    for multiple in multiples:
        count = AUTHORS_AT_1X * multiple * QUESTIONS_PER_AUTHOR
        paths = folder / f"forget-{multiple}x.jsonl", folder / f"retain-{multiple}x.jsonl"
        for path, rows in zip(paths, (forget_rows[:count], retain_rows[:count])):
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out[multiple] = paths
    return out


def tokens_of(path: Path, model_dir: Path) -> int:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return sum(len(e.input_ids) for e in encode(load_records(path), tokenizer, context_length=None))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tofu", type=Path, default=ROOT.parent / "shared" / "data" / "tofu")
    parser.add_argument("--sizes", default="1,2,4")
    parser.add_argument("--hidden-sizes", default="128,256")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scaling.json")
    args = parser.parse_args()
    quiet_libraries()
    multiples = [int(x) for x in args.sizes.split(",")]
    hidden_sizes = [int(x) for x in args.hidden_sizes.split(",")]
    rows, results = [], []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        models = build_models(scratch / "models", args.tofu, hidden_sizes)
        sets = write_sets(scratch, args.tofu, multiples)
        for hidden, model in models.items():
            for multiple, (forget, retain) in sets.items():
                tokens = tokens_of(forget, model) + tokens_of(retain, model)
                work = scratch / f"h{hidden}-{multiple}x"
                costs = {}
                with measured() as m:
                    run_fisher(str(model), str(forget), str(retain), work / "fisher.safetensors", FisherParams())
                costs["fisher"] = m.seconds
                train = TrainConfig(lr=1e-3, epochs=2, batch_size=8, micro_batch_size=8)
                with measured() as m:
                    run_unlearn(str(model), str(forget), work / "adapter", UnlearnParams(rank=8, train=train),
                                retain=str(retain))
                costs["unlearn"] = m.seconds
                with measured() as m:
                    run_audit(str(model), work / "report.json", AuditParams(suites=("tofu",), max_new_tokens=32),
                              forget=str(forget))
                costs["audit"] = m.seconds
                entry = {"hidden_size": hidden, "multiple": multiple, "forget_records": sum(1 for _ in forget.open()),
                         "tokens": tokens, "seconds": costs,
                         "seconds_per_1k_tokens": {k: 1000 * v / tokens for k, v in costs.items()}}
                results.append(entry)
                rows.append((f"h{hidden} {multiple}x", tokens, *costs.values(),
                             *entry["seconds_per_1k_tokens"].values()))
    console.print(table("Cost against forget-set size", ["model, size", "tokens", "fisher s", "unlearn s", "audit s",
                                                          "fisher s/1k tok", "unlearn s/1k tok", "audit s/1k tok"], rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"torch_threads": torch.get_num_threads(), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
