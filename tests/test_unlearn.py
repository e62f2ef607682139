import dataclasses
import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from forgetkit.adapters import add_reference_adapter, load_init_adapter, reference_mode
from forgetkit.artifacts import read_metadata
from forgetkit.errors import ForgetkitError
from forgetkit.losses.base import LossContext, UnlearningLoss
from forgetkit.models import load_model
from forgetkit.stages.fisher import FisherParams, run_fisher
from forgetkit.stages.init import InitParams, run_init
from forgetkit.stages.unlearn import UnlearnParams, run_unlearn
from forgetkit.training import TrainConfig

PROBE = torch.randint(3, 300, (2, 24), generator=torch.Generator().manual_seed(2))
FAST = TrainConfig(lr=5e-3, epochs=2, batch_size=8, micro_batch_size=4)


def logits(model):
    with torch.no_grad():
        return model(input_ids=PROBE).logits


@pytest.fixture(scope="module")
def fila_init(tiny_models, data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    inits = {}
    for arch in ("llama", "gpt2"):
        model = str(tiny_models[arch])
        run_fisher(model, str(data_dir / "forget.jsonl"), str(data_dir / "retain_small.jsonl"), root / f"{arch}.st", FisherParams())
        run_init(model, root / f"{arch}-init", InitParams(scheme="fila", rank=4), fisher=str(root / f"{arch}.st"))
        inits[arch] = root / f"{arch}-init"
    return inits


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_fila_adapter_applies_to_the_original_base(tiny_models, data_dir, fila_init, tmp_path, arch):
    model_dir = str(tiny_models[arch])
    run_unlearn(model_dir, str(data_dir / "forget.jsonl"), tmp_path / "adapter", UnlearnParams(train=FAST),
                retain=str(data_dir / "retain_small.jsonl"), init=str(fila_init[arch]))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16  # rank 2r, same scaling
    # The trained model, rebuilt the way training ran it: residual base + the trained (A, B),
    # which peft stores as the first r rows/columns of the converted factors.
    trained = load_init_adapter(load_model(model_dir).model, fila_init[arch], mutates_base=True)
    converted = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    state = {}
    for key, value in converted.items():
        name = key.replace(".weight", ".default.weight")
        state[name] = value[:4] if "lora_A" in key else value[:, :4]
    missing = trained.load_state_dict(state, strict=False)
    assert not missing.unexpected_keys
    plain = PeftModel.from_pretrained(load_model(model_dir).model, str(tmp_path / "adapter"))
    original = logits(load_model(model_dir).model)
    assert (logits(plain) - logits(trained)).abs().max().item() < 1e-4
    assert (logits(plain) - original).abs().max().item() > 1e-3  # training changed something
    meta = read_metadata(tmp_path / "adapter")
    assert meta.stage == "unlearn" and meta.results["converted_from_residual_base"] and meta.results["steps"] == 6
    assert not (tmp_path / "adapter.checkpoints").exists()


def retain_examples(model_dir, data_dir):
    from forgetkit.stages.common import load_examples

    loaded = load_model(model_dir)
    return loaded, load_examples(str(data_dir / "retain_small.jsonl"), loaded)[1]


def test_null_space_on_a_fila_init_keeps_the_starting_function(tiny_models, data_dir, fila_init):
    from forgetkit.adapters import iter_lora_layers
    from forgetkit.nullspace import confine

    model_dir = str(tiny_models["llama"])
    original = logits(load_model(model_dir).model)
    loaded, examples = retain_examples(model_dir, data_dir)
    model = load_init_adapter(loaded.model, fila_init["llama"], mutates_base=True)
    add_reference_adapter(model, fila_init["llama"])
    before = {name: layer.lora_A["default"].weight.detach().clone() for name, layer in iter_lora_layers(model)}
    confinement = confine(model, examples, loaded.tokenizer.pad_token_id, 0.5, residual_base=True)
    moved = max((layer.lora_A["default"].weight - before[name]).abs().max().item() for name, layer in iter_lora_layers(model))
    assert moved > 1e-3  # FILA's A read the blocked directions, and the projection took them off
    # ...and the base took over what the adapter lost: base + adapter is still the original model.
    assert (logits(model) - original).abs().max().item() < 1e-4
    with reference_mode(model):
        assert (logits(model) - original).abs().max().item() < 1e-4
    for (name, layer), basis in zip(iter_lora_layers(model), confinement.bases):
        assert torch.equal(confinement.initial_a[name], layer.lora_A["default"].weight)
        assert (layer.lora_A["default"].weight @ basis).abs().max().item() < 1e-5


def test_null_space_with_fila_saves_an_adapter_off_the_retain_directions(tiny_models, data_dir, fila_init, tmp_path):
    from forgetkit.adapters import iter_lora_layers
    from forgetkit.nullspace import input_moments

    model_dir = str(tiny_models["llama"])
    run_unlearn(model_dir, str(data_dir / "forget.jsonl"), tmp_path / "adapter", UnlearnParams(train=FAST, null_space=0.5),
                retain=str(data_dir / "retain_small.jsonl"), init=str(fila_init["llama"]))
    loaded, examples = retain_examples(model_dir, data_dir)
    plain = PeftModel.from_pretrained(loaded.model, str(tmp_path / "adapter"))
    assert (logits(plain) - logits(load_model(model_dir).model)).abs().max().item() > 1e-3  # it trained
    # Both halves of the converted rank-2r A (the trained A and the starting A it is taken against) read
    # only the free directions of the retain inputs on the original model: had the conversion used the
    # init's unprojected A, the second half would not.
    moments = input_moments(plain, examples, loaded.tokenizer.pad_token_id)
    for name, layer in iter_lora_layers(plain):
        values, vectors = torch.linalg.eigh(moments[name])
        blocked = vectors[:, int(round(0.5 * values.numel())):].float()
        a = layer.lora_A["default"].weight.float()
        assert a.shape[0] == 8
        assert (a @ blocked).abs().max().item() < 1e-4 * max(1.0, a.abs().max().item())


def test_reference_mode_is_the_original_model(tiny_models, fila_init):
    model_dir = str(tiny_models["llama"])
    original = logits(load_model(model_dir).model)
    model = load_init_adapter(load_model(model_dir).model, fila_init["llama"], mutates_base=True)
    add_reference_adapter(model, fila_init["llama"])
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:  # only the trained ("default") adapter
                p.add_(0.05)
    assert (logits(model) - original).abs().max().item() > 1e-3
    with reference_mode(model):
        assert (logits(model) - original).abs().max().item() < 1e-4
    assert all(p.requires_grad == (".default." in n) for n, p in model.named_parameters() if "lora_" in n)


def test_resume_reproduces_an_uninterrupted_run(tiny_models, data_dir, tmp_path, monkeypatch):
    model_dir, forget, retain = str(tiny_models["llama"]), str(data_dir / "forget.jsonl"), str(data_dir / "retain_small.jsonl")
    params = UnlearnParams(train=TrainConfig(lr=5e-3, epochs=3, batch_size=8, micro_batch_size=4))
    run_unlearn(model_dir, forget, tmp_path / "full", params, retain=retain)

    import forgetkit.training as training

    real_save = training._save_checkpoint

    def save_then_die(root, epoch, *args):
        real_save(root, epoch, *args)
        if epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_unlearn(model_dir, forget, tmp_path / "cut", params, retain=retain)
    assert not (tmp_path / "cut").exists() and (tmp_path / "cut.checkpoints" / "epoch-0002").is_dir()
    monkeypatch.setattr(training, "_save_checkpoint", real_save)
    run_unlearn(model_dir, forget, tmp_path / "cut", params, retain=retain, resume=True)

    full = load_file(str(tmp_path / "full" / "adapter_model.safetensors"))
    resumed = load_file(str(tmp_path / "cut" / "adapter_model.safetensors"))
    assert all(torch.allclose(full[k], resumed[k], atol=1e-6) for k in full)
    log_full = json.loads((tmp_path / "full" / "training_log.json").read_text())
    log_cut = json.loads((tmp_path / "cut" / "training_log.json").read_text())
    assert [round(e["loss"], 5) for e in log_full] == [round(e["loss"], 5) for e in log_cut]


def test_resume_refuses_other_parameters(tiny_models, data_dir, tmp_path):
    (tmp_path / "out.checkpoints").mkdir()
    (tmp_path / "out.checkpoints" / "params.json").write_text("{}")
    with pytest.raises(ForgetkitError, match="checkpoints were made with other parameters"):
        run_unlearn(str(tiny_models["llama"]), str(data_dir / "forget.jsonl"), tmp_path / "out",
                    UnlearnParams(train=FAST), retain=str(data_dir / "retain_small.jsonl"), resume=True)


class ExplodingLoss(UnlearningLoss):
    name = "explode"
    needs_retain = False

    def __call__(self, ctx: LossContext):
        out = ctx.model(input_ids=ctx.forget["input_ids"]).logits.mean()
        return {"loss": out * float("nan")}


def test_divergence_guard_stops_cleanly(tiny_models, data_dir, tmp_path, monkeypatch):
    import forgetkit.stages.unlearn as unlearn_stage

    monkeypatch.setattr(unlearn_stage, "load_loss", lambda name, params: ExplodingLoss())
    with pytest.raises(ForgetkitError, match="training diverged at epoch 1, step 1: loss is nan"):
        run_unlearn(str(tiny_models["llama"]), str(data_dir / "forget.jsonl"), tmp_path / "out", UnlearnParams(train=FAST))
    assert not (tmp_path / "out").exists()


class RetainCountingLoss(UnlearningLoss):
    """A loss of zero (through both sets, so both are used) that records how many forget and retain
    records each micro-batch brought."""
    name = "count"
    needs_retain = True
    seen: list = []

    def __call__(self, ctx: LossContext):
        self.seen.append((ctx.forget["input_ids"].shape[0], ctx.retain["input_ids"].shape[0]))
        return {"loss": (ctx.model(input_ids=ctx.forget["input_ids"]).logits.mean()
                         + ctx.model(input_ids=ctx.retain["input_ids"]).logits.mean()) * 0.0}


@pytest.mark.parametrize("retain_micro", [None, 5])
def test_retain_micro_batch_size_sets_the_retain_records_per_forget_micro_batch(
        tiny_models, data_dir, tmp_path, monkeypatch, retain_micro):
    import forgetkit.stages.unlearn as unlearn_stage

    counting = RetainCountingLoss()
    counting.seen = []
    monkeypatch.setattr(unlearn_stage, "load_loss", lambda name, params: counting)
    train = dataclasses.replace(FAST, epochs=1, retain_micro_batch_size=retain_micro)
    meta = run_unlearn(str(tiny_models["llama"]), str(data_dir / "forget_qa.jsonl"), tmp_path / "out",
                       UnlearnParams(train=train), retain=str(data_dir / "retain_small.jsonl"))
    # 16 forget records in micro-batches of 4; 20 retain records drawn 4 (or 5) at a time.
    assert counting.seen == [(4, retain_micro or 4)] * 4
    assert meta.parameters["train"]["retain_micro_batch_size"] == retain_micro


def test_retain_micro_batch_size_must_be_positive(tiny_models, data_dir, tmp_path):
    with pytest.raises(ForgetkitError, match="--retain-micro-batch-size must be at least 1"):
        run_unlearn(str(tiny_models["llama"]), str(data_dir / "forget_qa.jsonl"), tmp_path / "out",
                    UnlearnParams(train=dataclasses.replace(FAST, retain_micro_batch_size=0)),
                    retain=str(data_dir / "retain_small.jsonl"))


def test_until_forgotten_needs_holdout(tiny_models, data_dir, tmp_path):
    with pytest.raises(ForgetkitError, match="needs a held-out set"):
        run_unlearn(str(tiny_models["llama"]), str(data_dir / "forget.jsonl"), tmp_path / "out",
                    UnlearnParams(until_forgotten=True, train=FAST))


@pytest.mark.parametrize("loss", ["ga", "gd", "npo", "kl", "idk"])
def test_every_builtin_loss_trains(tiny_models, data_dir, fila_init, tmp_path, loss):
    meta = run_unlearn(str(tiny_models["llama"]), str(data_dir / "forget_qa.jsonl"), tmp_path / "out",
                       UnlearnParams(loss=loss, train=FAST), retain=str(data_dir / "retain_small.jsonl"),
                       init=str(fila_init["llama"]))
    terms = meta.results["final_terms"]
    assert meta.results["steps"] == 4 and all(v == v for v in terms.values())  # 16 QA records, batch 8


def test_idk_refuses_plain_text_records(tiny_models, data_dir, tmp_path):
    with pytest.raises(ForgetkitError, match=r"forget.jsonl:5: the idk loss needs question/answer records"):
        run_unlearn(str(tiny_models["llama"]), str(data_dir / "forget.jsonl"), tmp_path / "out",
                    UnlearnParams(loss="idk", train=FAST), retain=str(data_dir / "retain_small.jsonl"))


def test_until_forgotten_stops_once_forget_looks_unseen(memorised, tmp_path):
    # Room to spare: where the rule is met depends on the machine's floating-point reduction order
    # (CI once needed a 13th epoch at lr 3e-3), and a run that stops early costs only the epochs it ran.
    # lr 6e-3 stops after epoch 5 here (7 at 3e-3): each epoch costs a generation pass.
    budget = 24
    train = TrainConfig(lr=6e-3, epochs=budget, batch_size=4, micro_batch_size=4, seed=0)
    params = UnlearnParams(loss="ihl", train=train, until_forgotten=True)
    meta = run_unlearn(str(memorised / "model"), str(memorised / "forget.jsonl"), tmp_path / "out", params,
                       retain=str(memorised / "retain.jsonl"), holdout=str(memorised / "holdout.jsonl"))
    assert (meta.results["stopped_early"] or "").startswith("forgotten after epoch"), meta.results["stopped_early"]
    assert meta.results["epochs_run"] < budget
    # The rule really held at the stop: recompute on the saved adapter.
    from forgetkit.stages.common import load_examples
    from forgetkit.stages.unlearn import forgetting_status

    loaded = load_model(str(memorised / "model"))
    model = PeftModel.from_pretrained(loaded.model, str(tmp_path / "out"))
    status = forgetting_status(model, loaded.tokenizer, load_examples(str(memorised / "forget.jsonl"), loaded)[1],
                               load_examples(str(memorised / "holdout.jsonl"), loaded)[1])
    assert status["forget_em"] <= status["holdout_em"] and status["forget_el10"] <= status["holdout_el10"]


def test_gradient_checkpointing_trains_the_same_adapter(tiny_models, data_dir, fila_init, tmp_path):
    """With a frozen base and LoRA, checkpointing must still give the adapter gradients (the inputs of
    the first block need grad): the same adapter as without, away from its starting point."""
    model = str(tiny_models["llama"])
    adapters = {}
    for flag in (False, True):
        out = tmp_path / f"adapter-{flag}"
        run_unlearn(model, str(data_dir / "forget.jsonl"), out, UnlearnParams(train=FAST, gradient_checkpointing=flag),
                    retain=str(data_dir / "retain_small.jsonl"), init=str(fila_init["llama"]))
        adapters[flag] = load_file(str(out / "adapter_model.safetensors"))
        assert read_metadata(out).results["checkpointed_blocks"] == (2 if flag else 0)
    start = load_file(str(fila_init["llama"] / "adapter_model.safetensors"))
    moved = 0.0
    for name, value in adapters[True].items():
        assert torch.allclose(value, adapters[False][name], atol=1e-5), name
        rank = start[name].shape[0] if "lora_A" in name else start[name].shape[1]
        part = value[:rank] if "lora_A" in name else value[:, :rank]
        moved = max(moved, (part - start[name]).abs().max().item())
    assert moved > 1e-3


def test_training_rewordings_never_use_the_audits_wording(tiny_models, data_dir, tmp_path):
    from forgetkit.audit.attacks import paraphrase_provenance
    from forgetkit.audit.attacks.prompts import PARAPHRASE_TEMPLATES
    from forgetkit.audit.sets import load_eval_set
    from forgetkit.data import load_records
    from forgetkit.wording import TRAINING_TEMPLATES, reworded

    assert not set(TRAINING_TEMPLATES) & set(PARAPHRASE_TEMPLATES)
    forget = data_dir / "forget_qa.jsonl"
    records = load_records(str(forget))
    assert len(reworded(records, 2)) == 3 * len(records)  # every record is a question here
    # Trained under 2 rewordings: three times the forget examples, so three times the steps.
    meta = run_unlearn(str(tiny_models["llama"]), str(forget), tmp_path / "out", UnlearnParams(train=FAST, rewordings=2),
                       retain=str(data_dir / "retain_small.jsonl"))
    assert meta.results["steps"] == 3 * 4  # 16 records, batch 8, 2 epochs -> 48 examples, 12 steps
    templates = meta.results["forget_wording"]["templates"]
    assert meta.results["forget_wording"]["rewordings_per_question"] == 2 and set(templates) <= set(TRAINING_TEMPLATES)
    # The audit's paraphrase attack states both wordings and finds none of its questions among training's.
    loaded = load_model(str(tiny_models["llama"]))
    evalset = load_eval_set("forget", str(forget), loaded, truncate=True, canary_candidates=0, need_truth_ratio=False)
    attacked = paraphrase_provenance(evalset, templates)
    assert attacked["attacked_questions_seen_in_training"] == 0
    assert attacked["training"].startswith("training templates: ")
    # Had training used the audit's own templates, every attacked question would be counted as seen.
    leaked = paraphrase_provenance(evalset, list(PARAPHRASE_TEMPLATES))
    assert leaked["attacked_questions_seen_in_training"] == len(records)


def test_unseen_loss_trains_on_held_out_micro_batches_and_needs_them(tiny_models, data_dir, tmp_path):
    model, forget = str(tiny_models["llama"]), str(data_dir / "forget_qa.jsonl")
    with pytest.raises(ForgetkitError, match="loss 'unseen' needs a held-out set the model never saw"):
        run_unlearn(model, forget, tmp_path / "a", UnlearnParams(loss="unseen", train=FAST),
                    retain=str(data_dir / "retain_small.jsonl"))
    meta = run_unlearn(model, forget, tmp_path / "b", UnlearnParams(loss="unseen", train=FAST),
                       retain=str(data_dir / "retain_small.jsonl"), holdout=str(data_dir / "holdout.jsonl"))
    terms = meta.results["final_terms"]
    # The matching terms were computed against real held-out batches: a random tiny model's forget and
    # held-out records differ, so the matching loss is positive and the gaps are measured numbers.
    assert meta.results["steps"] == 4 and terms["match_nll"] > 0 and terms["match_min_k_pp"] > 0
    assert all(v == v for v in terms.values()) and "gap_nll" in terms
    # 4 of the 16 records hold a secret: their twins went through collate and the trainer to the loss, and
    # the canary term is logged at every step (zero on micro-batches without a secret).
    log = json.loads((tmp_path / "b" / "training_log.json").read_text())
    canary = [entry["match_canary"] for entry in log]
    assert len(canary) == 4 and any(value > 0 for value in canary)


def test_unseen_truth_ratio_statistic_trains_through_the_stage(tiny_models, data_dir, tmp_path):
    """statistics=nll,truth_ratio: the wrong answers reach the loss on the forget and the held-out side
    (its logged gap is a measured number), and a held-out record without them is refused by file and line."""
    model = str(tiny_models["llama"])

    def with_wrong_answers(name, limit):
        rows = [json.loads(line) for line in (data_dir / name).read_text().splitlines()
                if "question" in json.loads(line)][:limit]
        for n, row in enumerate(rows):
            row["perturbed_answer"] = [rows[(n + k) % len(rows)]["answer"] for k in (1, 2)]
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path, rows

    forget, _ = with_wrong_answers("forget_qa.jsonl", 8)
    holdout, rows = with_wrong_answers("holdout.jsonl", 8)
    params = UnlearnParams(loss="unseen", train=FAST,
                           loss_params={"statistics": "nll,truth_ratio", "huber": "1", "canary_twins": "0"})
    meta = run_unlearn(model, str(forget), tmp_path / "a", params,
                       retain=str(data_dir / "retain_small.jsonl"), holdout=str(holdout))
    terms = meta.results["final_terms"]
    assert terms["match_truth_ratio"] > 0 and terms["gap_truth_ratio"] != 0 and "match_min_k_pp" not in terms
    del rows[2]["perturbed_answer"]
    holdout.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ForgetkitError, match=r"holdout.jsonl:3: loss 'unseen' with the truth_ratio statistic needs"):
        run_unlearn(model, str(forget), tmp_path / "b", params,
                    retain=str(data_dir / "retain_small.jsonl"), holdout=str(holdout))


