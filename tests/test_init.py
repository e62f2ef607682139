import pytest
import torch
from peft import PeftModel

from forgetkit.adapters import load_init_adapter
from forgetkit.artifacts import read_metadata
from forgetkit.inits.builtin import fila_factors
from forgetkit.models import load_model
from forgetkit.stages.fisher import FisherParams, run_fisher
from forgetkit.stages.init import InitParams, run_init

PROBE = torch.randint(3, 300, (2, 24), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def fishers(tiny_models, data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("fisher")
    out = {}
    for arch in ("llama", "gpt2", "gpt_neox"):
        out[arch] = root / f"{arch}.safetensors"
        run_fisher(str(tiny_models[arch]), str(data_dir / "forget.jsonl"), str(data_dir / "retain_small.jsonl"), out[arch],
                   FisherParams(dtype="float32"))
    return out


def logits(model):
    with torch.no_grad():
        return model(input_ids=PROBE).logits


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
@pytest.mark.parametrize("scheme", ["fila", "pissa", "lora"])
def test_init_preserves_the_function(tiny_models, fishers, tmp_path, arch, scheme):
    run_init(str(tiny_models[arch]), tmp_path / "init", InitParams(scheme=scheme, rank=4), fisher=str(fishers[arch]))
    meta = read_metadata(tmp_path / "init")
    original = logits(load_model(str(tiny_models[arch])).model)
    model = load_init_adapter(load_model(str(tiny_models[arch])).model, tmp_path / "init", meta.results["mutates_base"])
    assert (logits(model) - original).abs().max().item() < 1e-4
    if scheme != "lora":
        # A non-zero start: the adapter alone must not be the identity, or the test above proves nothing.
        plain = PeftModel.from_pretrained(load_model(str(tiny_models[arch])).model, str(tmp_path / "init"))
        assert (logits(plain) - original).abs().max().item() > 1e-3
    assert meta.results["function_drift_max_abs"] < 1e-4


def test_fila_factors_follow_the_formula():
    torch.manual_seed(0)
    w = torch.randn(6, 5)
    ff, fr = torch.rand(6, 5), torch.rand(6, 5) + 0.1
    rank, scaling = 5, 2.0  # full rank: the weighted approximation is exact
    a0, b0 = fila_factors(w, ff, fr, 10, 20, rank=rank, scaling=scaling, niter=6)
    importance = (ff / 10) / (1e-5 + fr / 20)
    row = importance.sum(1).sqrt()
    assert a0.shape == (rank, 5) and b0.shape == (6, rank)
    assert torch.allclose(scaling * b0 @ a0 * (row + 1e-5)[:, None] / row[:, None], w, atol=1e-4)
    # Rows the forget set leans on get the largest share of a low-rank budget.
    a1, b1 = fila_factors(w, ff, fr, 10, 20, rank=1, scaling=scaling, niter=6)
    weighted_error = ((row[:, None] * (w - scaling * b1 @ a1)) ** 2).sum()
    u, s, v = torch.linalg.svd(row[:, None] * w)
    assert weighted_error.item() == pytest.approx((s[1:] ** 2).sum().item(), rel=1e-3)


def test_fila_needs_a_fisher(tiny_models, tmp_path):
    from forgetkit.errors import ForgetkitError

    with pytest.raises(ForgetkitError, match="needs a Fisher artifact"):
        run_init(str(tiny_models["llama"]), tmp_path / "init", InitParams(scheme="fila"))


def test_fila_without_retain_fisher(tiny_models, data_dir, tmp_path):
    from forgetkit.stages.fisher import FisherParams, run_fisher

    model = str(tiny_models["llama"])
    run_fisher(model, str(data_dir / "forget.jsonl"), None, tmp_path / "f.st", FisherParams())
    assert read_metadata(tmp_path / "f.st").results["retain_tokens"] == 0
    run_init(model, tmp_path / "init", InitParams(scheme="fila", rank=4), fisher=str(tmp_path / "f.st"))
    restored = load_init_adapter(load_model(model).model, tmp_path / "init", mutates_base=True)
    assert (logits(restored) - logits(load_model(model).model)).abs().max().item() < 1e-4
