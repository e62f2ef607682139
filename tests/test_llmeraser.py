"""LLMEraser: the inverse-curvature solvers, the curvature-vector products, and edits of a fitted
LoRA adapter through the CLI (removal, correction, modification, and the inputs it refuses)."""

from __future__ import annotations

import json

import pytest
import torch
from peft import IA3Config, LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from forgetkit.benchmark.eraser_case import LoraFit, build_case, facts, fit_lora, mean_record_loss, write_jsonl
from forgetkit.cli import app
from forgetkit.data import encode, load_records
from forgetkit.influence.hessian import AdapterObjective, per_example_loss_sum
from forgetkit.influence.solvers import conjugate_gradient, lissa
from forgetkit.losses.base import shift

runner = CliRunner()


# --------------------------------------------------------------------------- solvers


def quadratic(seed: int = 0, size: int = 12):
    """A known SPD matrix split over two 'parameters' (a 2x3 and a 6-vector) and a right-hand side."""
    generator = torch.Generator().manual_seed(seed)
    m = torch.randn(size, size, generator=generator, dtype=torch.float64)
    hessian = m @ m.T / size + 0.1 * torch.eye(size, dtype=torch.float64)
    b = torch.randn(size, generator=generator, dtype=torch.float64)

    def split(flat):
        return [flat[:6].reshape(2, 3), flat[6:]]

    def hvp(vector):
        return split(hessian @ torch.cat([t.reshape(-1) for t in vector]))

    return hessian, b, split, hvp


@pytest.mark.parametrize("damping", [0.0, 0.05])
def test_conjugate_gradient_returns_the_inverse_hessian_vector_product(damping):
    hessian, b, split, hvp = quadratic()
    expected = torch.linalg.solve(hessian + damping * torch.eye(len(b), dtype=torch.float64), b)
    solution = conjugate_gradient(hvp, split(b), damping, tol=1e-12, max_iter=100)
    got = torch.cat([t.reshape(-1) for t in solution.x])
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    assert solution.iterations <= len(b) + 2 and solution.relative_residual < 1e-8
    assert solution.damping == damping


def test_lissa_converges_to_the_same_solution():
    hessian, b, split, hvp = quadratic(seed=1)
    damping = 0.05
    expected = torch.linalg.solve(hessian + damping * torch.eye(len(b), dtype=torch.float64), b)
    scale = 1.1 * float(torch.linalg.eigvalsh(hessian).max() + damping)
    solution = lissa(hvp, split(b), damping, scale=scale, tol=1e-12, max_iter=20000)
    got = torch.cat([t.reshape(-1) for t in solution.x])
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    assert solution.relative_residual < 1e-6


def test_conjugate_gradient_refuses_an_indefinite_matrix():
    hessian, b, split, _ = quadratic()
    indefinite = hessian - 2 * float(torch.linalg.eigvalsh(hessian).max()) * torch.eye(len(b), dtype=torch.float64)

    def hvp(vector):
        return split(indefinite @ torch.cat([t.reshape(-1) for t in vector]))

    with pytest.raises(ValueError, match="negative curvature"):
        conjugate_gradient(hvp, split(b), 0.0)


# --------------------------------------------------------------------------- curvature products