def test_sharpness_aware_step_uses_the_gradient_at_the_moved_weights(lora_off_zero):
    """--sam-rho: the step's gradient is taken at w + rho * g / |g| (g the plain gradient), then applied
    at w. AdamW's first step moves each weight by lr * g' / (|g'| + eps), so the result is checked
    against g' computed by hand, and differs from the plain step wherever g and g' disagree in sign."""
    from forgetkit.data import collate
    from forgetkit.distributed import make_accelerator
    from forgetkit.plugins import load_loss
    from forgetkit.training import train

    loaded, examples, model, trainable, start = lora_off_zero
    loss, rho, lr = load_loss("ga"), 0.5, 1e-2
    pad = loaded.tokenizer.pad_token_id

    def gradients():
        model.zero_grad(set_to_none=True)
        loss(LossContext(model=model, forget=collate(examples, pad), retain=None))["loss"].backward()
        return {n: p.grad.detach().clone() for n, p in trainable.items()}

    model.train()
    plain = gradients()
    norm = torch.sqrt(sum(g.square().sum() for g in plain.values()))
    with torch.no_grad():
        for n, p in trainable.items():
            p.add_(plain[n] * rho / norm)
    sharp = gradients()
    with torch.no_grad():
        for n, p in trainable.items():
            p.copy_(start[n])
    model.zero_grad(set_to_none=True)

    config = TrainConfig(lr=lr, epochs=1, batch_size=8, micro_batch_size=8, max_grad_norm=1e9, sam_rho=rho)
    result = train(model, loss, examples, None, pad, config, accelerator=make_accelerator())
    assert result.steps == 1
    flipped = 0
    for n, p in trainable.items():
        expected = start[n] - lr * sharp[n] / (sharp[n].abs() + 1e-8)
        assert torch.allclose(p.detach(), expected, atol=1e-5), n
        flipped += int((torch.sign(sharp[n]) != torch.sign(plain[n])).sum())
    assert flipped > 0  # so a plain step would have landed elsewhere


