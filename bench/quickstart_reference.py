"""The quickstart model's retrained twin: the same tokenizer, architecture and recipe, trained on the retain
set only, then audited like an unlearned quickstart adapter (the same attacks and thresholds).

    python bench/quickstart_reference.py [--workdir runs/quickstart-reference]

What a model that never saw the forgotten people gives on every check, the relearning attack's included:
the level an unlearned model should reach, and a test of the checks themselves (a check this model fails
is miscalibrated). Writes the report beside the model and prints the verdict and each failed check.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from forgetkit.benchmark.finetune import FineTuneConfig, fine_tune, tiny_llama_config
from forgetkit.console import quiet_libraries
from forgetkit.data import encode, load_records
from forgetkit.quickstart.run import SEED, ensure_quickstart_model
from forgetkit.stages.audit import AuditParams, run_audit

ROOT = Path(__file__).resolve().parents[1]
ATTACKS = ("paraphrase", "quantize", "relearn", "sampling")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "quickstart-reference")
    args = parser.parse_args()
    quiet_libraries()
    quickstart = ensure_quickstart_model()
    model_dir = args.workdir / "model"
    if not (model_dir / "config.json").is_file():
        # The memorised model's own tokenizer, so both models read the records as the same tokens.
        tokenizer = AutoTokenizer.from_pretrained(quickstart / "model")
        torch.manual_seed(SEED)
        model = LlamaForCausalLM(tiny_llama_config(tokenizer))
        examples = encode(load_records(quickstart / "retain.jsonl"), tokenizer, context_length=256)
        stats = fine_tune(model, tokenizer, examples, FineTuneConfig(lr=3e-3, epochs=300, batch_size=16, weight_decay=0.0,
                                                                    target_accuracy=0.995, seed=SEED),
                          label="Training the retain-only twin")
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        (args.workdir / "training.json").write_text(json.dumps(stats, indent=2, default=str) + "\n")
    sets = {name: str(quickstart / f"{name}.jsonl") for name in ("forget", "retain", "holdout")}
    report = run_audit(str(model_dir), args.workdir / "report.json", AuditParams(max_new_tokens=48, attacks=ATTACKS), **sets)
    verdict = report["results"]["model"]["verdict"]
    print("VERDICT", verdict["verdict"], json.dumps(verdict["failed"]))


if __name__ == "__main__":
    main()