@pytest.fixture
def tiny_lora(tiny_models, data_dir):
    """A float64 tiny Llama with a rank-2 LoRA whose B is non-zero (so curvature is not trivial)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], attn_implementation="eager").double()
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    model.eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    params = [p for p in model.parameters() if p.requires_grad]
    examples = encode(load_records(data_dir / "forget_qa.jsonl"), tokenizer, context_length=128)[:6]
    return model, params, examples, tokenizer.pad_token_id


def random_vector(params, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]


def test_hessian_vector_product_matches_finite_differences(tiny_lora):
    model, params, examples, pad = tiny_lora
    objective = AdapterObjective(model, params, pad, batch_size=4, weight_decay=0.01, curvature="hessian")
    v = random_vector(params)
    product = objective.hvp(examples, v)

    def gradient_at(shift_by):
        with torch.no_grad():
            for p, d in zip(params, v):
                p.add_(shift_by * d)
        g = objective.gradient_sum(examples)
        with torch.no_grad():
            for p, d in zip(params, v):
                p.sub_(shift_by * d)
        return [x.double() / len(examples) + 0.01 * (p.detach() + shift_by * d) for x, p, d in zip(g, params, v)]

    eps = 1e-4
    plus, minus = gradient_at(eps), gradient_at(-eps)
    for got, a, b in zip(product, plus, minus):
        finite_difference = (a - b) / (2 * eps)
        # Relative to the tensor's scale: Llama's RMSNorm computes in float32 even in a float64 model.
        assert float((got - finite_difference).abs().max()) <= 1e-4 * float(finite_difference.abs().max())


def test_gauss_newton_product_is_j_transpose_hz_j(tiny_lora):
    """Against the explicit matrix: J from torch.func.jacfwd (fewer parameters than outputs), H_z written out per token."""
    model, params, examples, pad = tiny_lora
    from forgetkit.data import collate

    examples = examples[:2]  # the explicit Jacobian is (positions x vocabulary x parameters) per record
    objective = AdapterObjective(model, params, pad, batch_size=2, weight_decay=0.0, curvature="gauss-newton")
    v = random_vector(params, seed=2)
    product = torch.cat([t.reshape(-1) for t in objective.hvp(examples, v)])

    names = objective.names
    shapes = [p.shape for p in params]
    flat0 = torch.cat([p.detach().reshape(-1) for p in params])
    total = torch.zeros(len(flat0), len(flat0), dtype=torch.float64)
    for example in examples:
        batch = collate([example], pad)

        def logits_of_flat(flat):
            pieces, start = {}, 0
            for name, shape in zip(names, shapes):
                size = shape.numel()
                pieces[name] = flat[start:start + size].reshape(shape)
                start += size
            out = torch.func.functional_call(model, pieces, args=(), kwargs={
                "input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}).logits
            return out[0]

        jacobian = torch.func.jacfwd(logits_of_flat)(flat0)  # (positions, vocab, parameters); t predicts t + 1
        logits, _, mask = shift(logits_of_flat(flat0).unsqueeze(0), batch["labels"])
        probs = torch.softmax(logits[0], -1)
        for position in torch.nonzero(mask[0]).flatten().tolist():
            p = probs[position]
            h_z = (torch.diag(p) - torch.outer(p, p)) / int(mask.sum())
            j = jacobian[position]
            total += j.T @ h_z @ j
    expected = total @ torch.cat([t.reshape(-1) for t in v]) / len(examples)
    assert torch.allclose(product, expected, rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------------------- edits through the CLI


@pytest.fixture(scope="module")
def fitted(memorised, tmp_path_factory):
    """A rank-4 LoRA fitted on 24 facts about people the quickstart model never saw."""
    folder = tmp_path_factory.mktemp("eraser")
    base = memorised / "model"
    records = facts(24)
    train = write_jsonl(folder / "D.jsonl", records)
    fit = LoraFit(rank=4, steps=60, lr=1e-2, weight_decay=0.3)
    fit_lora(base, train, folder / "adapter", fit)
    return {"folder": folder, "base": base, "records": records, "train": train, "fit": fit}


def erase(fitted, out, *edit_args, extra=()):
    args = ["unlearn", str(fitted["base"]), "--method", "llmeraser", "--adapter", str(fitted["folder"] / "adapter"),
            "--train", str(fitted["train"]), *edit_args, "--weight-decay", str(fitted["fit"].weight_decay),
            "--tol", "1e-3", "-o", str(out), *extra]
    return runner.invoke(app, args)


def test_edit_writes_a_plain_adapter_of_the_same_rank_with_the_solve_in_its_metadata(fitted):
    folder, base = fitted["folder"], fitted["base"]
    removed = write_jsonl(folder / "R.jsonl", fitted["records"][:3])
    result = erase(fitted, folder / "removed", "--remove", str(removed))
    assert result.exit_code == 0, result.output
    edited = folder / "removed"
    assert json.loads((edited / "adapter_config.json").read_text())["r"] == 4
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), edited)
    meta = json.loads((edited / "forgetkit.json").read_text())
    results = meta["results"]
    assert meta["parameters"]["method"] == "llmeraser" and results["edit"] == "remove"
    assert results["records_edited"] == 3 and results["train_records"] == 24
    assert results["iterations"] >= 1 and results["relative_residual"] <= 1e-3
    assert results["damping"] == pytest.approx(1e-3) and results["solver"] == "cg"
    assert "remove" in meta["inputs"] and "train" in meta["inputs"]
    # The removed facts became less likely.
    assert mean_record_loss(base, edited, removed) > mean_record_loss(base, folder / "adapter", removed) + 0.05


FACTS = 48  # each also asked as "Tell me: ...": 96 records


@pytest.fixture(scope="module", params=["remove", "correct"])
def against_retraining(request, memorised, tmp_path_factory):
    """FACTS facts, each also asked as "Tell me: ..."; 4 twins removed, or 4 wrong answers
    corrected. The original adapter and one retrained on the cleaned data, from the same LoRA init."""
    kind = request.param
    folder = tmp_path_factory.mktemp(f"retrain-{kind}")
    base = memorised / "model"
    case = build_case(kind, FACTS, 4, "twins")
    paths = {name: write_jsonl(folder / f"{name}.jsonl", getattr(case, name))
             for name in ("train", "clean", "edit", "watched", "kept")}
    # 60 steps: the edited records move further toward retraining than after 100 (with 96 facts: 0.85 and
    # 1.05 of the way for remove and correct, against 0.69 and 0.80) in 60% of the time. 48 facts halve the
    # fits' cost for CI and still move them 0.65 and 0.82 of the way.
    fit = LoraFit(rank=4, steps=60, lr=1e-2, weight_decay=0.3)
    fit_lora(base, paths["train"], folder / "original", fit)
    fit_lora(base, paths["clean"], folder / "retrained", fit)
    return {"kind": kind, "folder": folder, "base": base, "paths": paths, "fit": fit}


def test_edit_moves_the_edited_records_half_way_to_retraining(against_retraining):
    case = against_retraining
    folder, base, paths = case["folder"], case["base"], case["paths"]
    args = ["unlearn", str(base), "--method", "llmeraser", "--adapter", str(folder / "original"),
            "--train", str(paths["train"]), f"--{case['kind']}", str(paths["edit"]), "--weight-decay", "0.3",
            "--hessian-samples", "24", "--tol", "1e-2", "-o", str(folder / "edited")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output

    def loss(adapter, records):
        return mean_record_loss(base, folder / adapter, paths[records])

    original, retrained, edited = loss("original", "watched"), loss("retrained", "watched"), loss("edited", "watched")
    moved = (edited - original) / (retrained - original)
    assert moved >= 0.5, (original, edited, retrained)
    kept_before, kept_after = loss("original", "kept"), loss("edited", "kept")
    assert abs(kept_after - kept_before) <= 0.02 * kept_before, (kept_before, kept_after)


def test_modification_needs_the_original_question(fitted):
    folder = fitted["folder"]
    record = fitted["records"][0]
    bad = write_jsonl(folder / "M_bad.jsonl", [{"question": "Who is it?", "answer": record["answer"]}])
    result = erase(fitted, folder / "m_bad", "--modify", str(bad))
    assert result.exit_code != 0 and "original_question" in result.output
    good = write_jsonl(folder / "M.jsonl", [{"original_question": record["question"],
                                             "question": "Tell me: " + record["question"], "answer": record["answer"]}])
    result = erase(fitted, folder / "modified", "--modify", str(good), extra=("--solver", "lissa", "--max-iter", "30"))
    assert result.exit_code == 0, result.output
    meta = json.loads((folder / "modified" / "forgetkit.json").read_text())
    assert meta["results"]["edit"] == "modify" and meta["results"]["solver"] == "lissa"


def test_refuses_records_that_are_not_in_the_training_set(fitted):
    folder = fitted["folder"]
    stranger = write_jsonl(folder / "R_bad.jsonl", [fitted["records"][0], {"question": "Who?", "answer": "Nobody."}])
    result = erase(fitted, folder / "bad", "--remove", str(stranger))
    assert result.exit_code == 1
    assert f"{stranger}:2: not a record of the training set" in " ".join(result.output.split())
    assert "Traceback" not in result.output and not (folder / "bad").exists()


def test_refuses_an_adapter_for_another_base_model(fitted, tiny_models):
    args = ["unlearn", str(tiny_models["llama"]), "--method", "llmeraser", "--adapter", str(fitted["folder"] / "adapter"),
            "--train", str(fitted["train"]), "--remove", str(fitted["train"]), "-o", str(fitted["folder"] / "x")]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "trained for base model" in " ".join(result.output.split())


def test_refuses_a_non_lora_adapter(fitted, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(fitted["base"])
    ia3 = get_peft_model(model, IA3Config(target_modules=["k_proj", "v_proj", "down_proj"],
                                          feedforward_modules=["down_proj"]))
    ia3.save_pretrained(tmp_path / "ia3")
    args = ["unlearn", str(fitted["base"]), "--method", "llmeraser", "--adapter", str(tmp_path / "ia3"),
            "--train", str(fitted["train"]), "--remove", str(fitted["train"]), "-o", str(tmp_path / "x")]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "LoRA adapters only" in " ".join(result.output.split())


def test_per_example_loss_is_the_mean_of_each_records_answer_nll(tiny_lora):
    """The objective LLMEraser differentiates, checked by hand on two records of different lengths."""
    model, _, examples, pad = tiny_lora
    total = per_example_loss_sum(model, examples[:2], pad, torch.device("cpu"))
    by_hand = 0.0
    for example in examples[:2]:
        ids = torch.tensor([example.input_ids])
        labels = torch.tensor([example.labels])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1]
        targets = labels[0, 1:]
        keep = targets != -100
        by_hand += float(torch.nn.functional.cross_entropy(logits[keep], targets[keep]))
    assert float(total.detach()) == pytest.approx(by_hand, rel=1e-9)
