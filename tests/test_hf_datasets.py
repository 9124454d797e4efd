"""Hugging Face `datasets` sources (local files, a saved folder, a hub id from the cache) fed to our own builders."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from _hub import lay_out, offline_hub  # noqa: E402,F401  (offline_hub is a fixture)

from ktransfer.config import RunConfig  # noqa: E402
from ktransfer.data import DATASETS  # noqa: E402
from ktransfer.registry import ConfigError  # noqa: E402
from ktransfer.sources import HubSourceError  # noqa: E402

WORDS = "the cat dog sat ran on a mat log red blue big small fox jumps over lazy bird sings song".split()


def sentence(i: int, n: int = 6) -> str:
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(n + i % 5)) + f" {i}"


def write_jsonl(file: Path, rows: list[dict]) -> Path:
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return file


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A word-level tokenizer folder with [PAD], [UNK], [CLS], [SEP] and an end-of-sequence token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tok")
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(WORDS + [str(i) for i in range(100)])] * 3,
                            trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "</s>"]))
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                            sep_token="[SEP]", eos_token="</s>").save_pretrained(folder)
    return folder


def test_prompt_completion_rows_put_the_loss_on_the_completion_only(tmp_path: Path, tok_dir: Path) -> None:
    from transformers import AutoTokenizer

    rows = [{"q": sentence(i, 3), "a": sentence(i + 50, 2 + i % 3)} for i in range(40)]
    rows[5]["q"] = " ".join(["cat"] * 30)  # the prompt alone fills max_length: dropped
    file = write_jsonl(tmp_path / "qa.jsonl", rows)
    data = DATASETS.build("hf_dataset", {"path": "json", "data_files": str(file), "prompt": "q", "completion": "a",
                                         "tokenizer": str(tok_dir), "max_length": 12}, "data")
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    by_ids = {}
    for r in rows:
        p, c = tok(r["q"], add_special_tokens=False)["input_ids"], tok(r["a"], add_special_tokens=False)["input_ids"]
        by_ids[tuple((p + c + [tok.eos_token_id])[:12])] = len(p)
    seen = 0
    for split in (data.train, data.val, data.test):
        for i in range(len(split)):
            row = split[i]
            prompt_len = by_ids[tuple(row["input_ids"].tolist())]
            assert (row["labels"][:prompt_len] == -100).all()
            assert torch.equal(row["labels"][prompt_len:], row["input_ids"][prompt_len:])
            seen += 1
    counts = data.info["examples"]
    too_long = sum(len(tok(r["q"], add_special_tokens=False)["input_ids"])
                   + len(tok(r["a"], add_special_tokens=False)["input_ids"]) + 1 > 12 for r in rows if r is not rows[5])
    assert sum(c["dropped"] for c in counts.values()) == 1 and seen == 39
    assert sum(c["truncated"] for c in counts.values()) == too_long >= 1 and data.info["loss_on"] == "completion"

def test_a_hub_dataset_from_the_cache_gives_the_blocks_our_own_corpus_gives(tmp_path: Path, offline_hub: Path,
                                                                           tok_dir: Path) -> None:
    docs = [{"story": sentence(i, 8)} for i in range(30)]
    file = write_jsonl(tmp_path / "repo" / "train.jsonl", docs)
    commit = lay_out(tmp_path / "repo", offline_hub, "acme/stories", repo_type="dataset")
    lay_out(tok_dir, offline_hub, "acme/word-tokenizer")
    settings = {"max_length": 16, "split_seed": 3}
    hub = DATASETS.build("hf_dataset", {"path": "acme/stories", "text": "story", "tokenizer": "acme/word-tokenizer",
                                        **settings}, "data")
    ours = DATASETS.build("text_corpus", {"path": str(file), "text_field": "story", "tokenizer": str(tok_dir),
                                          **settings}, "data")
    for a, b in ((hub.train, ours.train), (hub.val, ours.val), (hub.test, ours.test)):
        assert [a[i]["input_ids"].tolist() for i in range(len(a))] == [b[i]["input_ids"].tolist() for i in range(len(b))]
    assert hub.info["examples"] == ours.info["examples"]
    cfg = RunConfig.from_dict({"task": "causal_lm", "student": {"builder": "mlp"},
                               "data": {"name": "hf_dataset", "path": "acme/stories", "text": "story"}})
    assert cfg.data["path"] == "acme/stories"
    assert cfg.input_digests()["data.path"] == f"hub:dataset:acme/stories@{commit}"
    with pytest.raises(HubSourceError, match=r"^hf_dataset: 'acme/missing' is not in the local Hugging Face cache "
                                             r"\(HF_HUB_CACHE=.*HF_HUB_OFFLINE=1 forbids downloading it"):
        DATASETS.build("hf_dataset", {"path": "acme/missing", "text": "story", "tokenizer": str(tok_dir)}, "data")


def test_a_csv_through_datasets_is_split_and_tokenised_as_text_csv_does(tmp_path: Path, tok_dir: Path) -> None:
    file = tmp_path / "reviews.csv"
    with open(file, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "stars"])
        writer.writerows([[sentence(i), "good" if i % 2 else "bad"] for i in range(60)])
    common = {"text": "review", "label": "stars", "tokenizer": str(tok_dir), "max_length": 10,
              "val_fraction": 0.1, "test_fraction": 0.2}
    hf = DATASETS.build("hf_dataset", {"path": "csv", "data_files": str(file), **common}, "data")
    ours = DATASETS.build("text_csv", {"path": str(file), **common}, "data")
    for a, b in ((hf.train, ours.train), (hf.test, ours.test)):
        assert [a[i]["input_ids"].tolist() for i in range(len(a))] == [b[i]["input_ids"].tolist() for i in range(len(b))]
        assert torch.equal(a.labels, b.labels)
    assert hf.info["examples"] == ours.info["examples"] and hf.info["classes"] == ["bad", "good"]
    with open(file, "a", newline="") as f:
        csv.writer(f).writerow([sentence(99), ""])  # row 61 of the split (line 62 of the file)
    with pytest.raises(ConfigError, match=r"hf_dataset 'csv': split 'train' row 61, field 'stars': no value \(the cell is missing\); every example needs a label"):
        DATASETS.build("hf_dataset", {"path": "csv", "data_files": str(file), **common}, "data")
    with pytest.raises(ConfigError, match=r"label field 'label' not found; the dataset's fields are: review, stars"):
        DATASETS.build("hf_dataset", {"path": "csv", "data_files": str(file), **{**common, "label": "label"}}, "data")
    with pytest.raises(ConfigError, match=r"no split 'test'; the dataset's splits are: train"):
        DATASETS.build("hf_dataset", {"path": "csv", "data_files": str(file), "split": "test", **common}, "data")
    with pytest.raises(ConfigError, match=r"name the fields of one task, got text, source; valid combinations: text "
                                          r"\(corpus\); prompt \+ completion"):
        DATASETS.build("hf_dataset", {"path": "csv", "data_files": str(file), "text": "review", "source": "x"}, "data")


def test_a_saved_dataset_gives_the_translation_pairs_parallel_jsonl_gives(tmp_path: Path) -> None:
    import datasets

    pairs = [{"de": sentence(i, 4), "en": sentence(i + 20, 5)} for i in range(50)]
    datasets.Dataset.from_list(pairs).save_to_disk(str(tmp_path / "saved"))
    file = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    common = {"source": "de", "target": "en", "vocab_size": 300, "max_length": 48, "split_seed": 1}
    hf = DATASETS.build("hf_dataset", {"path": str(tmp_path / "saved"), **common}, "data")
    ours = DATASETS.build("parallel_jsonl", {"path": str(file), **common}, "data")
    for a, b in ((hf.train, ours.train), (hf.val, ours.val)):
        assert [a[i]["input_ids"].tolist() for i in range(len(a))] == [b[i]["input_ids"].tolist() for i in range(len(b))]
        assert [a[i]["labels"].tolist() for i in range(len(a))] == [b[i]["labels"].tolist() for i in range(len(b))]
    assert hf.info["examples"] == ours.info["examples"]


def test_data_files_are_relative_to_the_config_and_keyed_by_their_content(tmp_path: Path) -> None:
    file = write_jsonl(tmp_path / "data" / "train.jsonl", [{"text": sentence(i)} for i in range(5)])
    config = {"task": "causal_lm", "student": {"builder": "mlp"},
              "data": {"name": "hf_dataset", "path": "json", "data_files": {"train": ["data/train.jsonl"]},
                       "text": "text"}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    cfg = RunConfig.from_yaml(tmp_path / "run.yaml")
    assert cfg.data["path"] == "json" and cfg.data["data_files"] == {"train": [str(file)]}
    before = cfg.input_digests()
    assert before["data.path"] == "builder:json" and set(before) == {"data.path", "data.data_files.train[0]"}
    file.write_text(file.read_text() + json.dumps({"text": "an edit in place"}) + "\n")
    assert cfg.input_digests()["data.data_files.train[0]"] != before["data.data_files.train[0]"]
