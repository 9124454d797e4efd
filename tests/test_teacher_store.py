"""The teacher output store: format, build, training from it (equal to the live teacher at k = V), checks."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from ktransfer.checkpoint import load_weights, save_weights
from ktransfer.config import RunConfig
from ktransfer.models import MODELS
from ktransfer.registry import ConfigError
from ktransfer.sparse_divergences import SparseTeacher, sparse_forward_kl
from ktransfer.store import StoreError, StoreWriter, TeacherStore
from ktransfer.store.build import build_store


def _state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _max_diff(a: Path, b: Path) -> float:
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    return max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa)


# ------------------------------------------------------------------------------------ classification (digits)
@pytest.fixture(scope="module")
def digits_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Fixed initial weights for a digits MLP teacher (64-32-10) and student (64-16-10)."""
    folder = tmp_path_factory.mktemp("digits_models")
    torch.manual_seed(1)
    save_weights(MODELS.build("mlp", {"in_features": 64, "num_classes": 10, "hidden": [32]}, "t"), folder / "t.safetensors")
    save_weights(MODELS.build("mlp", {"in_features": 64, "num_classes": 10, "hidden": [16]}, "s"), folder / "s.safetensors")
    return {"teacher": str(folder / "t.safetensors"), "student": str(folder / "s.safetensors")}


def digits_config(models: dict[str, str], **changes: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "task": "classification",
        "data": {"name": "digits", "val_fraction": 0.15, "test_fraction": 0.2, "split_seed": 0},
        "teacher": {"builder": "mlp", "hidden": [32], "weights": models["teacher"]},
        "student": {"builder": "mlp", "hidden": [16], "weights": models["student"]},
        "knowledge": [{"type": "response", "divergence": "soft_target", "temperature": 4.0, "weight": 0.75},
                      {"type": "labels", "weight": 0.25}],
        "optim": {"lr": 0.01},
        "train": {"max_steps": 6, "batch_size": 32, "eval_every": 3, "log_every": 1, "seed": 0},
    }
    cfg.update(changes)
    return cfg


def test_classifier_store_holds_every_logit_and_training_from_it_equals_the_live_teacher(
        digits_models: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ktransfer import checks, runner
    from ktransfer.runner import run

    live = digits_config(digits_models)
    report = build_store(RunConfig.from_dict(live), tmp_path / "store", shard_size=500, batch_size=100)
    store = TeacherStore.open(tmp_path / "store")
    assert store.kind == "logits" and report.computed == store.examples == report.examples
    assert [s["count"] for s in store.manifest["shards"]][:2] == [500, 500]
    # the stored logits are the teacher's (float64 reference)
    data = runner.load_data(RunConfig.from_dict(live))
    teacher = load_weights(MODELS.build("mlp", {"in_features": 64, "num_classes": 10, "hidden": [32]}, "t"),
                           digits_models["teacher"]).double().eval()
    with torch.no_grad():
        expected = teacher(torch.stack([data.train[i]["inputs"] for i in (0, 7, 1100)]).double())
    assert torch.allclose(store.logits([0, 7, 1100]).double(), expected, atol=1e-5)

    result_live = run(RunConfig.from_dict(live), tmp_path / "live", progress=False)

    def no_teacher(spec: dict[str, Any], info: dict[str, Any], where: str) -> Any:
        if where.startswith("teacher"):
            raise AssertionError("a teacher model was built for a run that reads a store")
        return real_build(spec, info, where)

    real_build = runner.build_model
    monkeypatch.setattr(runner, "build_model", no_teacher)
    monkeypatch.setattr(checks, "build_model", no_teacher)
    stored = digits_config(digits_models, teacher={"store": str(tmp_path / "store")})
    result_store = run(RunConfig.from_dict(stored), tmp_path / "stored", progress=False)
    assert result_store.teacher_parameters is None and result_store.train.step == result_live.train.step == 6
    diff = _max_diff(tmp_path / "live" / "final" / "model.safetensors", tmp_path / "stored" / "final" / "model.safetensors")
    assert diff < 1e-6
    moved = _max_diff(tmp_path / "stored" / "final" / "model.safetensors", Path(digits_models["student"]))
    assert moved > 1e-3  # the student did train


def test_store_of_other_data_a_missing_example_or_a_damaged_shard_is_refused_before_training(
        digits_models: dict[str, str], tmp_path: Path) -> None:
    from ktransfer.building import load_data
    from ktransfer.checks import preflight

    live = digits_config(digits_models)
    build_store(RunConfig.from_dict(live), tmp_path / "store", shard_size=500, batch_size=200)
    ok = digits_config(digits_models, teacher={"store": str(tmp_path / "store")})
    assert any("teacher.store:" in line and "shards verified" in line for line in preflight(RunConfig.from_dict(ok)).checked)
    other_split = {**ok, "data": {**ok["data"], "split_seed": 1}}
    with pytest.raises(ConfigError, match="teacher.store: .*built from other training data"):
        preflight(RunConfig.from_dict(other_split))
    more = {**ok, "data": {**ok["data"], "val_fraction": 0.1}}  # more training examples than the store holds
    n, m = TeacherStore.open(tmp_path / "store").examples, len(load_data(RunConfig.from_dict(more)).train)
    with pytest.raises(ConfigError, match=rf"holds {n} training examples, this run's training split has {m}; "
                                          rf"examples {n}\.\.{m - 1} have no entry"):
        preflight(RunConfig.from_dict(more))
    sha = TeacherStore.open(tmp_path / "store").keys["teacher"]
    assert preflight(RunConfig.from_dict({**ok, "teacher": {**ok["teacher"], "sha256": sha}})).checked
    with pytest.raises(ConfigError, match="built by another teacher"):
        preflight(RunConfig.from_dict({**ok, "teacher": {**ok["teacher"], "sha256": "0" * 64}}))
    shard = tmp_path / "store" / "shard-00001.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[-3] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(ConfigError, match=r"shard-00001\.safetensors: shard damaged"):
        preflight(RunConfig.from_dict(ok))


def test_a_killed_build_keeps_its_finished_shards_and_the_next_computes_only_the_rest(
        digits_models: dict[str, str], tmp_path: Path) -> None:
    cfg = RunConfig.from_dict(digits_config(digits_models))
    first = build_store(cfg, tmp_path / "store", shard_size=300, batch_size=300, stop_after_shards=1)
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert [s["name"] for s in manifest["shards"]] == ["shard-00000.safetensors"] and first.computed == 300
    with pytest.raises(StoreError, match="incomplete: 867 of 1167 examples"):
        TeacherStore.open(tmp_path / "store")
    done = (tmp_path / "store" / "shard-00000.safetensors").stat().st_mtime_ns
    second = build_store(cfg, tmp_path / "store", shard_size=300, batch_size=300)
    assert second.computed == 1167 - 300
    assert (tmp_path / "store" / "shard-00000.safetensors").stat().st_mtime_ns == done
    assert TeacherStore.open(tmp_path / "store").missing_examples() == []
    assert build_store(cfg, tmp_path / "store", shard_size=300, batch_size=300).computed == 0
    with pytest.raises(StoreError, match=r"made from something else \(values: store 'float32', now 'float16'\)"):
        build_store(cfg, tmp_path / "store", shard_size=300, values="float16")
