"""Data for chains: the cache folder, Fashion-MNIST from its Debian package, the CLI for hops."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from ktransfer.cache import cache_root, cached_entry
from ktransfer.cli import main
from ktransfer.data import fashion_mnist, prepare_fashion_mnist
from ktransfer.data.images import fashion_mnist_path, read_idx


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _fake_package(folder: Path, n_train: int = 300, n_test: int = 100) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    _write_idx(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n_train, 28, 28)))
    _write_idx(folder / "train-labels-idx1-ubyte.gz", np.arange(n_train) % 10)
    _write_idx(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (n_test, 28, 28)))
    _write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.arange(n_test) % 10)


def test_cache_root_follows_the_environment_and_entries_appear_whole(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTRANSFER_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"

    def broken(out: Path) -> None:
        (out / "half.txt").write_text("half")
        raise RuntimeError("killed while building")

    with pytest.raises(RuntimeError):
        cached_entry("thing", broken)
    assert not (tmp_path / "c" / "thing").exists() and list((tmp_path / "c").iterdir()) == []
    calls = []
    for _ in range(2):
        entry = cached_entry("thing", lambda out: (calls.append(1), (out / "ok.txt").write_text("ok")))
    assert (entry / "ok.txt").read_text() == "ok" and len(calls) == 1
    with pytest.raises(ValueError, match="plain folder name"):
        cached_entry("../escape", lambda out: None)
    # an entry damaged on disk (or one without a manifest) is rebuilt, never read
    (entry / "ok.txt").write_text("ko")
    entry = cached_entry("thing", lambda out: (calls.append(1), (out / "ok.txt").write_text("ok")))
    assert (entry / "ok.txt").read_text() == "ok" and len(calls) == 2
    (entry / "manifest.json").unlink()
    cached_entry("thing", lambda out: (calls.append(1), (out / "ok.txt").write_text("ok")))
    assert len(calls) == 3 and not [p for p in (tmp_path / "c").iterdir() if p.name.startswith(".")]


def test_fashion_mnist_prepared_from_idx_files_then_loaded_offline(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTRANSFER_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="ktransfer data prepare fashion-mnist"):
        fashion_mnist()
    _fake_package(tmp_path / "pkg" / "usr" / "share" / "fashion-mnist")
    path = prepare_fashion_mnist(tmp_path / "pkg")
    assert path == fashion_mnist_path() and path.is_file()
    data = fashion_mnist(train_size=120, val_size=50, test_size=40, split_seed=1)
    assert data.info["sizes"] == {"train": 120, "val": 50, "test": 40}
    x = data.train.tensors["inputs"]
    assert x.shape == (120, 784) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert read_idx(tmp_path / "pkg" / "usr" / "share" / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").tolist()[:3] == [0, 1, 2]
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x00\x00\x08\x01\x00\x00\x00\x05\x01")
    with pytest.raises(ValueError, match="expected 5 values"):
        read_idx(bad)


def test_real_fashion_mnist_when_prepared() -> None:
    if not fashion_mnist_path().is_file():
        pytest.skip(f"Fashion-MNIST not prepared at {fashion_mnist_path()}: run `ktransfer data prepare fashion-mnist` "
                    "(CI does, in .ci/run)")
    data = fashion_mnist(train_size=500, val_size=100, test_size=100)
    y = data.train.tensors["labels"].numpy()
    assert set(np.unique(y)) == set(range(10)) and data.info["num_features"] == 784


def test_cli_data_prepare_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "prepare", "cifar"]) == 2
    err = capsys.readouterr().err
    assert "valid choices: " in err and "fashion-mnist" in err


def test_cli_hops_runs_resumes_and_run_dispatches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "chain.yaml"
    cfg.write_text(
        "data: {name: wine}\nteacher: {kind: mlp, hidden: [32]}\nstudent: {kind: tree, max_depth: 1}\n"
        "method: {name: confidence}\nplan: {strategy: fixed, intermediates: [{kind: tree, max_depth: 3}]}\n"
        "folds: 2\ntrain: {max_steps: 30}\n"
    )
    run_dir = tmp_path / "run"
    assert main(["hops", str(cfg), "--run-dir", str(run_dir), "--stop-after-hops", "1"]) == 0
    assert "continue with: ktransfer hops" in capsys.readouterr().out
    assert len(list((run_dir / "hops").glob("*/record.json"))) == 1
    assert main(["hops", str(cfg), "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "| 2 | tree(d=1) |" in out and "simple alone" in out
    report = json.loads((run_dir / "report.json").read_text())
    assert [h["model"] for h in report["chain"]] == ["mlp[32]", "tree(d=3)", "tree(d=1)"]
    assert main(["check", str(cfg)]) == 0 and "confidence_split: holdout" in capsys.readouterr().out
    assert main(["run", str(cfg), "--run-dir", str(tmp_path / "via-run")]) == 0
    assert json.loads((tmp_path / "via-run" / "report.json").read_text())["chain"][-1]["test"] == report["chain"][-1]["test"]
    cfg.write_text("data: {name: wine}\nteacher: {kind: mlp, hidden: [32]}\nstudent: {kind: tree, max_depth: 1}\n"
                   "method: {name: confidence, margin: 0.1}\n")
    assert main(["hops", str(cfg), "--run-dir", str(tmp_path / "bad")]) == 2
    assert "method.margin: unknown key" in capsys.readouterr().err


def test_shipped_chain_configs_validate() -> None:
    from ktransfer.hops.config import is_chain_file, load_chain_config

    paths = sorted((Path(__file__).parent.parent / "configs").glob("hops/*.yaml"))
    assert len(paths) >= 2
    for path in paths:
        assert is_chain_file(path)
        load_chain_config(path)  # a chain of fitted models, or of runs


def test_cli_check_of_a_chain_reads_its_files_and_columns_before_anything_trains(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import ktransfer.hops.chain
    import ktransfer.hops.methods

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("ktransfer check trained a model")

    monkeypatch.setattr(ktransfer.hops.chain, "fit", no_training)
    monkeypatch.setattr(ktransfer.hops.methods, "fit", no_training)
    rng = np.random.default_rng(0)
    (tmp_path / "points.csv").write_text("a,b,kind\n" + "".join(
        f"{x:.3f},{z:.3f},{'yes' if x + z > 0 else 'no'}\n" for x, z in rng.normal(size=(120, 2))))
    cfg = tmp_path / "chain.yaml"

    def check(data: str, teacher: str = "{kind: mlp, hidden: [16]}") -> tuple[int, str, str]:
        cfg.write_text(f"data: {data}\nteacher: {teacher}\nstudent: {{kind: tree, max_depth: 1}}\n"
                       "method: {name: kd}\nplan: {strategy: fixed, intermediates: [{kind: tree, max_depth: 3}]}\n")
        code = main(["check", str(cfg)])
        out = capsys.readouterr()
        return code, out.out, out.err

    code, out, err = check("{name: csv, path: points.csv, label: kind}")
    assert code == 0, err
    assert "# ok: data: 'points', " in out and "# ok: chain: mlp[16] (" in out and "> tree(d=1) (3)" in out
    code, _, err = check("{name: csv, path: missing.csv, label: kind}")
    assert code == 2 and f"data.path: file not found: {tmp_path / 'missing.csv'}" in err
    code, _, err = check("{name: csv, path: points.csv, label: label}")
    assert code == 2
    assert f"data.label: column 'label' not found in {tmp_path / 'points.csv'}; columns are: a, b, kind" in err
    code, _, err = check("{name: csv, path: points.csv, label: kind, features: [a, c]}")
    assert code == 2 and "data.features[1]: column 'c' not found" in err
    code, _, err = check("{name: csv, path: points.csv, label: kind}", "{estimator: models/teacher.joblib}")
    assert code == 2 and f"teacher.estimator: file not found: {tmp_path / 'models' / 'teacher.joblib'}" in err
    code, _, err = check("{name: wine}", "{from_run: runs/teacher}")
    assert code == 2 and f"teacher.from_run: no run found at {tmp_path / 'runs' / 'teacher'}" in err
    # a teacher that is no larger than the first intermediate: found by check, not after training it
    code, _, err = check("{name: wine}", "{kind: tree, max_depth: 2}")
    assert code == 2 and "intermediate 1 tree(d=3) (complexity 15) is not simpler than its teacher" in err
