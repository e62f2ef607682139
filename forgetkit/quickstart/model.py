"""Train the quickstart's tokenizer and tiny Llama-style model until it has memorised the corpus."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from forgetkit.console import console, progress_bar
from forgetkit.data import batches, collate, encode, load_records
from forgetkit.losses.base import logits_of, mean_nll
from forgetkit.metrics.extraction import exact_memorisation, teacher_forced

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


def tiny_llama_config(vocab_size: int, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
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
    model = LlamaForCausalLM(tiny_llama_config(len(tokenizer), tokenizer))
    examples = encode(records, tokenizer, context_length=256)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(examples) / batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 50) * max(0.05, 1 - step / (max_epochs * steps_per_epoch))
    )
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    accuracy, epoch = 0.0, 0
    with progress_bar("Memorising the quickstart corpus", max_epochs) as advance:
        for epoch in range(1, max_epochs + 1):
            model.train()
            for group in batches(examples, batch_size, generator):
                batch = collate(group, tokenizer.pad_token_id)
                loss = mean_nll(logits_of(model, batch), batch["labels"])
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
            advance()
            if epoch % 10 == 0:
                accuracy = sum(exact_memorisation(teacher_forced(model, examples, tokenizer.pad_token_id))) / len(examples)
                if accuracy >= target_accuracy:
                    break
    model.eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    stats = {"epochs": epoch, "teacher_forced_accuracy": accuracy, "seconds": round(time.perf_counter() - started, 1)}
    console.print(f"memorised in {stats['epochs']} epochs, {stats['seconds']}s (token accuracy {accuracy:.3f})")
    return stats
