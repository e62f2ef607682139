import pytest
from transformers.pytorch_utils import Conv1D

from forgetkit.errors import ForgetkitError
from forgetkit.models import discover_targets, load_model

EXPECTED_ALL = {
    "llama": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "gpt_neo": {"q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"},
    "gpt_neox": {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"},
    "gpt2": {"c_attn", "c_proj", "c_fc"},
    "phi": {"q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"},
}


@pytest.mark.parametrize("arch", sorted(EXPECTED_ALL))
def test_discovers_every_linear_but_the_head(tiny_models, arch):
    loaded = load_model(str(tiny_models[arch]))
    names = discover_targets(loaded.model, "all")
    assert {n.rsplit(".", 1)[-1] for n in names} == EXPECTED_ALL[arch]
    assert not any("lm_head" in n or "embed_out" in n for n in names)
    attn, mlp = discover_targets(loaded.model, "attn"), discover_targets(loaded.model, "mlp")
    assert attn and mlp and not set(attn) & set(mlp) and set(attn) | set(mlp) == set(names)


def test_gpt2_conv1d_is_targeted(tiny_models):
    loaded = load_model(str(tiny_models["gpt2"]))
    modules = dict(loaded.model.named_modules())
    assert any(isinstance(modules[n], Conv1D) for n in discover_targets(loaded.model, "all"))


def test_named_targets_and_errors(tiny_models):
    model = load_model(str(tiny_models["llama"])).model
    assert {n.rsplit(".", 1)[-1] for n in discover_targets(model, "q_proj,v_proj")} == {"q_proj", "v_proj"}
    with pytest.raises(ForgetkitError, match="no linear layer named c_attn"):
        discover_targets(model, "q_proj,c_attn")


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(ForgetkitError, match="no config.json"):
        load_model(str(tmp_path))


def test_auto_dtype_is_chosen_for_the_device_the_weights_will_run_on(tiny_models, monkeypatch):
    """A sharded base is loaded on the host for GPUs: "auto" must give the GPU's bf16, not the host's fp32."""
    import torch

    from forgetkit.models import load_model

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    cpu = torch.device("cpu")
    on_host = load_model(str(tiny_models["llama"]), device=cpu)
    for_gpu = load_model(str(tiny_models["llama"]), device=cpu, runs_on=torch.device("cuda"))
    assert next(on_host.model.parameters()).dtype == torch.float32
    assert next(for_gpu.model.parameters()).dtype == torch.bfloat16
    assert next(for_gpu.model.parameters()).device == cpu
