import math

import pytest
import torch

from forgetkit.data import IGNORE_INDEX
from forgetkit.errors import ForgetkitError
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


class RecordLogits(torch.nn.Module):
    """Logits fixed per record, looked up by the record's first token (its id in ``table``)."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(table.clone())

    def forward(self, input_ids, attention_mask):
        return type("Out", (), {"logits": self.table[input_ids[:, 0]]})()


def _hand_statistics(rows, labels):
    """Per record (mean NLL, Min-K%++ with k = 0.4) from plain Python over a logits table."""
    nll, zs = [], []
    for position in range(len(rows) - 1):
        target = labels[position + 1]
        if target == IGNORE_INDEX:
            continue
        p = softmax(rows[position])
        logp = [math.log(x) for x in p]
        mu = sum(a * b for a, b in zip(p, logp))
        sigma = math.sqrt(sum(a * b * b for a, b in zip(p, logp)) - mu * mu)
        nll.append(-logp[target])
        zs.append((logp[target] - mu) / sigma)
    lowest = sorted(zs)[: max(1, math.ceil(len(zs) * 0.4))]
    return sum(nll) / len(nll), sum(lowest) / len(lowest)


def _quantiles(values, count):
    """numpy-style linear-interpolation quantiles at levels (i - 1) / (count - 1)."""
    ordered = sorted(values)
    out = []
    for i in range(count):
        h = (i / (count - 1) if count > 1 else 0.5) * (len(ordered) - 1)
        low = math.floor(h)
        high = min(low + 1, len(ordered) - 1)
        out.append(ordered[low] + (h - low) * (ordered[high] - ordered[low]))
    return out


def test_unseen_loss_matches_hand_computation():
    from forgetkit.losses.unseen import MatchUnseen

    torch.manual_seed(3)
    table = torch.randn(6, 4, 5) * 2  # 6 records, 4 positions, vocabulary of 5
    labels = [[IGNORE_INDEX, IGNORE_INDEX, 1, 3], [IGNORE_INDEX, IGNORE_INDEX, 4, 0], [IGNORE_INDEX, IGNORE_INDEX, 2, 2],
              [IGNORE_INDEX, IGNORE_INDEX, 0, 1], [IGNORE_INDEX, IGNORE_INDEX, 3, 3], [IGNORE_INDEX, 1, 2, 4]]

    def batch(ids):
        return {"input_ids": torch.tensor([[i, 0, 0, 0] for i in ids]), "attention_mask": torch.ones(len(ids), 4, dtype=torch.long),
                "labels": torch.tensor([labels[i] for i in ids])}

    forget, holdout, retain = [0, 1], [2, 3, 4], [5]
    stats = {i: _hand_statistics(table[i].tolist(), labels[i]) for i in range(6)}
    retain_nll = stats[5][0]
    model = RecordLogits(table)
    ctx = LossContext(model=model, forget=batch(forget), retain=batch(retain), holdout=batch(holdout))
    for mode in ("quantile", "hinge"):
        expected = 2.0 * retain_nll
        for index, direction in ((0, 1.0), (1, -1.0)):  # nll rises to the held-out level, Min-K%++ falls to it
            ours = sorted(stats[i][index] for i in forget)
            target = _quantiles([stats[i][index] for i in holdout], len(ours))
            if mode == "quantile":
                expected += sum((a - b) ** 2 for a, b in zip(ours, target)) / len(ours)
            else:
                expected += sum(max(0.0, direction * (b - a)) ** 2 for a, b in zip(ours, target)) / len(ours)
        terms = MatchUnseen(mode=mode, retain_weight=2.0, targets="current")(ctx)
        assert abs(terms["loss"].item() - expected) < 1e-4, (mode, terms["loss"].item(), expected)
    # Only the forget side carries gradient: the held-out quantiles are a target, not a parameter path.
    MatchUnseen(targets="current")(ctx)["loss"].backward()
    grad = model.table.grad
    assert grad[forget].abs().sum() > 0 and grad[holdout].abs().sum() == 0

    # targets=frozen (the default): the held-out quantiles come from the frozen model's logits, whatever
    # the model being trained now says about the held-out records.
    frozen_table = table.clone()
    frozen_table[holdout] = torch.randn(len(holdout), 4, 5) * 3
    frozen = RecordLogits(frozen_table)
    frozen_ctx = LossContext(model=model, forget=batch(forget), retain=batch(retain), holdout=batch(holdout),
                             reference=lambda b: frozen(b["input_ids"], b["attention_mask"]).logits.detach())
    frozen_stats = {i: _hand_statistics(frozen_table[i].tolist(), labels[i]) for i in holdout}
    expected = 2.0 * retain_nll
    for index in (0, 1):
        ours = sorted(stats[i][index] for i in forget)
        target = _quantiles([frozen_stats[i][index] for i in holdout], len(ours))
        expected += sum((a - b) ** 2 for a, b in zip(ours, target)) / len(ours)
    loss = MatchUnseen(retain_weight=2.0)
    assert loss.needs_reference and not MatchUnseen(targets="current").needs_reference
    assert abs(loss(frozen_ctx)["loss"].item() - expected) < 1e-4
    with pytest.raises(ForgetkitError, match="targets must be one of frozen, current"):
        MatchUnseen(targets="moving")


def test_unseen_loss_is_zero_when_forget_looks_like_holdout():
    from forgetkit.losses.unseen import MatchUnseen

    table = torch.randn(2, 4, 5)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 1, 3]] * 2)
    same = {"input_ids": torch.tensor([[0, 0, 0, 0], [1, 0, 0, 0]]), "attention_mask": torch.ones(2, 4, dtype=torch.long),
            "labels": labels}
    terms = MatchUnseen(retain_weight=0.0, targets="current")(
        LossContext(model=RecordLogits(table), forget=same, retain=same, holdout=same))
    assert terms["loss"].item() < 1e-10


def test_unseen_canary_term_puts_each_secret_at_its_twins_median():
    """L_canary = mean_r ((s_r - m_r) / n_r)^2 by hand, through collate's twin rows."""
    from forgetkit.data import Example, collate
    from forgetkit.losses.unseen import MatchUnseen

    torch.manual_seed(5)
    table = torch.randn(8, 4, 5) * 2  # records 0, 1 forgotten; 2-4 twins of 0, 5-7 twins of 1
    labels = [IGNORE_INDEX, IGNORE_INDEX, 1, 3]

    def example(i, twins=()):
        return Example(input_ids=[i, 0, 0, 0], labels=labels, prompt_length=2, index=i, twins=tuple(twins))

    forget = collate([example(0, [example(2), example(3), example(4)]), example(1, [example(j) for j in (5, 6, 7)])], 0)
    assert forget["twin_owner"].tolist() == [0, 0, 0, 1, 1, 1] and forget["twin_input_ids"].shape == (6, 4)
    plain = collate([example(0), example(1)], 0)
    assert "twin_owner" not in plain

    def summed_nll(i):
        return _hand_statistics(table[i].tolist(), labels)[0] * 2  # mean over the 2 target tokens, summed

    expected = sum(((summed_nll(r) - sorted(summed_nll(j) for j in twins)[1]) / 2) ** 2
                   for r, twins in ((0, (2, 3, 4)), (1, (5, 6, 7)))) / 2
    model = RecordLogits(table)
    ctx = LossContext(model=model, forget=forget, retain=plain, holdout=plain)
    with_canary = MatchUnseen(retain_weight=0.0, targets="current")(ctx)
    assert abs(with_canary["match_canary"].item() - expected) < 1e-5
    without = MatchUnseen(retain_weight=0.0, targets="current", canary_weight=0.0)(ctx)
    assert "match_canary" not in without
    no_secrets = MatchUnseen(retain_weight=0.0, targets="current")(LossContext(model=model, forget=plain, retain=plain, holdout=plain))
    assert no_secrets["match_canary"].item() == 0.0  # logged at every step, so the log's columns stay the same
    assert abs(with_canary["loss"].item() - without["loss"].item() - expected) < 1e-5
    # The twins are a target: no gradient reaches them.
    with_canary["match_canary"].backward()
    assert model.table.grad[[0, 1]].abs().sum() > 0 and model.table.grad[2:].abs().sum() == 0


