"""Train the quickstart's tokenizer and tiny Llama-style model until it has memorised the corpus."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from forgetkit.benchmark.finetune import FineTuneConfig, fine_tune, tiny_llama_config
from forgetkit.console import console
from forgetkit.data import encode, load_records

SPECIALS = ["<pad>", "<s>", "</s>"]


def corpus_text(records: list[dict]) -> list[str]:
    return [r.get("text") or f"Question: {r['question']}\nAnswer: {r['answer']}" for r in records]


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on the corpus itself (small vocabulary, every byte representable)."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", model_max_length=256
    )


def memorise(
    train_file: Path,
    out_dir: Path,
    *,
    seed: int = 0,
    vocab_size: int = 768,
    max_epochs: int = 300,
    lr: float = 3e-3,
    batch_size: int = 16,
    target_accuracy: float = 0.995,
) -> dict:
    """Train tokenizer + model on ``train_file`` until teacher-forced accuracy reaches the target."""
    torch.manual_seed(seed)
    records = load_records(train_file)
    raw = [json.loads(line) for line in train_file.read_text().splitlines() if line.strip()]
    tokenizer = train_tokenizer(corpus_text(raw), vocab_size)
    model = LlamaForCausalLM(tiny_llama_config(tokenizer))
    examples = encode(records, tokenizer, context_length=256)
    config = FineTuneConfig(lr=lr, epochs=max_epochs, batch_size=batch_size, weight_decay=0.0,
                            target_accuracy=target_accuracy, seed=seed)
    stats = fine_tune(model, tokenizer, examples, config, label="Memorising the quickstart corpus")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    console.print(f"memorised in {stats['epochs']} epochs, {stats['seconds']}s (token accuracy {stats['answer_accuracy']:.3f})")
    return {"epochs": stats["epochs"], "teacher_forced_accuracy": stats["answer_accuracy"], "seconds": stats["seconds"]}
