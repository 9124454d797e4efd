"""Checkpoints survive a kill at any moment: manifests, atomic replacement, fallback, damaged files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from ktransfer import checkpoint as ck
from ktransfer.cli import main
from ktransfer.config import RunConfig
from ktransfer.runner import resume, run
from ktransfer.train import WorldSizeError


def tiny_config(**train: object) -> RunConfig:
    return RunConfig.from_dict({
        "data": {"name": "digits"},
        "teacher": {"builder": "mlp", "hidden": [32]},
        "student": {"builder": "mlp", "hidden": [16], "dropout": 0.1},
        "knowledge": [{"type": "response", "divergence": "forward_kl", "temperature": 2.0, "weight": 0.5},
                      {"type": "labels", "weight": 0.5}],
        "optim": {"lr": 0.01},
        "train": {"max_steps": 30, "batch_size": 32, "eval_every": 10, "log_every": 5, "checkpoint_every": 10,
                  "keep_checkpoints": 3, **train},
    })


def final_weights(run_dir: Path) -> dict[str, Tensor]:
    return load_file(str(run_dir / "final" / "model.safetensors"))


def assert_same_weights(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("full") / "run"
    run(tiny_config(), d, progress=False)
    return d


def killed_copy(full_run: Path, tmp_path: Path) -> Path:
    """A copy of the full run as a kill after the last checkpoint would leave it (no final outputs)."""
    d = tmp_path / "killed"
    shutil.copytree(full_run, d)
    for name in ("final", "summary.json"):
        p = d / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return d


# ------------------------------------------------------------------------------------ unit level
def test_manifest_detects_missing_truncated_and_altered_files(tmp_path: Path) -> None:
    d = tmp_path / "c"
    d.mkdir()
    (d / "a.bin").write_bytes(b"x" * 100)
    (d / "sub").mkdir()
    (d / "sub" / "b.bin").write_bytes(b"y" * 10)
    assert ck.verify_manifest(d) == "no manifest.json (the write was cut short, or an older version wrote it)"
    ck.write_manifest(d, step=3)
    assert ck.verify_manifest(d) is None
    assert ck.read_manifest(d)["step"] == 3 and set(ck.read_manifest(d)["files"]) == {"a.bin", "sub/b.bin"}
    (d / "a.bin").write_bytes(b"x" * 99)
    assert ck.verify_manifest(d) == "a.bin has 99 bytes, the manifest says 100"
    (d / "a.bin").write_bytes(b"z" * 100)
    assert ck.verify_manifest(d) == "a.bin does not match its checksum"
    (d / "a.bin").unlink()
    assert ck.verify_manifest(d) == "a.bin is missing"
    (d / "manifest.json").write_text("{not json")
    assert "unreadable manifest" in str(ck.verify_manifest(d))


def test_replace_dir_never_leaves_a_partial_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def make(name: str, content: bytes) -> Path:
        p = tmp_path / name
        p.mkdir()
        (p / "f").write_bytes(content)
        ck.write_manifest(p)
        return p

    final = make("step-00000010", b"old")
    ck.replace_dir(make(".tmp-step-00000010", b"new"), final)
    assert (final / "f").read_bytes() == b"new" and ck.verify_manifest(final) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000010"]

    # a kill between the two renames: the old copy is aside under a hidden name, nothing partial is visible
    calls = []
    real_replace = os.replace

    def killed_on_second(src: str | Path, dst: str | Path) -> None:
        calls.append(src)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_replace(src, dst)

    newer = make(".tmp-step-00000010", b"newer")
    monkeypatch.setattr(os, "replace", killed_on_second)
    with pytest.raises(KeyboardInterrupt):
        ck.replace_dir(newer, final)
    monkeypatch.undo()
    assert not final.exists()
    assert ck.checkpoints_newest_first(tmp_path) == []  # hidden names are never read as checkpoints
    # the next replacement cleans up what the kill left
    ck.replace_dir(make(".tmp2", b"newest"), final)
    assert (final / "f").read_bytes() == b"newest"


def test_weights_files_verify_themselves(tmp_path: Path) -> None:
    model = nn.Linear(4, 3)
    path = tmp_path / "best" / "model.safetensors"
    ck.save_weights(model, path)
    assert ck.read_weights(path).keys() == {"weight", "bias"}
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 7])
    with pytest.raises(ck.CorruptFileError, match="damaged or incomplete"):
        ck.load_weights(nn.Linear(4, 3), path)
    flipped = bytearray(data)
    flipped[-5] ^= 0x10
    path.write_bytes(bytes(flipped))
    with pytest.raises(ck.CorruptFileError, match="does not match its checksum"):
        ck.load_weights(nn.Linear(4, 3), path)
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        ck.load_weights(nn.Linear(4, 3), tmp_path / "nope.safetensors")


# ------------------------------------------------------------------------------------ end to end
def damage_delete_window(ckpt: Path) -> None:
    """A kill while step-N is deleted file by file before the new one is renamed in: 4 of its 6 files remain."""
    for name in ("model.safetensors", "optimizer.bin"):
        (ckpt / name).unlink()


def damage_rename_window(ckpt: Path) -> None:
    """Between the renames: step-N is aside under a hidden name, the new copy still temporary."""
    shutil.copytree(ckpt, ckpt.with_name(".tmp-" + ckpt.name))
    os.replace(ckpt, ckpt.with_name(".old-" + ckpt.name))


def damage_manifest_window(ckpt: Path) -> None:
    """Killed before the manifest was written: the directory is not trusted."""
    (ckpt / "manifest.json").unlink()


def damage_truncate(ckpt: Path) -> None:
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])


def damage_bitflip(ckpt: Path) -> None:
    data = bytearray((ckpt / "model.safetensors").read_bytes())
    data[-3] ^= 0x01
    (ckpt / "model.safetensors").write_bytes(bytes(data))


@pytest.mark.parametrize("damage,reason", [
    (damage_delete_window, "model.safetensors is missing"),
    (damage_rename_window, None),
    (damage_manifest_window, "no manifest.json"),
    (damage_truncate, "model.safetensors has"),
    (damage_bitflip, "model.safetensors does not match its checksum"),
])
def test_resume_falls_back_to_the_newest_intact_checkpoint(
    full_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage, reason: str | None,
) -> None:
    d = killed_copy(full_run, tmp_path)
    damage(d / "checkpoints" / "step-00000030")
    result = resume(d, progress=False)
    err = capsys.readouterr().err
    if reason is not None:
        assert f"skipping checkpoint step-00000030: {reason}" in err
        assert f"resuming from checkpoint {d / 'checkpoints' / 'step-00000020'}, the newest intact checkpoint (step 20 of" \
            in err
    assert result.train.step == 30 and not result.train.already_finished
    assert_same_weights(final_weights(d), final_weights(full_run))
    assert result.train.final_metrics == json.loads((full_run / "summary.json").read_text())["final_val"]
    # the replacement checkpoint is complete and verified; nothing temporary is left behind
    assert ck.verify_manifest(d / "checkpoints" / "step-00000030") is None
    assert not [p.name for p in (d / "checkpoints").iterdir() if p.name.startswith(".")]


def test_kill_while_replacing_a_damaged_checkpoint_then_resume(
    full_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real kill inside the engine's replacement of step-30 (between the renames), then a resume."""
    d = killed_copy(full_run, tmp_path)
    damage_bitflip(d / "checkpoints" / "step-00000030")
    real_replace = os.replace

    def kill_when_renaming_in(src: str | Path, dst: str | Path) -> None:
        if Path(src).name == ".tmp-step-00000030":
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", kill_when_renaming_in)
    with pytest.raises(KeyboardInterrupt):
        resume(d, progress=False)
    monkeypatch.undo()
    assert not (d / "checkpoints" / "step-00000030").exists()
    resume(d, progress=False)
    assert_same_weights(final_weights(d), final_weights(full_run))


