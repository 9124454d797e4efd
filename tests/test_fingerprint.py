"""Content fingerprints: a changed file gives another digest; an unchanged one is read once."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from ktransfer import fingerprint
from ktransfer.config import RunConfig


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTRANSFER_CACHE", str(tmp_path / "cache"))


def test_file_digest_is_sha256_and_remembered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "a.csv"
    f.write_bytes(b"x,y\n1,2\n")
    assert fingerprint.file_digest(f) == hashlib.sha256(b"x,y\n1,2\n").hexdigest()
    reads: list[Path] = []
    real = fingerprint._sha256_file
    monkeypatch.setattr(fingerprint, "_sha256_file", lambda p: reads.append(p) or real(p))
    assert fingerprint.file_digest(f) == hashlib.sha256(b"x,y\n1,2\n").hexdigest()
    assert reads == []  # same size and mtime: the remembered digest
    f.write_bytes(b"x,y\n1,3\n")  # same size, new content (and a new mtime)
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 1_000_000))
    assert fingerprint.file_digest(f) == hashlib.sha256(b"x,y\n1,3\n").hexdigest()
    assert reads == [f]


def test_folder_digest_covers_names_and_bytes(tmp_path: Path) -> None:
    d = tmp_path / "tok"
    d.mkdir()
    (d / "vocab.txt").write_text("a\nb\n")
    (d / ".hidden").write_text("ignored")
    first = fingerprint.path_digest(d)
    (d / ".hidden").write_text("still ignored")
    assert fingerprint.path_digest(d) == first
    (d / "vocab.txt").write_text("a\nc\n")
    assert fingerprint.path_digest(d) != first
    (d / "vocab.txt").rename(d / "other.txt")
    assert fingerprint.path_digest(d) not in (first,)
    assert fingerprint.path_digest(tmp_path / "absent") == "missing"


def test_run_config_names_its_input_paths(tmp_path: Path) -> None:
    (tmp_path / "mine.csv").write_text("text,label\na,b\n")
    (tmp_path / "run.yaml").write_text(
        "data: {name: text_csv, path: mine.csv, tokenizer: tok}\n"
        "teacher: {from_run: teacher_run}\nstudent: {builder: mlp, hidden: [4]}\n")
    paths = RunConfig.from_yaml(tmp_path / "run.yaml").input_paths()
    assert paths == {"data.path": str(tmp_path / "mine.csv"), "data.tokenizer": str(tmp_path / "tok"),
                     "teacher.from_run": str(tmp_path / "teacher_run")}