def test_unseen_attaches_twins_drawn_apart_from_the_audit_candidates():
    from forgetkit.data import Record
    from forgetkit.losses.unseen import MatchUnseen
    from forgetkit.metrics.canary import candidates

    secret = "761-440-9852"
    with_secret = Record(fields={"question": "Phone?", "answer": f"It is {secret}.", "secret": secret}, source="f.jsonl:1")
    plain = Record(fields={"question": "Born?", "answer": "In 1985."}, source="f.jsonl:2")
    encoded = []

    def encode(records):
        encoded.append([r["answer"] for r in records])
        return [f"encoded {r['answer']}" for r in records]

    out = MatchUnseen(canary_twins=5).prepare_examples([with_secret, plain], [_blank(0), _blank(1)], encode)
    assert out[0].twins == tuple(f"encoded {a}" for a in encoded[0]) and out[1].twins == ()
    twins = [a[len("It is "):-1] for a in encoded[0]]
    assert len(set(twins)) == 5 and secret not in twins
    assert all(len(t) == len(secret) and t[3] == t[7] == "-" for t in twins)  # the secret's format
    assert not set(twins) & set(candidates(secret, 1000))  # not the audit's candidates
    assert MatchUnseen(canary_twins=0).prepare_examples([with_secret], [_blank(0)], encode)[0].twins == ()
    with pytest.raises(ForgetkitError, match="canary_twins must be 0 or more"):
        MatchUnseen(canary_twins=-1)


