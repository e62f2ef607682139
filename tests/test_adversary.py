"""The simulated relearning attacker of ``unlearn --adversary-steps`` (forgetkit.adversary)."""

import dataclasses

import pytest
import torch

from forgetkit.adversary import AdversaryConfig, RelearningAdversary, attackable_linears
from forgetkit.data import collate
from forgetkit.errors import ForgetkitError
from forgetkit.losses.base import LossContext, logits_of, mean_nll
from forgetkit.stages.unlearn import UnlearnParams, run_unlearn
from forgetkit.training import TrainConfig, train


def _to_device(loaded):
    return lambda group: collate(group, loaded.tokenizer.pad_token_id)


def test_attacker_covers_every_linear_layer_but_the_head_and_the_adapter(lora_off_zero):
    _, _, model, _, _ = lora_off_zero
    layers = attackable_linears(model)
    names = {id(m): n for n, m in model.named_modules()}
    assert len(layers) == 7 * model.config.num_hidden_layers  # q, k, v, o, gate, up, down per block
    assert all("lora_" not in names[id(m)] and m is not model.get_output_embeddings() for m in layers)


def test_attacker_relearns_its_pool_leaves_the_adapter_alone_and_comes_off(lora_off_zero):
    loaded, examples, model, trainable, _ = lora_off_zero
    to_device = _to_device(loaded)
    model.eval()
    batch = to_device(examples)
    with torch.no_grad():
        before = logits_of(model, batch)
    config = AdversaryConfig(steps=20, lr=1e-2, pool=0.5, batch_size=4)
    with RelearningAdversary(model, examples, config, seed=0, to_device=to_device,
                             autocast=lambda: torch.autocast("cpu", enabled=False)) as adversary:
        pool = to_device(adversary.pool)
        with torch.no_grad(), adversary.applied():
            start = float(mean_nll(logits_of(model, pool), pool["labels"]))
        assert len(adversary.pool) == 4 and len(adversary.outside_pool(examples)) == 4
        adversary.attack()
        with torch.no_grad(), adversary.applied():
            relearned = float(mean_nll(logits_of(model, pool), pool["labels"]))
            attacked = logits_of(model, batch)
        with torch.no_grad():
            unattacked = logits_of(model, batch)
        assert relearned < start - 0.3, (start, relearned)  # 20 steps at 1e-2: 5.97 -> 5.50 on four records
        assert (attacked - before).abs().max() > 1e-2
        assert torch.equal(unattacked, before)  # off unless applied
        assert all(p.grad is None for p in trainable.values())  # the attacker's steps touch only the attacker
    with torch.no_grad():
        assert torch.equal(logits_of(model, batch), before)  # hooks removed
    assert not any(layer._forward_hooks for layer in attackable_linears(model))


def test_step_adds_the_gradient_under_the_attacker_on_records_outside_its_pool(lora_off_zero):
    """One training step with --adversary-steps: AdamW's first step moves each weight by lr * g / (|g| + eps) where
    g = plain gradient + weight * gradient of the loss under the attacker (trained exactly as the trainer's
    own copy: same seed, same steps) on the forget records outside its pool."""
    from forgetkit.distributed import make_accelerator
    from forgetkit.plugins import load_loss

    loaded, examples, model, trainable, start = lora_off_zero
    to_device = _to_device(loaded)
    loss, lr, weight = load_loss("ga"), 1e-2, 3.0
    adversary_config = AdversaryConfig(steps=3, lr=1e-2, pool=0.25, weight=weight, batch_size=4)
    model.train()
    model.zero_grad(set_to_none=True)
    loss(LossContext(model=model, forget=to_device(examples), retain=None))["loss"].backward()
    plain = {n: p.grad.detach().clone() for n, p in trainable.items()}
    model.zero_grad(set_to_none=True)
    with RelearningAdversary(model, examples, adversary_config, 0, to_device, lambda: torch.autocast("cpu", enabled=False)) as twin:
        twin.attack()
        outside = twin.outside_pool(examples)
        with twin.applied():
            under = loss(LossContext(model=model, forget=to_device(outside), retain=None))["loss"] * len(outside) / len(examples)
            under.backward()
    attacked = {n: p.grad.detach().clone() for n, p in trainable.items()}
    model.zero_grad(set_to_none=True)

    config = TrainConfig(lr=lr, epochs=1, batch_size=8, micro_batch_size=8, max_grad_norm=1e9, adversary=adversary_config)
    result = train(model, loss, examples, None, loaded.tokenizer.pad_token_id, config, accelerator=make_accelerator())
    assert result.steps == 1 and result.log[0]["loss_under_attack"] == pytest.approx(float(under.detach()), rel=1e-4)
    flipped = 0
    for n, p in trainable.items():
        g = plain[n] + weight * attacked[n]
        clear = g.abs() > 1e-4 * g.abs().max()
        assert clear.float().mean() > 0.8, n
        assert torch.allclose(p.detach()[clear], (start[n] - lr * g / (g.abs() + 1e-8))[clear], atol=1e-5), n
        flipped += int((torch.sign(g) != torch.sign(plain[n])).sum())
    assert flipped > 0  # the attacker's term changed the step


def test_adversary_settings_are_checked(tiny_models, data_dir, tmp_path):
    fast = TrainConfig(lr=5e-3, epochs=1, batch_size=8, micro_batch_size=4)
    for bad, message in ((AdversaryConfig(steps=-1), "--adversary-steps must be 0"),
                         (AdversaryConfig(steps=2, pool=1.0), "--adversary-pool 1.0"),
                         (AdversaryConfig(steps=2, reset_every=0), "must be positive")):
        with pytest.raises(ForgetkitError, match=message):
            run_unlearn(str(tiny_models["llama"]), str(data_dir / "forget_qa.jsonl"), tmp_path / "out",
                        UnlearnParams(loss="ga", train=dataclasses.replace(fast, adversary=bad)))
    assert not (tmp_path / "out").exists()
