"""The artifact registry: recording by stages, lineage, verify, forget, concurrency, bad files."""

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from forgetkit import registry
from forgetkit.errors import ForgetkitError
from forgetkit.registry.lineage import lineage, render
from forgetkit.stages.audit import AuditParams, run_audit
from forgetkit.stages.fisher import FisherParams, run_fisher
from forgetkit.stages.init import InitParams, run_init
from forgetkit.stages.registry import forget_entry, verify_entries
from forgetkit.stages.unlearn import UnlearnParams, run_unlearn
from forgetkit.training import TrainConfig

BIN = Path(sys.executable).parent


@pytest.fixture
def own_registry(tmp_path):
    path = tmp_path / "reg" / "registry.sqlite"
    registry.use_registry(path)
    yield path
    registry.use_registry(None)


@pytest.fixture(scope="module")
def chain(tiny_models, data_dir, tmp_path_factory):
    """fisher -> init (FILA) -> unlearn -> audit, recorded in a registry of its own."""
    root = tmp_path_factory.mktemp("chain")
    registry.use_registry(root / "registry.sqlite")
    try:
        model, forget, retain = str(tiny_models["llama"]), str(data_dir / "forget.jsonl"), str(data_dir / "retain_small.jsonl")
        run_fisher(model, forget, retain, root / "fisher.safetensors", FisherParams())
        run_init(model, root / "init", InitParams(scheme="fila", rank=4), fisher=str(root / "fisher.safetensors"))
        run_unlearn(model, forget, root / "adapter", UnlearnParams(train=TrainConfig(lr=1e-2, epochs=1, batch_size=8)),
                    retain=retain, init=str(root / "init"))
        run_audit(model, root / "report.json", AuditParams(suites=("extraction",), max_new_tokens=4,
                                                           canary_candidates=7),
                  forget=forget, adapter=str(root / "adapter"))
    finally:
        registry.use_registry(None)
    return root


def test_every_stage_is_recorded_with_its_lineage(chain):
    store = registry.RegistryStore(chain / "registry.sqlite")
    entries = {e.stage: e for e in store.entries()}
    assert set(entries) == {"fisher", "init", "unlearn", "audit"}
    adapter = entries["unlearn"]
    assert adapter.path == str((chain / "adapter").resolve())
    assert {"adapter_config.json", "adapter_model.safetensors", "forgetkit.json"} <= set(adapter.files)
    assert adapter.parameters["loss"] == "ihl" and adapter.base_fingerprint == entries["fisher"].base_fingerprint
    assert entries["audit"].summary["verdict"] in ("forgotten", "partially forgotten", "not forgotten")

    tree = lineage(store, adapter)
    inputs = {node["role"]: node for node in tree["inputs"]}
    assert inputs["init"]["id"] == entries["init"].id
    fisher = next(n for n in inputs["init"]["inputs"] if n["role"] == "fisher")
    assert fisher["id"] == entries["fisher"].id
    assert {n["role"]: n["data"] for n in fisher["inputs"]} == {"forget": "forget.jsonl", "retain": "retain_small.jsonl"}
    assert inputs["forget"]["data"] == "forget.jsonl" and len(inputs["forget"]["sha256"]) == 64
    assert [a["id"] for a in tree["audits"]] == [entries["audit"].id]
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(render(tree))
    text = console.export_text()
    for word in ("unlearn", entries["init"].id, entries["fisher"].id, "data forget.jsonl", "audited by", "base model"):
        assert word in text


def test_verify_reports_changes_and_forget_keeps_files(chain, tmp_path):
    registry.use_registry(chain / "registry.sqlite")
    try:
        store = registry.open_store()
        assert verify_entries() is True
        init = next(e for e in store.entries() if e.stage == "init")
        log = chain / "adapter" / "training_log.json"
        original = log.read_bytes()
        log.write_bytes(original + b" ")
        (chain / "adapter" / "extra.txt").write_text("x")
        adapter = next(e for e in store.entries() if e.stage == "unlearn")
        assert registry.changes(adapter) == {"extra.txt": "added", "training_log.json": "changed"}
        assert verify_entries(adapter.id[:6]) is False
        log.write_bytes(original)
        (chain / "adapter" / "extra.txt").unlink()
        assert verify_entries(adapter.id) is True

        forget_entry(init.id[:5])
        assert init.id not in {e.id for e in store.entries()} and (chain / "init" / "adapter_config.json").is_file()
        with pytest.raises(ForgetkitError, match="no entry"):
            store.get(init.id)
        # The adapter's lineage now shows its init as data it no entry describes.
        tree = lineage(store, adapter)
        assert next(n for n in tree["inputs"] if n["role"] == "init")["data"] == "init"
        registry.record(chain / "init")  # and it can be recorded again
        assert len(store.entries()) == 4
    finally:
        registry.use_registry(None)


def test_forget_with_delete_files_removes_the_artifact(own_registry, tmp_path, tiny_models, data_dir):
    out = tmp_path / "f.safetensors"
    run_fisher(str(tiny_models["gpt2"]), str(data_dir / "forget_qa.jsonl"), None, out, FisherParams())
    entry = registry.open_store().entries()[0]
    forget_entry(entry.id, delete_files=True)
    assert not out.exists() and registry.open_store().entries() == []