def _blank(index):
    from forgetkit.data import Example

    return Example(input_ids=[0, 1], labels=[IGNORE_INDEX, 1], prompt_length=1, index=index)


def test_unseen_truth_ratio_statistic_matches_hand_computation():
    """log TR_r = mean NLL(answer) - mean_k mean NLL(wrong answer k), matched by sorted quantiles to
    the held-out records' values under the frozen model; hand-computed from the logits table."""
    from forgetkit.data import Example, Record, collate
    from forgetkit.losses.unseen import MatchUnseen

    torch.manual_seed(7)
    table = torch.randn(14, 4, 5) * 2  # rows 0-1 forgotten, 2-4 held out, 5 retain, 6-13 wrong answers
    frozen_table = table.clone()
    frozen_table[2:5] = torch.randn(3, 4, 5) * 3  # the frozen model disagrees about the held-out records
    labels = [IGNORE_INDEX, IGNORE_INDEX, 1, 3]

    def example(i, wrong=()):
        return Example(input_ids=[i, 0, 0, 0], labels=labels, prompt_length=2, index=i,
                       perturbed=tuple(example(j) for j in wrong))

    wrong_of = {0: (6, 7), 1: (8,), 2: (9, 10), 3: (11,), 4: (12, 13)}  # records may hold different counts
    forget = collate([example(0, wrong_of[0]), example(1, wrong_of[1])], 0)
    assert forget["perturbed_owner"].tolist() == [0, 0, 1]
    holdout = collate([example(i, wrong_of[i]) for i in (2, 3, 4)], 0)
    retain = collate([example(5)], 0)

    def nll(t, i):
        return _hand_statistics(t[i].tolist(), labels)[0]

    def log_tr(t, i):
        return nll(t, i) - sum(nll(t, j) for j in wrong_of[i]) / len(wrong_of[i])

    ours = sorted(log_tr(table, i) for i in (0, 1))
    target = _quantiles([log_tr(frozen_table, i) for i in (2, 3, 4)], 2)
    expected = sum((a - b) ** 2 for a, b in zip(ours, target)) / 2
    model, frozen = RecordLogits(table), RecordLogits(frozen_table)
    ctx = LossContext(model=model, forget=forget, retain=retain, holdout=holdout,
                      reference=lambda b: frozen(b["input_ids"], b["attention_mask"]).logits.detach())
    terms = MatchUnseen(statistics="truth_ratio", retain_weight=0.0)(ctx)
    assert abs(terms["match_truth_ratio"].item() - expected) < 1e-5
    assert abs(terms["loss"].item() - expected) < 1e-5
    # Gradient reaches the forget answers and their wrong answers, nothing on the held-out side.
    terms["loss"].backward()
    grad = model.table.grad
    assert grad[[0, 1, 6, 7, 8]].abs().sum() > 0 and grad[[2, 3, 4, 9, 10, 11, 12, 13]].abs().sum() == 0

    # The hinge only pushes up to the held-out level: a forget record already above it costs nothing.
    hinge = MatchUnseen(statistics="truth_ratio", retain_weight=0.0, mode="hinge")(ctx)["loss"].item()
    assert abs(hinge - sum(max(0.0, b - a) ** 2 for a, b in zip(ours, target)) / 2) < 1e-5

    # Wrong answers are attached from ``perturbed_answer`` (a list or one string); a record without any
    # is refused with its file and line.
    encode = lambda records: [r["answer"] for r in records]  # noqa: E731
    records = [Record(fields={"question": "Q?", "answer": "A.", "perturbed_answer": ["B.", "C."]}, source="f.jsonl:1"),
               Record(fields={"question": "Q?", "answer": "A.", "perturbed_answer": "D."}, source="f.jsonl:2")]
    loss = MatchUnseen(statistics="nll,truth_ratio", canary_twins=0)
    out = loss.prepare_examples(records, [_blank(0), _blank(1)], encode)
    assert [e.perturbed for e in out] == [("B.", "C."), ("D.",)]
    assert loss.prepare_holdout(records, [_blank(0), _blank(1)], encode)[1].perturbed == ("D.",)
    assert MatchUnseen().prepare_holdout(records, [_blank(0), _blank(1)], encode)[0].perturbed == ()
    bare = Record(fields={"question": "Q?", "answer": "A."}, source="h.jsonl:7")
    with pytest.raises(ForgetkitError, match="h.jsonl:7: .*perturbed_answer"):
        loss.prepare_holdout([bare], [_blank(0)], encode)


