"""The two models a TOFU run needs, built once and cached: the "full" model fine-tuned on forget +
retain (the one to unlearn from) and the reference fine-tuned on retain only (what Forget Quality
compares against).

``model="tiny"`` trains a small Llama from scratch on CPU, with a byte-level BPE tokenizer trained
on the benchmark's own text, until it has memorised the answers; both models start from the same
random initialisation. A model trained from scratch knows no real authors or world facts, which
would put zeros into Model Utility's harmonic mean, so both tiny models also learn the real-authors
and world-facts answers: they stand in for what a pretrained model already knows. Any other value is a Hub id, folder or
GGUF shortcut, fine-tuned with every parameter as TOFU does (default: 5 epochs at 1e-5), which needs a GPU
for real models; or, with ``teach_rank`` set, taught by a LoRA on the MLPs merged into the base (the
quickstart's recipe, what reaches memorisation in the fewest CPU minutes): ``TargetSpec.lora``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from forgetkit.adapters import build_peft_model, lora_config
from forgetkit.benchmark.finetune import FineTuneConfig, fine_tune, tiny_llama_config
from forgetkit.benchmark.tofu_splits import corpus_rows
from forgetkit.cache import cached_folder
from forgetkit.console import console
from forgetkit.data import encode, load_records
from forgetkit.models import discover_targets, load_model
from forgetkit.quickstart.model import corpus_text, train_tokenizer

TARGETS = ("full", "reference")
# Bump when the way targets are built changes, so older caches are not reused.
RECIPE_VERSION = 2
TRAIN_SETS = {"full": "full_train", "reference": "reference_train"}
UTILITY_SETS = ("real_authors", "world_facts")
LATER_FINETUNE_DEFAULTS = {"anchor_weight": 1.0}  # FineTuneConfig fields newer than cached targets


@dataclasses.dataclass
class TargetSpec:
    model: str = "tiny"
    hidden_size: int = 128  # tiny only
    num_hidden_layers: int = 4  # tiny only
    vocab_size: int = 2048  # tiny only
    finetune: FineTuneConfig = dataclasses.field(default_factory=FineTuneConfig)
    teach_rank: int | None = None  # pretrained models: a LoRA of this rank, merged, instead of every parameter
    teach_targets: str = "mlp"  # the modules that LoRA reaches (models.discover_targets)

    @classmethod
    def tiny(cls, hidden_size: int = 128, layers: int = 4, max_epochs: int = 200, seed: int = 0) -> "TargetSpec":
        # From scratch the answers need a large step and many epochs; stop once memorised.
        config = FineTuneConfig(lr=3e-3, epochs=max_epochs, batch_size=16, weight_decay=0.0,
                                target_accuracy=0.97, check_every=10, seed=seed)
        return cls(model="tiny", hidden_size=hidden_size, num_hidden_layers=layers, finetune=config)

    @classmethod
    def lora(cls, model: str, rank: int = 16, max_epochs: int = 16, target_accuracy: float = 0.9,
             seed: int = 0) -> "TargetSpec":
        """A pretrained model on a CPU: both targets taught by a merged MLP LoRA until the answers are
        memorised (checked every 2 epochs), at the learning rate that taught SmolLM2 the quickstart's
        people in 6 epochs."""
        config = FineTuneConfig(lr=2e-3, epochs=max_epochs, batch_size=8, warmup_steps=4, weight_decay=0.0,
                                target_accuracy=target_accuracy, check_every=2, seed=seed)
        return cls(model=model, finetune=config, teach_rank=rank)

    def key(self) -> str:
        """Folder name: changes whenever anything that shapes the models does."""
        spec = dataclasses.asdict(self)
        # Options added later, at their defaults, stay out of the key: caches built before them keep their names.
        if spec["teach_rank"] is None:
            del spec["teach_rank"], spec["teach_targets"]
        for name, default in LATER_FINETUNE_DEFAULTS.items():
            if spec["finetune"][name] == default:
                del spec["finetune"][name]
        described = {"recipe": RECIPE_VERSION, **spec}
        digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:10]
        stem = "tiny" if self.model == "tiny" else Path(self.model).name
        return f"{stem}-{digest}"


def build_targets(tofu: Path, splits: dict[str, Path], folder: Path, spec: TargetSpec) -> dict[str, Path]:
    """Folders of the full and reference models under ``folder``, trained unless already there."""
    out = {}
    for target in TARGETS:
        path = folder / target
        out[target] = path

        def build(staging: Path, target: str = target) -> None:
            stats = _train(tofu, splits, TRAIN_SETS[target], staging, spec, label=f"fine-tuning the {target} model")
            (staging / "finetune.json").write_text(json.dumps({"target": target, **stats,
                                                               "spec": dataclasses.asdict(spec)}, indent=2) + "\n")
            console.print(f"{target} model: {stats['epochs']} epochs, answer accuracy {stats['answer_accuracy']:.3f}, "
                          f"{stats['seconds']} s")

        cached_folder(path, lambda folder: (folder / "config.json").is_file(), build)
    return out


def _train(tofu: Path, splits: dict[str, Path], train_set: str, out_dir: Path, spec: TargetSpec, label: str) -> dict:
    if spec.model == "tiny":
        tokenizer = train_tokenizer(corpus_text(corpus_rows(tofu)), spec.vocab_size)
        tokenizer.model_max_length = 512
        torch.manual_seed(spec.finetune.seed)  # the same start for the full and the reference model
        config = tiny_llama_config(tokenizer, hidden_size=spec.hidden_size, num_hidden_layers=spec.num_hidden_layers,
                                   max_position_embeddings=512)
        model = LlamaForCausalLM(config)
    else:
        loaded = load_model(spec.model, dtype="float32" if spec.teach_rank else "auto")
        model, tokenizer = loaded.model, loaded.tokenizer
        if spec.teach_rank:
            model = build_peft_model(model, lora_config(discover_targets(model, spec.teach_targets), spec.teach_rank,
                                                        2 * spec.teach_rank))
    context = getattr(model.config, "max_position_embeddings", None)
    records = load_records(splits[train_set])
    if spec.model == "tiny":
        records += [r for name in UTILITY_SETS for r in load_records(splits[name])]
    examples = encode(records, tokenizer, context_length=context, truncate=True)
    stats = fine_tune(model, tokenizer, examples, spec.finetune, label=label)
    if spec.teach_rank:
        model = model.merge_and_unload()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return stats
