"""Publishing: push (dry run and to a local stand-in for the Hub), pull, and the refusals."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from forgetkit.data import load_records
from forgetkit.errors import ForgetkitError
from forgetkit.hub import leaks
from forgetkit.stages.audit import AuditParams, run_audit
from forgetkit.stages.push import PushParams, run_push
from forgetkit.stages.unlearn import UnlearnParams, run_unlearn
from forgetkit.training import TrainConfig
from hub_server import FakeHub

BIN = Path(sys.executable).parent
TOKEN = "hf_forgetkitTestToken0123456789abcdef"
EXPECTED_FILES = {"README.md", "forgetkit.json", "adapter_config.json", "adapter_model.safetensors",
                  "training_log.json", "audit/report.json", "audit/report.md", "audit/report.html"}


@pytest.fixture(scope="module")
def published(tiny_models, data_dir, tmp_path_factory):
    """An unlearning adapter on the tiny llama and its audit report."""
    root = tmp_path_factory.mktemp("publish")
    adapter = root / "adapter"
    run_unlearn(str(tiny_models["llama"]), str(data_dir / "forget.jsonl"), adapter,
                UnlearnParams(rank=4, train=TrainConfig(lr=1e-2, epochs=1, batch_size=8, micro_batch_size=8)),
                retain=str(data_dir / "retain_small.jsonl"))
    report = root / "report.json"
    run_audit(str(tiny_models["llama"]), report, AuditParams(suites=("extraction", "mia"), max_new_tokens=8,
                                                            canary_candidates=15),
              forget=str(data_dir / "forget.jsonl"), holdout=str(data_dir / "holdout.jsonl"), adapter=str(adapter))
    return {"adapter": adapter, "report": report, "model": tiny_models["llama"], "forget": data_dir / "forget.jsonl"}


def forget_strings(forget: Path) -> list[bytes]:
    """Every text value of the forget set worth looking for, as bytes."""
    out = []
    for record in load_records(str(forget)):
        for key, value in record.fields.items():
            if isinstance(value, str) and len(value) >= (4 if key == "secret" else 12):
                out.append(value.encode())
    assert len(out) > 20
    return out


def assert_no_forget_text(files: dict[str, bytes], forget: Path) -> None:
    for needle in forget_strings(forget):
        for name, data in files.items():
            assert needle not in data, name


def read_tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_dry_run_writes_the_folder_with_card_and_no_forget_text(published, tmp_path):
    out = tmp_path / "upload"
    result = run_push(published["adapter"], PushParams(repo_id="alice/forgot-tiny", report=str(published["report"]),
                                                       dry_run=out, base_model="acme/tiny-llama", license="apache-2.0"))
    files = read_tree(out)
    assert EXPECTED_FILES <= set(files) and any(name.startswith("audit/report.plots/") for name in files)
    assert set(result["files"]) == set(files)
    assert_no_forget_text(files, published["forget"])

    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["base_model"] == "acme/tiny-llama" and data["library_name"] == "peft"
    assert data["license"] == "apache-2.0" and {"unlearning", "forgetkit", "ihl"} <= set(data["tags"])
    assert "forget.jsonl" in card.text and "PeftModel.from_pretrained(base, \"alice/forgot-tiny\")" in card.text
    report = json.loads(files["audit/report.json"])
    verdict = report["results"]["unlearned"]["verdict"]["verdict"]
    assert f"**Verdict: {verdict.upper()}**" in card.text and "| forget EL10 |" in card.text

    # Local directory layout stays local: inputs are named by file, the base by its Hub id.
    meta = json.loads(files["forgetkit.json"])
    assert meta["inputs"]["forget"]["path"] == "forget.jsonl" and meta["base_model"]["model_id"] == "acme/tiny-llama"
    for name, data in files.items():
        for local in (published["adapter"].parent, published["model"]):
            assert str(local).encode() not in data, name
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == "acme/tiny-llama"
    # The uploaded adapter is the trained one, byte for byte.
    assert files["adapter_model.safetensors"] == (published["adapter"] / "adapter_model.safetensors").read_bytes()


def test_push_refuses_what_should_not_be_published(published, tmp_path):
    adapter, report = published["adapter"], published["report"]

    def push(path=adapter, **kwargs):
        kwargs.setdefault("dry_run", tmp_path / "out")
        return run_push(path, PushParams(repo_id="alice/x", **kwargs))

    with pytest.raises(ForgetkitError, match="no audit report given.*--no-report"):
        push()
    other = tmp_path / "other"
    shutil.copytree(adapter, other)
    (other / "training_log.json").write_text("[]\n")
    with pytest.raises(ForgetkitError, match="made for another adapter"):
        push(other, report=str(report))
    unredacted = tmp_path / "unredacted.json"
    unredacted.write_text(json.dumps({**json.loads(report.read_text()), "redacted": False}))
    with pytest.raises(ForgetkitError, match="include-examples"):
        push(report=str(unredacted))

    # A file holding a forget answer is refused, and the message names the file and record, not the text.
    secret_record = next(r for r in load_records(str(published["forget"])) if "secret" in r.fields)
    (other / "notes.txt").write_text(f"reminder: {secret_record['secret']}\n")
    with pytest.raises(ForgetkitError) as refused:
        push(other, no_report=True)
    message = str(refused.value)
    assert "notes.txt" in message and secret_record.source.split("/")[-1] in message
    assert secret_record["secret"] not in message
    assert not (tmp_path / "out").exists()

    # The forget set moved: the leak check cannot run without it, and a different file is refused.
    moved = tmp_path / "moved"
    shutil.copytree(adapter, moved)
    meta = json.loads((moved / "forgetkit.json").read_text())
    meta["inputs"]["forget"]["path"] = str(tmp_path / "gone.jsonl")
    (moved / "forgetkit.json").write_text(json.dumps(meta))
    with pytest.raises(ForgetkitError, match="--forget FILE"):
        push(moved, no_report=True)
    with pytest.raises(ForgetkitError, match="not the forget set"):
        push(moved, no_report=True, forget=str(published["forget"].parent / "holdout.jsonl"))
    push(moved, no_report=True, forget=str(published["forget"]))
    assert (tmp_path / "out" / "README.md").is_file()


def test_leak_scan_sees_escaped_forms_and_ignores_tensor_bytes(tmp_path):
    from forgetkit.data import Record

    record = Record({"question": "Where does Zoë live now?", "answer": "In Zürich, by the lake.", "secret": "7731"},
                    "f.jsonl:3")
    targets = leaks.needles([record])
    (tmp_path / "a.json").write_text(json.dumps({"x": "In Zürich, by the lake."}))  # ASCII-escaped by json
    (tmp_path / "b.html").write_text("<p>code 7731</p>")
    (tmp_path / "c.md").write_text("nothing here")
    found = leaks.scan(tmp_path, targets)
    assert {(f.file, f.field, f.source) for f in found} == {("a.json", "answer", "f.jsonl:3"), ("b.html", "secret", "f.jsonl:3")}


def cli(*args, env):
    return subprocess.run([str(BIN / "forgetkit"), *map(str, args)], capture_output=True, text=True, env=env)


def test_push_and_pull_through_a_local_hub(published, tmp_path):
    registry = tmp_path / "registry.sqlite"
    with FakeHub() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf"),
               "HF_HUB_DISABLE_XET": "1", "FORGETKIT_REGISTRY": str(registry)}
        pushed = cli("push", published["adapter"], "--repo-id", "alice/forgot-tiny", "--report", published["report"],
                     "--private", "--revision", "exp", "--base-model", "acme/tiny-llama", env=env)
        assert pushed.returncode == 0, pushed.stderr
        repo = hub.repos["alice/forgot-tiny"]
        assert repo.private and set(repo.branches["exp"]) >= EXPECTED_FILES and repo.branches["main"] == {}
        assert repo.commits[-1]["branch"] == "exp"
        # What went over the wire: the token only in the Authorization header, no forget text anywhere.
        assert all(auth == f"Bearer {TOKEN}" for method, path, auth in hub.requests if method == "POST")
        assert_no_forget_text(dict(repo.branches["exp"]), published["forget"])
        assert_no_forget_text({f"request {i}": body for i, body in enumerate(hub.bodies)}, published["forget"])
        for body in hub.bodies:
            assert TOKEN.encode() not in body
        assert TOKEN not in pushed.stdout + pushed.stderr and TOKEN.encode() not in registry.read_bytes()
        card = ModelCard(repo.branches["exp"]["README.md"].decode())
        assert card.data.base_model == "acme/tiny-llama" and "unlearning" in card.data.tags

        listed = cli("registry", "list", "--json", env=env)
        entries = json.loads(listed.stdout)
        adapter_entry = next(e for e in entries if e["stage"] == "unlearn")
        assert adapter_entry["hub"][0]["repo_id"] == "alice/forgot-tiny" and adapter_entry["hub"][0]["revision"] == "exp"
        assert adapter_entry["hub"][0]["commit"] == repo.heads["exp"]

        pulled = cli("pull", "alice/forgot-tiny@exp", env=env)
        assert pulled.returncode == 0, pulled.stderr
        folder = Path(pulled.stdout.strip().splitlines()[-1])
        assert folder.is_relative_to(tmp_path / "hf") and folder.name == repo.heads["exp"]
        assert read_tree(folder) == {k: v for k, v in repo.branches["exp"].items()}

        # Without a token: a one-line error, nothing sent.
        anonymous = {k: v for k, v in env.items() if k != "HF_TOKEN"}
        sent = len(hub.requests)
        refused = cli("push", published["adapter"], "--repo-id", "alice/other", "--report", published["report"],
                      env={**anonymous, "HF_HOME": str(tmp_path / "empty-hf-home")})
        assert refused.returncode == 1 and refused.stderr.strip().splitlines()[-1].startswith("error: no Hugging Face token")
        # Libraries look things up on their own (huggingface_hub's agent registry, the kernels package's
        # publisher check: GETs of public data); forgetkit sends nothing: no write, nothing about the repository.
        extra = hub.requests[sent:]
        assert all(method == "GET" and "alice" not in path for method, path, _ in extra), extra
        assert "alice/other" not in hub.repos

        # A Hub id wherever an adapter folder is taken: merge fetches it through the cache.
        merged = cli("merge", published["model"], "alice/forgot-tiny@exp", "-o", tmp_path / "merged", env=env)
        assert merged.returncode == 0, merged.stderr
        assert (tmp_path / "merged" / "config.json").is_file()