def test_unseen_huber_bounds_the_pull_of_a_far_record():
    """huber=w: g^2 within w, 2 w |g| - w^2 beyond, on the same hand statistics as the squared form."""
    from forgetkit.losses.unseen import MatchUnseen, squared_or_huber

    gaps = torch.tensor([-3.0, -0.5, 0.0, 0.25, 2.0])
    assert torch.allclose(squared_or_huber(gaps, 1.0), torch.tensor([5.0, 0.25, 0.0, 0.0625, 3.0]))
    assert torch.equal(squared_or_huber(gaps, 0.0), gaps.square())

    torch.manual_seed(11)
    table = torch.randn(4, 4, 5) * 4
    labels = [IGNORE_INDEX, IGNORE_INDEX, 1, 3]
    batch = lambda ids: {"input_ids": torch.tensor([[i, 0, 0, 0] for i in ids]),  # noqa: E731
                         "attention_mask": torch.ones(len(ids), 4, dtype=torch.long), "labels": torch.tensor([labels] * len(ids))}
    ctx = LossContext(model=RecordLogits(table), forget=batch([0, 1]), retain=batch([0]), holdout=batch([2, 3]))
    ours = sorted(_hand_statistics(table[i].tolist(), labels)[0] for i in (0, 1))
    target = _quantiles([_hand_statistics(table[i].tolist(), labels)[0] for i in (2, 3)], 2)
    width = 0.5
    expected = sum(g * g if abs(g) <= width else 2 * width * abs(g) - width * width
                   for g in (a - b for a, b in zip(ours, target))) / 2
    terms = MatchUnseen(statistics="nll", huber=width, retain_weight=0.0, targets="current")(ctx)
    assert abs(terms["match_nll"].item() - expected) < 1e-5
    assert any(abs(a - b) > width for a, b in zip(ours, target))  # the linear branch is exercised
    with pytest.raises(ForgetkitError, match="huber must be 0"):
        MatchUnseen(huber=-1.0)