def test_checkpoint_files_get_the_usual_permissions(full_run: Path) -> None:
    """Accelerate writes some checkpoint files 0600; under umask 022 (the test's) they must be 0644."""
    import stat

    mask = ck.current_umask()
    files = [p for p in (full_run / "checkpoints").rglob("*") if p.is_file()]
    assert files and {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o666 & ~mask}


def test_no_intact_checkpoint_is_a_clear_error(full_run: Path, tmp_path: Path) -> None:
    d = killed_copy(full_run, tmp_path)
    for ckpt in (d / "checkpoints").iterdir():
        damage_manifest_window(ckpt)
    with pytest.raises(FileNotFoundError, match=r"no checkpoint to resume from .* \(damaged: step-00000030: no manifest"):
        resume(d, progress=False)
    assert main(["resume", str(d), "--no-progress"]) == 2


def test_resume_of_a_finished_run_changes_nothing(full_run: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "done"
    shutil.copytree(full_run, d)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in d.rglob("*") if p.is_file()}
    assert main(["resume", str(d), "--no-progress"]) == 0
    out = capsys.readouterr()
    assert "the run is finished (step 30 of 30); nothing to do" in out.err
    assert json.loads(out.out)["already_finished"] is True
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in d.rglob("*") if p.is_file()}
    assert after == before  # no evaluation line, no rewritten checkpoint, summary or weights

    # a longer max_steps continues it
    result = resume(d, progress=False, max_steps=40)
    assert result.train.step == 40 and not result.train.already_finished
    records = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    val_steps = [r["step"] for r in records if r["split"] == "val"]
    assert val_steps == [10, 20, 30, 40]
    assert RunConfig.from_yaml(d / "config.yaml").train.max_steps == 40
    assert json.loads((d / "summary.json").read_text())["step"] == 40
    with pytest.raises(ValueError, match="only be continued to a larger max_steps"):
        resume(d, progress=False, max_steps=20)