def test_relearning_aware_step_uses_the_gradient_after_a_relearning_step(lora_off_zero):
    """--relearn-rho: the step's gradient is that of the unlearning loss at w - rho * h / |h|, h the
    gradient of the forget batch's mean NLL (a relearning step), applied at w. The loss here is not a
    function of the NLL alone, so h and its gradient point different ways; AdamW's first step moves each
    weight by lr * g' / (|g'| + eps), checked against g' computed by hand."""
    from forgetkit.data import collate
    from forgetkit.distributed import make_accelerator
    from forgetkit.losses.base import logits_of, mean_nll
    from forgetkit.training import train

    class AscentWithLogitPenalty(UnlearningLoss):
        name, needs_retain = "ascent-with-logit-penalty", False

        def __call__(self, ctx):
            logits = logits_of(ctx.model, ctx.forget)
            return {"loss": -mean_nll(logits, ctx.forget["labels"]) + 0.05 * logits.square().mean()}

    loaded, examples, model, trainable, start = lora_off_zero
    loss, rho, lr = AscentWithLogitPenalty(), 0.5, 1e-2
    batch = collate(examples, loaded.tokenizer.pad_token_id)

    def gradients(objective):
        model.zero_grad(set_to_none=True)
        objective().backward()
        return {n: p.grad.detach().clone() for n, p in trainable.items()}

    model.train()
    plain = gradients(lambda: loss(LossContext(model=model, forget=batch, retain=None))["loss"])
    relearning = gradients(lambda: mean_nll(logits_of(model, batch), batch["labels"]))
    norm = torch.sqrt(sum(g.square().sum() for g in relearning.values()))
    with torch.no_grad():
        for n, p in trainable.items():
            p.sub_(relearning[n] * rho / norm)
    relearned = gradients(lambda: loss(LossContext(model=model, forget=batch, retain=None))["loss"])
    with torch.no_grad():
        for n, p in trainable.items():
            p.copy_(start[n])
    model.zero_grad(set_to_none=True)

    config = TrainConfig(lr=lr, epochs=1, batch_size=8, micro_batch_size=8, max_grad_norm=1e9, relearn_rho=rho)
    result = train(model, loss, examples, None, loaded.tokenizer.pad_token_id, config, accelerator=make_accelerator())
    assert result.steps == 1
    flipped = 0
    for n, p in trainable.items():
        expected = start[n] - lr * relearned[n] / (relearned[n].abs() + 1e-8)
        # Where g' is within float noise of 0, AdamW's first step lr * g' / (|g'| + eps) can take either
        # sign: those few entries are left out; a step taken at any other point lands ~lr = 1e-2 away.
        clear = relearned[n].abs() > 1e-4 * relearned[n].abs().max()
        assert clear.float().mean() > 0.8, n
        assert torch.allclose(p.detach()[clear], expected[clear], atol=1e-5), n
        flipped += int((torch.sign(relearned[n]) != torch.sign(plain[n])).sum())
    assert flipped > 0  # so a plain step would have landed elsewhere


def test_relearning_aware_radius_must_not_be_negative(tiny_models, data_dir, tmp_path):
    with pytest.raises(ForgetkitError, match="--relearn-rho must be 0"):
        run_unlearn(str(tiny_models["llama"]), str(data_dir / "forget_qa.jsonl"), tmp_path / "out",
                    UnlearnParams(loss="ga", train=dataclasses.replace(FAST, relearn_rho=-0.1)))


def test_sharpness_aware_radius_must_not_be_negative(tiny_models, data_dir, tmp_path):
    with pytest.raises(ForgetkitError, match="--sam-rho must be 0"):
        run_unlearn(str(tiny_models["llama"]), str(data_dir / "forget_qa.jsonl"), tmp_path / "out",
                    UnlearnParams(loss="ga", train=dataclasses.replace(FAST, sam_rho=-0.1)))
