"""The benchmark's fine-tuning loop: the KL anchor holds a LoRA-taught model to its base."""

from __future__ import annotations

import pytest
import torch

from forgetkit.adapters import build_peft_model, lora_config
from forgetkit.benchmark.finetune import FineTuneConfig, fine_tune
from forgetkit.data import collate
from forgetkit.losses.base import logits_of, mean_kl, mean_nll
from forgetkit.models import discover_targets, load_model
from forgetkit.stages.common import load_examples


def test_mean_kl_matches_a_hand_computation():
    labels = torch.tensor([[-100, 1, 0]])  # targets are tokens 1 and 2; position 0 predicts token 1
    logits = torch.zeros(1, 3, 2)
    reference = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [9.0, 9.0]]])
    p = torch.tensor([0.5, 0.5]), torch.softmax(torch.tensor([2.0, 0.0]), 0)
    by_hand = [(q * (q / 0.5).log()).sum() for q in p]  # the model's distributions are uniform
    assert mean_kl(logits, reference, labels).item() == pytest.approx(torch.stack(by_hand).mean().item(), rel=1e-6)


def _teach(memorised, anchor_weight: float, anchored: bool):
    loaded = load_model(str(memorised / "model"), dtype="float32")
    _, new_facts = load_examples(str(memorised / "holdout.jsonl"), loaded)
    _, kept = load_examples(str(memorised / "retain.jsonl"), loaded)
    torch.manual_seed(0)
    model = build_peft_model(loaded.model, lora_config(discover_targets(loaded.model, "mlp"), 8, 16))
    config = FineTuneConfig(lr=1e-2, epochs=6, batch_size=8, warmup_steps=0, weight_decay=0.0,
                            anchor_weight=anchor_weight)
    fine_tune(model, loaded.tokenizer, new_facts, config, anchor=kept if anchored else ())
    pad = loaded.tokenizer.pad_token_id
    learned, held = collate(new_facts, pad), collate(kept, pad)
    with torch.no_grad():
        nll = mean_nll(logits_of(model, learned), learned["labels"]).item()
        with model.disable_adapter():
            base = logits_of(model, held)
        drift = mean_kl(logits_of(model, held), base, held["labels"]).item()
    return nll, drift


def test_the_anchor_holds_the_kept_records_to_the_base_while_the_new_ones_are_learned(memorised):
    free_nll, free_drift = _teach(memorised, 1.0, anchored=False)
    anchored_nll, anchored_drift = _teach(memorised, 5.0, anchored=True)
    assert anchored_drift < 0.5 * free_drift, (anchored_drift, free_drift)  # measured 0.037 against 0.160
    assert anchored_nll < 1.5 * free_nll  # the new facts are still learned (measured 1.10 against 0.88)