def test_finished_run_whose_final_weights_a_kill_prevented_gets_them(full_run: Path, tmp_path: Path) -> None:
    d = killed_copy(full_run, tmp_path)  # killed after the last checkpoint, before final/ and summary.json
    result = resume(d, progress=False)
    assert result.train.already_finished
    assert_same_weights(final_weights(d), final_weights(full_run))
    assert json.loads((d / "summary.json").read_text())["final_val"] == result.train.final_metrics


def test_damaged_best_weights_give_a_clear_cli_error(full_run: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "r"
    shutil.copytree(full_run, d)
    damage_truncate(d / "best")
    capsys.readouterr()
    assert main(["eval", str(d)]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors is damaged or incomplete" in err and "Traceback" not in err


def test_world_size_mismatch_on_resume_is_refused_unless_forced(full_run: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    d = killed_copy(full_run, tmp_path)
    shutil.rmtree(d / "checkpoints" / "step-00000030")
    ckpt = d / "checkpoints" / "step-00000020"
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert manifest["world_size"] == 1 and manifest["step"] == 20
    manifest["world_size"] = 2  # as a 2-process run writes it
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(WorldSizeError, match=r"written by 2 process\(es\) and this run has 1"):
        resume(d, progress=False)
    assert main(["resume", str(d), "--no-progress"]) == 2
    assert "--force-world-size" in capsys.readouterr().err
    assert main(["resume", str(d), "--no-progress", "--force-world-size"]) == 0
    records = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert [r["world_size"] for r in records if r["split"] == "setup"] == [1, 1]  # the change is on record


# ------------------------------------------------------------------------------------ tied weights
def tied_llama(seed: int = 0, tie: bool = True) -> nn.Module:
    from ktransfer.models import MODELS

    torch.manual_seed(seed)
    return MODELS.build("llama_student", {"vocab_size": 20, "hidden_size": 16, "num_layers": 1, "num_heads": 2,
                                          "tie_word_embeddings": tie}, "student")


def is_tied(model: nn.Module) -> bool:
    return model.get_output_embeddings().weight is model.get_input_embeddings().weight  # type: ignore[operator]


def test_tied_weights_are_saved_once_and_reloaded_tied(tmp_path: Path, recwarn: pytest.WarningsRecorder,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    model = tied_llama(seed=1)
    assert is_tied(model) and ck.tied_aliases(model) == {"lm_head.weight": "model.embed_tokens.weight"}
    assert "lm_head.weight" not in model.state_dict()  # one tensor, one name
    path = tmp_path / "model.safetensors"
    ck.save_weights(model, path)
    assert "lm_head.weight" not in load_file(str(path))
    fresh = tied_llama(seed=2)
    ck.load_weights(fresh, path)
    assert is_tied(fresh)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    untied = tied_llama(seed=2, tie=False)  # a model that does not tie them gets equal copies
    ck.load_weights(untied, path)
    assert not is_tied(untied) and torch.equal(untied.lm_head.weight, model.lm_head.weight)
    # a file written with both names (as older versions did) loads into the tied model too
    both = {k: v.clone() for k, v in tied_llama(seed=3).state_dict(keep_vars=False).items()}
    both["lm_head.weight"] = both["model.embed_tokens.weight"].clone()
    from safetensors.torch import save_file

    save_file(both, str(tmp_path / "old.safetensors"))
    ck.load_weights(fresh, tmp_path / "old.safetensors")
    assert is_tied(fresh) and torch.equal(fresh.lm_head.weight, both["lm_head.weight"])
    assert not [w for w in recwarn.list if "shared" in str(w.message)] and "shared tensor" not in caplog.text


def test_a_tied_language_model_checkpoints_and_resumes_without_the_shared_tensor_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A tied model's checkpoint holds the tied tensor once, under its first name: Accelerate has nothing to
    deduplicate (no 'Removed shared tensor' warning), and the resumed run matches the uninterrupted one."""
    import logging

    from ktransfer.data import TensorDictDataset
    from ktransfer.knowledge import LabelsTerm
    from ktransfer.train import Distiller, TrainConfig

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 20, (16, 6), generator=g)
    data = TensorDictDataset(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids.clone())

    def fit(run_dir: Path, resume_run: bool, stop: int | None) -> nn.Module:
        student = tied_llama()
        Distiller(student, None, [LabelsTerm()], train_data=data, task="causal_lm",
                  config=TrainConfig(max_steps=4, batch_size=4, checkpoint_every=2), run_dir=run_dir,
                  progress=False, stop_after_steps=stop).fit(resume=resume_run)
        return student

    with caplog.at_level(logging.WARNING):
        fit(tmp_path / "full", False, None)
        fit(tmp_path / "cut", False, 2)
        resumed = fit(tmp_path / "cut", True, None)
    assert "Removed shared tensor" not in caplog.text
    saved = load_file(str(tmp_path / "cut" / "checkpoints" / "step-00000002" / "model.safetensors"))
    assert "lm_head.weight" not in saved and "model.embed_tokens.weight" in saved
    assert is_tied(resumed)
    assert_same_weights(final_weights(tmp_path / "cut"), final_weights(tmp_path / "full"))


def test_atomic_writes_and_manifests_come_from_the_io_module_and_checkpoint_still_offers_them(tmp_path: Path) -> None:
    from ktransfer import io

    for name in ("atomic_path", "write_text_atomic", "write_json_atomic", "write_manifest", "read_manifest",
                 "verify_manifest", "replace_dir", "CorruptFileError", "current_umask", "file_digest"):
        assert getattr(ck, name) is getattr(io, name), name
    io.write_json_atomic(tmp_path / "d" / "a.json", {"x": 1})
    io.write_manifest(tmp_path / "d", step=3)
    assert io.verify_manifest(tmp_path / "d") is None and io.read_manifest(tmp_path / "d")["step"] == 3
    (tmp_path / "d" / "a.json").write_text("{}\n")
    assert io.verify_manifest(tmp_path / "d") == "a.json has 3 bytes, the manifest says 13"
