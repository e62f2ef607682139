import json

import pytest
import torch

from forgetkit.artifacts import (
    BaseModelInfo, Metadata, atomic_file, atomic_folder, check_artifact, model_fingerprint, read_metadata,
    save_tensor_artifact, load_tensor_artifact,
)
from forgetkit.errors import ForgetkitError

BASE = BaseModelInfo("org/model", "abcd1234abcd1234")


def test_tensor_artifact_round_trip(tmp_path):
    meta = Metadata(stage="fisher", base_model=BASE, parameters={"x": 1}, results={"forget_tokens": 7})
    save_tensor_artifact(tmp_path / "f.safetensors", {"forget/w": torch.ones(2, 3)}, meta)
    back = read_metadata(tmp_path / "f.safetensors")
    assert back.stage == "fisher" and back.results["forget_tokens"] == 7 and back.schema_version == 1
    assert back.base_model == BASE and back.forgetkit_version
    assert torch.equal(load_tensor_artifact(tmp_path / "f.safetensors")["forget/w"], torch.ones(2, 3))


def test_refuses_wrong_stage_and_other_model(tmp_path):
    save_tensor_artifact(tmp_path / "f.safetensors", {"w": torch.ones(1)}, Metadata(stage="fisher", base_model=BASE))
    with pytest.raises(ForgetkitError, match="is a 'fisher' artifact, but a init artifact is needed"):
        check_artifact(tmp_path / "f.safetensors", "init", BASE)
    other = BaseModelInfo("org/other", "ffff0000ffff0000")
    with pytest.raises(ForgetkitError, match="made for base model org/model .* not org/other"):
        check_artifact(tmp_path / "f.safetensors", "fisher", other)
    assert check_artifact(tmp_path / "f.safetensors", "fisher", BASE).stage == "fisher"


def test_refuses_newer_schema(tmp_path):
    meta = Metadata(stage="init", base_model=BASE, schema_version=99)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "forgetkit.json").write_text(meta.to_json())
    with pytest.raises(ForgetkitError, match="newer forgetkit"):
        check_artifact(tmp_path / "a", "init", BASE)


def test_interrupted_writes_leave_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_folder(tmp_path / "out") as staging:
            (staging / "adapter_model.safetensors").write_text("half")
            raise RuntimeError("killed")
    with pytest.raises(RuntimeError):
        with atomic_file(tmp_path / "f.json") as staging:
            staging.write_text("{")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_folder_replaces_previous(tmp_path):
    for content in ("one", "two"):
        with atomic_folder(tmp_path / "out") as staging:
            (staging / "x").write_text(content)
    assert (tmp_path / "out" / "x").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_non_artifacts_are_named(tmp_path):
    (tmp_path / "plain.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ForgetkitError, match="plain.safetensors: not a safetensors file"):
        read_metadata(tmp_path / "plain.safetensors")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ForgetkitError, match="not a forgetkit artifact"):
        read_metadata(tmp_path / "folder")


def test_fingerprint_tracks_weights_not_tokenizer(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"a": 1}))
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    first = model_fingerprint(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    assert model_fingerprint(tmp_path) == first
    (tmp_path / "model.safetensors").write_bytes(b"weights2")
    assert model_fingerprint(tmp_path) != first