def test_rewriting_an_artifact_marks_the_old_entry_replaced(own_registry, tmp_path, tiny_models, data_dir):
    out = tmp_path / "f.safetensors"
    for batch_size in (8, 4):
        run_fisher(str(tiny_models["gpt2"]), str(data_dir / "forget_qa.jsonl"), None, out, FisherParams(batch_size=batch_size))
    old, new = registry.open_store().entries()
    assert old.replaced_by == new.id and new.replaced_by is None and old.path == new.path


WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from forgetkit.registry.store import Entry, RegistryStore

    store, tag, count, go = RegistryStore(Path(sys.argv[1])), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    while not go.exists():
        time.sleep(0.01)
    for i in range(count):
        store.add(Entry(id=f"{tag}{i:06d}", path=f"/runs/{tag}/{i}", stage="fisher", base_model="m",
                        base_fingerprint="f", content_sha256=f"{tag}{i}", files={".": "0"}, inputs={},
                        parameters={}, summary={}, hub=[], created_at="t", registered_at="t"))
""")


def test_two_processes_registering_at_once_lose_nothing(tmp_path):
    path, go, count = tmp_path / "registry.sqlite", tmp_path / "go", 150
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), tag, str(count), str(go)])
               for tag in ("aaaa", "bbbb")]
    go.touch()
    assert [w.wait(timeout=300) for w in writers] == [0, 0]
    ids = {e.id for e in registry.RegistryStore(path).entries()}
    assert len(ids) == 2 * count and {i[:4] for i in ids} == {"aaaa", "bbbb"}


def test_corrupt_or_newer_registries_are_refused_never_reset(tmp_path, tiny_models, data_dir):
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"this is not a database, and it holds someone's data" * 100)
    before = corrupt.read_bytes()
    with pytest.raises(ForgetkitError, match="unusable forgetkit registry"):
        registry.RegistryStore(corrupt).entries()
    result = subprocess.run([str(BIN / "forgetkit"), "registry", "list", "--registry", str(corrupt)],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    # A stage refuses before doing its work, and writes nothing.
    registry.use_registry(corrupt)
    try:
        with pytest.raises(ForgetkitError, match="unusable"):
            run_fisher(str(tiny_models["gpt2"]), str(data_dir / "forget_qa.jsonl"), None, tmp_path / "f.safetensors",
                       FisherParams())
    finally:
        registry.use_registry(None)
    assert not (tmp_path / "f.safetensors").exists() and corrupt.read_bytes() == before

    newer = tmp_path / "newer.sqlite"
    registry.RegistryStore(newer).check()
    with sqlite3.connect(newer) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(ForgetkitError, match="newer forgetkit"):
        registry.RegistryStore(newer).entries()

    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE photos (id INTEGER)")
    with pytest.raises(ForgetkitError, match="not a forgetkit registry"):
        registry.RegistryStore(foreign).check()


def test_registry_cli_list_show_and_off(chain, tmp_path):
    env = {**os.environ, "FORGETKIT_REGISTRY": str(chain / "registry.sqlite")}
    listed = subprocess.run([str(BIN / "forgetkit"), "registry", "list", "--stage", "unlearn", "--json"],
                            capture_output=True, text=True, env=env)
    (entry,) = json.loads(listed.stdout)
    shown = subprocess.run([str(BIN / "forgetkit"), "registry", "show", entry["id"][:6]], capture_output=True,
                           text=True, env={**env, "COLUMNS": "200"})
    assert shown.returncode == 0 and entry["id"] in shown.stdout and "fisher" in shown.stdout
    # The table shows each adapter with the verdict of its audit.
    table = subprocess.run([str(BIN / "forgetkit"), "registry", "list", "--stage", "unlearn"], capture_output=True,
                           text=True, env={**env, "COLUMNS": "250"})
    audit = next(e for e in registry.RegistryStore(chain / "registry.sqlite").entries() if e.stage == "audit")
    row = next(line for line in table.stdout.splitlines() if entry["id"] in line)
    assert audit.summary["verdict"] in row
    off = subprocess.run([str(BIN / "forgetkit"), "registry", "list"], capture_output=True, text=True,
                         env={**env, "FORGETKIT_REGISTRY": "off"})
    assert off.returncode == 1 and "registry is off" in off.stderr


def test_a_report_is_recorded_whatever_it_is_named(tmp_path):
    """`forgetkit audit ... -o report` (no .json) wrote the report and then failed to record it: the
    registry guessed the kind from the name. It reads the bytes now."""
    from forgetkit.registry.entries import describe

    report = {"kind": "forgetkit-audit-report", "created_at": "2026-12-03T00:00:00+00:00",
              "base_model": {"model_id": "tiny", "fingerprint": "f" * 16}, "inputs": {}, "parameters": {},
              "results": {"model": {"verdict": {"verdict": "not forgotten", "failed": ["forget ROUGE-L"]},
                                    "sets": {"forget": {"summary": {"rouge_l": 0.9}}}}}}
    for name in ("report", "report.out", "report.json"):
        path = tmp_path / name
        path.write_text(json.dumps(report, indent=2))
        entry = describe(path)
        assert entry.stage == "audit" and entry.base_fingerprint == "f" * 16, name
    # A safetensors artifact named like a report is still read as one.
    import torch

    from forgetkit.artifacts import BaseModelInfo, Metadata, save_tensor_artifact

    meta = Metadata(stage="fisher", base_model=BaseModelInfo(model_id="tiny", fingerprint="e" * 16))
    save_tensor_artifact(tmp_path / "fisher.json", {"forget/w": torch.zeros(2)}, meta)
    assert describe(tmp_path / "fisher.json").stage == "fisher"
