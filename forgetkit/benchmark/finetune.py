"""Full-parameter fine-tuning of the models a benchmark unlearns from: the "full" model (forget +
retain) and the reference model (retain only), as in TOFU's protocol.

One loop serves a tiny model trained from scratch on CPU (train until the answers are memorised,
checked every ``check_every`` epochs) and a real checkpoint on a GPU (a fixed number of epochs at
TOFU's learning rate). Accelerate places the model and runs bf16 autocast where the device has it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Iterator, Sequence

import torch
from transformers import LlamaConfig, PreTrainedModel, PreTrainedTokenizerBase

from forgetkit.console import progress_bar
from forgetkit.data import Example, batches, collate
from forgetkit.distributed import make_accelerator
from forgetkit.losses.base import logits_of, mean_kl, mean_nll
from forgetkit.metrics.extraction import exact_memorisation, teacher_forced


@dataclasses.dataclass
class FineTuneConfig:
    lr: float = 1e-5
    epochs: int = 5
    batch_size: int = 32
    warmup_steps: int = 50
    min_lr_ratio: float = 0.05  # the linear decay stops here, so late epochs still move the weights
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    target_accuracy: float | None = None  # stop once answer-token accuracy reaches it (checked every check_every)
    check_every: int = 10
    seed: int = 0
    # With anchor examples (PEFT models only): each step adds this weight times KL(base || model) on a
    # batch of them, the base being the same model with its adapter switched off. It holds the whole
    # next-token distribution where greedy-answer replay holds only the argmax path.
    anchor_weight: float = 1.0


def tiny_llama_config(
    tokenizer: PreTrainedTokenizerBase,
    *,
    hidden_size: int = 128,
    num_hidden_layers: int = 4,
    num_attention_heads: int = 4,
    max_position_embeddings: int = 256,
) -> LlamaConfig:
    """A small Llama for CPU runs; the MLP is three times the hidden size."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=3 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_attention_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _anchor_batches(anchor: Sequence[Example], batch_size: int, generator: torch.Generator) -> Iterator | None:
    """Endless shuffled batches of the anchor examples (None without any)."""
    if not anchor:
        return None

    def endless() -> Iterator:
        while True:
            yield from batches(anchor, batch_size, generator)

    return endless()


def answer_accuracy(model: torch.nn.Module, examples: Sequence[Example], pad_token_id: int) -> float:
    """Share of answer tokens whose teacher-forced argmax is right, averaged over examples."""
    values = exact_memorisation(teacher_forced(model, examples, pad_token_id))
    return sum(values) / len(values)


def fine_tune(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    config: FineTuneConfig,
    *,
    label: str = "fine-tuning",
    anchor: Sequence[Example] = (),
) -> dict:
    """Train every trainable parameter on the examples' answer tokens; returns epochs, accuracy and time.
    ``anchor``: examples on whose answer tokens the model is held to its base (``anchor_weight``)."""
    torch.manual_seed(config.seed)
    # No accelerate mixed_precision: it is fixed once per process, and stages in the same process
    # set it differently. bf16 autocast where the device is a GPU, explicitly.
    accelerator = make_accelerator()
    bf16 = accelerator.device.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    total_steps = config.epochs * math.ceil(len(examples) / config.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min(1.0, (step + 1) / max(1, config.warmup_steps)) * max(config.min_lr_ratio, 1 - step / total_steps),
    )
    model, optimizer, schedule = accelerator.prepare(model, optimizer, schedule)
    generator = torch.Generator().manual_seed(config.seed)
    anchors = _anchor_batches(anchor, config.batch_size, generator)
    started = time.perf_counter()
    accuracy, epoch, tokens = None, 0, 0
    with progress_bar(label, config.epochs) as advance:
        for epoch in range(1, config.epochs + 1):
            model.train()
            for group in batches(examples, config.batch_size, generator):
                batch = {k: v.to(accelerator.device) for k, v in collate(group, tokenizer.pad_token_id).items()}
                with torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=bf16):
                    loss = mean_nll(logits_of(model, batch), batch["labels"])
                    if anchors is not None:
                        held = {k: v.to(accelerator.device) for k, v in collate(next(anchors), tokenizer.pad_token_id).items()}
                        with torch.no_grad(), accelerator.unwrap_model(model).disable_adapter():
                            base_logits = logits_of(model, held)
                        loss = loss + config.anchor_weight * mean_kl(logits_of(model, held), base_logits, held["labels"])
                accelerator.backward(loss)
                accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                tokens += int(batch["attention_mask"].sum())
            advance()
            if config.target_accuracy is not None and epoch % config.check_every == 0:
                accuracy = answer_accuracy(model, examples, tokenizer.pad_token_id)
                if accuracy >= config.target_accuracy:
                    break
    model = accelerator.unwrap_model(model)
    model.eval()
    if accuracy is None:
        accuracy = answer_accuracy(model, examples, tokenizer.pad_token_id)
    return {"epochs": epoch, "examples": len(examples), "answer_accuracy": accuracy, "tokens": tokens,
            "seconds": round(time.perf_counter() - started, 1)}
