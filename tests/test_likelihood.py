"""The shared-question scorer of truth ratios against one forward pass per (question, answer)."""

from __future__ import annotations

import pytest
import torch

from forgetkit.metrics import likelihood
from forgetkit.metrics.likelihood import shared_prompt_nll
from forgetkit.models import load_model


def _nll_alone(model, prompt: list[int], target: list[int]) -> float:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + target])).logits[0].float()
    predicted = logits[len(prompt) - 1 : len(prompt) + len(target) - 1]
    return torch.nn.functional.cross_entropy(predicted, torch.tensor(target)).item()


def _items() -> list[tuple[list[int], list[list[int]]]]:
    generator = torch.Generator().manual_seed(0)

    def ids(n: int) -> list[int]:
        return torch.randint(5, 200, (n,), generator=generator).tolist()

    opening = ids(4)
    return [
        # answers sharing a 4-token opening, one of them the opening plus one token
        (ids(7), [opening + ids(6), opening + ids(2), opening + ids(9), opening + ids(1)]),
        (ids(3), [ids(5), ids(1), ids(12)]),  # nothing shared, a one-token answer
        (ids(11), [opening + ids(3)] + [ids(4) for _ in range(9)]),  # more answers than a pool of 2x4 rows
        (ids(5), [opening, opening + ids(2)]),  # one answer is all opening: it keeps its last token
    ]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_shared_prompt_nll_equals_each_answer_scored_alone(tiny_models, arch, monkeypatch):
    model = load_model(str(tiny_models[arch])).model.eval()
    items = _items()
    expected = [[_nll_alone(model, prompt, target) for target in targets] for prompt, targets in items]
    monkeypatch.setattr(likelihood, "POOL_BATCHES", 2)
    for max_rows in (1, 4, 64):
        got = shared_prompt_nll(model, 0, items, max_rows=max_rows)
        for row, want in zip(got, expected):
            assert row == pytest.approx(want, rel=2e-5, abs=1e-5), (arch, max_rows)
    # Through a PEFT wrapper (as the audit's unlearned variant runs), with the wrapped model's logits_to_keep.
    from peft import LoraConfig, get_peft_model

    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules="all-linear"))
    assert likelihood._accepts_logits_to_keep(wrapped)
    got = shared_prompt_nll(wrapped, 0, items, max_rows=4)
    for row, want in zip(got, expected):  # LoRA B starts at zero: the same function
        assert row == pytest.approx(want, rel=2e-5, abs=1e-5), arch
    assert likelihood._shared_opening(items[0][1]) == 4
    assert likelihood._shared_opening(items[3][1]) == 3  # leaves the shorter answer one token of its own