def test_unseen_sigma_floor_keeps_the_min_k_pp_value_and_bounds_its_gradient():
    """sigma_floor=f: the Min-K%++ gap is the exact score's, and the gradient on the forget record's logits is
    2 (s - q) (1/|S|) sum over the lowest-z tokens t of (onehot(x_t) - softmax_t) / max(sigma_t, f), by hand."""
    from forgetkit.losses.unseen import MatchUnseen

    table = torch.tensor([
        [[9.0, 0.0, 0.0, 0.0], [0.0, 8.0, 0.0, 0.0], [0.0, 0.0, 2.0, 1.0], [1.0, 0.0, 0.0, 0.0]],  # forget
        [[1.0, 2.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0], [2.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]],  # held out
    ])
    # Three target tokens: near-certain; confidently wrong (sigma small, z about -1/sqrt(p), chosen by
    # Min-K); likely.
    labels = [IGNORE_INDEX, 0, 3, 2]
    batch = lambda ids: {"input_ids": torch.tensor([[i, 0, 0, 0] for i in ids]),  # noqa: E731
                         "attention_mask": torch.ones(len(ids), 4, dtype=torch.long), "labels": torch.tensor([labels] * len(ids))}
    floor = 0.5
    per_token = []
    for position in range(3):
        p = softmax(table[0, position].tolist())
        logp = [math.log(x) for x in p]
        mu = sum(a * b for a, b in zip(p, logp))
        sigma = math.sqrt(max(sum(a * b * b for a, b in zip(p, logp)) - mu * mu, 1e-12))
        per_token.append(((logp[labels[position + 1]] - mu) / sigma, sigma, p))
    chosen = sorted(range(3), key=lambda t: per_token[t][0])[:math.ceil(3 * 0.4)]
    score = sum(per_token[t][0] for t in chosen) / len(chosen)
    target = _hand_statistics(table[1].tolist(), labels)[1]
    expected_grad = torch.zeros(4, 4)
    for t in chosen:
        _, sigma, p = per_token[t]
        for v in range(4):
            expected_grad[t, v] = 2 * (score - target) * ((v == labels[t + 1]) - p[v]) / max(sigma, floor) / len(chosen)
    assert any(per_token[t][1] < floor for t in chosen)  # the floor is exercised

    grads = {}
    for f in (floor, 0.0):
        model = RecordLogits(table)
        loss = MatchUnseen(statistics="min_k_pp", sigma_floor=f, retain_weight=0.0, targets="current", canary_weight=0.0)
        terms = loss(LossContext(model=model, forget=batch([0]), retain=batch([0]), holdout=batch([1])))
        assert abs(terms["match_min_k_pp"].item() - (score - target) ** 2) < 1e-4
        terms["loss"].backward()
        grads[f] = model.table.grad[0].clone()
    assert torch.allclose(grads[floor], expected_grad, atol=1e-5)
    assert grads[0.0].abs().max() > 5 * grads[floor].abs().max()  # the exact gradient, through sigma too, is 8x larger
    with pytest.raises(ForgetkitError, match="sigma_floor must be 0"):
        MatchUnseen(sigma_floor=-0.1)


def test_unseen_ihl_mode_pushes_below_the_held_out_level_and_pulls_back_above_it():
    """mode=ihl by hand: records ranked by NLL, paired with the held-out quantile of their rank; IHL
    averaged over the record's tokens where it is likelier than its quantile, the squared overshoot
    where it is not."""
    from forgetkit.losses.unseen import MatchUnseen

    torch.manual_seed(13)
    table = torch.randn(6, 4, 5) * 3  # rows 0-2 forgotten, 3-5 held out
    labels = [IGNORE_INDEX, IGNORE_INDEX, 1, 3]
    batch = lambda ids: {"input_ids": torch.tensor([[i, 0, 0, 0] for i in ids]),  # noqa: E731
                         "attention_mask": torch.ones(len(ids), 4, dtype=torch.long), "labels": torch.tensor([labels] * len(ids))}

    def hand_ihl(i):
        values = []
        for position in (1, 2):
            p = softmax(table[i, position].tolist())
            true = labels[position + 1]
            values.append(1 + p[true] - max(x for v, x in enumerate(p) if v != true))
        return sum(values) / len(values)

    nll = {i: _hand_statistics(table[i].tolist(), labels)[0] for i in range(6)}
    ranked = sorted((0, 1, 2), key=lambda i: nll[i])
    quantiles = _quantiles([nll[i] for i in (3, 4, 5)], 3)
    paired = dict(zip(ranked, quantiles))
    below = {i: nll[i] < paired[i] for i in ranked}
    assert set(below.values()) == {True, False}  # both branches are exercised
    expected = sum(hand_ihl(i) if below[i] else (nll[i] - paired[i]) ** 2 for i in (0, 1, 2)) / 3
    ctx = LossContext(model=RecordLogits(table), forget=batch([0, 1, 2]), retain=batch([0]), holdout=batch([3, 4, 5]))
    terms = MatchUnseen(statistics="nll", mode="ihl", retain_weight=0.0, targets="current")(ctx)
    assert abs(terms["match_nll"].item() - expected) < 1e-5
