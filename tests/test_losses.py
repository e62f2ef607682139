import math

import torch

from forgetkit.data import IGNORE_INDEX
from forgetkit.losses.base import LossContext, mean_nll, sequence_log_prob
from forgetkit.losses.builtin import GradientAscent, KLRetain, NegativePreference, inverted_hinge

# One sequence of 3 positions over a vocabulary of 3; position 0 is the prompt (ignored).
LOGITS = torch.tensor([[[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 1.0, 2.0]]])
# Position 0 must predict token 0 (its argmax), position 1 token 0 (not its argmax): IHL's
# "best other token" is then the runner-up in one case and the top token in the other.
LABELS = torch.tensor([[IGNORE_INDEX, 0, 0]])


def softmax(row):
    e = [math.exp(x) for x in row]
    return [x / sum(e) for x in e]


def test_inverted_hinge_matches_hand_computation():
    p0, p1 = softmax([2.0, 1.0, 0.0]), softmax([0.0, 3.0, 1.0])
    # token 0 at position 0 is the argmax: best other is token 1; at position 1 token 1 beats it.
    expected = ((1 + p0[0] - p0[1]) + (1 + p1[0] - p1[1])) / 2
    assert abs(inverted_hinge(LOGITS, LABELS).item() - expected) < 1e-6


def test_nll_and_sequence_log_prob_match_hand_computation():
    p0, p1 = softmax([2.0, 1.0, 0.0]), softmax([0.0, 3.0, 1.0])
    assert abs(mean_nll(LOGITS, LABELS).item() - (-(math.log(p0[0]) + math.log(p1[0])) / 2)) < 1e-6
    assert abs(sequence_log_prob(LOGITS, LABELS).item() - (math.log(p0[0]) + math.log(p1[0]))) < 1e-6


class FixedModel(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(logits.clone())

    def forward(self, input_ids, attention_mask):
        return type("Out", (), {"logits": self.logits})()


def _batch():
    return {"input_ids": torch.zeros(1, 3, dtype=torch.long), "attention_mask": torch.ones(1, 3), "labels": LABELS}


def test_npo_matches_formula_and_is_log2_scaled_at_reference():
    model = FixedModel(LOGITS)
    ref_logits = LOGITS * 0.5
    ctx = LossContext(model=model, forget=_batch(), retain=_batch(), reference=lambda b: ref_logits)
    beta = 0.1
    out = NegativePreference(beta=beta)(ctx)
    ratio = sequence_log_prob(LOGITS, LABELS) - sequence_log_prob(ref_logits, LABELS)
    expected = -(2 / beta) * torch.nn.functional.logsigmoid(-beta * ratio)
    assert abs(out["npo"].item() - expected.item()) < 1e-5
    same = NegativePreference(beta=beta)(LossContext(model=model, forget=_batch(), retain=_batch(), reference=lambda b: LOGITS))
    assert abs(same["npo"].item() - (2 / beta) * math.log(2)) < 1e-4


def test_ga_is_negative_nll_and_kl_is_zero_at_reference():
    model = FixedModel(LOGITS)
    ga = GradientAscent()(LossContext(model=model, forget=_batch(), retain=None))
    assert abs(ga["loss"].item() + mean_nll(LOGITS, LABELS).item()) < 1e-6
    kl = KLRetain()(LossContext(model=model, forget=_batch(), retain=_batch(), reference=lambda b: LOGITS))
    assert abs(kl["retain_kl"].item()) < 1e-6
    kl_far = KLRetain()(LossContext(model=model, forget=_batch(), retain=_batch(), reference=lambda b: -LOGITS))
    assert kl_far["retain_kl"].item() > 0.5
