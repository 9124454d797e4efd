"""Offline datasets (splits, no leakage) and model builders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ktransfer.data import DATASETS, TensorDictDataset, collate_dicts
from ktransfer.models import MODELS, count_parameters
from ktransfer.registry import ConfigError


def rows(ds: TensorDictDataset) -> set[bytes]:
    return {x.numpy().tobytes() for x in ds.tensors["inputs"]}


def test_digits_splits_are_disjoint_stratified_and_seeded() -> None:
    d = DATASETS.build("digits", {}, "data")
    sizes = d.info["sizes"]
    assert sizes["train"] + sizes["val"] + sizes["test"] == 1797
    assert sizes["test"] == 360 and d.info["num_classes"] == 10 and d.info["num_features"] == 64
    # digits has a few duplicate images; disjointness is checked by index-free content on the split level
    assert len(rows(d.train) & rows(d.test)) <= 5
    for split in (d.train, d.val, d.test):
        counts = np.bincount(split.tensors["labels"].numpy(), minlength=10) / len(split)
        assert counts.min() > 0.07 and counts.max() < 0.13  # stratified: ~10% per class
    again = DATASETS.build("digits", {}, "data")
    assert torch.equal(again.test.tensors["inputs"], d.test.tensors["inputs"])
    other = DATASETS.build("digits", {"split_seed": 1}, "data")
    assert not torch.equal(other.test.tensors["inputs"], d.test.tensors["inputs"])


def test_standardisation_uses_training_statistics_only() -> None:
    d = DATASETS.build("digits", {}, "data")
    x = d.train.tensors["inputs"]
    torch.testing.assert_close(x.mean(0), torch.zeros(64), atol=1e-4, rtol=0)
    assert abs(float(d.test.tensors["inputs"].mean())) > 1e-4  # test statistics were not used


def test_bad_split_fractions() -> None:
    with pytest.raises(ConfigError, match="val_fraction must be in"):
        DATASETS.build("digits", {"val_fraction": 0.0}, "data")
    with pytest.raises(ConfigError, match="must be < 1"):
        DATASETS.build("digits", {"val_fraction": 0.6, "test_fraction": 0.5}, "data")


def test_other_bundled_datasets() -> None:
    wine = DATASETS.build("wine", {}, "data")
    assert wine.info["num_classes"] == 3 and wine.info["num_features"] == 13


def test_tensor_dict_dataset_and_collate() -> None:
    ds = TensorDictDataset(inputs=torch.arange(6.0).reshape(3, 2), labels=torch.tensor([0, 1, 0]))
    batch = collate_dicts([ds[0], ds[2]])
    assert batch["inputs"].tolist() == [[0.0, 1.0], [4.0, 5.0]] and batch["labels"].tolist() == [0, 0]
    with pytest.raises(ValueError, match="same length"):
        TensorDictDataset(inputs=torch.zeros(3, 2), labels=torch.zeros(2))


def test_model_builders() -> None:
    mlp = MODELS.build("mlp", {"in_features": 64, "num_classes": 10, "hidden": [32]})
    assert mlp(torch.randn(5, 64)).shape == (5, 10)
    assert count_parameters(mlp) == 64 * 32 + 32 + 32 * 10 + 10
    cnn = MODELS.build("cnn", {"in_features": 64, "num_classes": 10})
    assert cnn(torch.randn(5, 64)).shape == (5, 10)
    with pytest.raises(ConfigError, match="not a square"):
        MODELS.build("cnn", {"in_features": 60, "num_classes": 10})


def test_hf_config_builder_makes_a_tiny_random_model_offline() -> None:
    model = MODELS.build("hf_config", {"model_type": "gpt2", "config": {"n_layer": 1, "n_embd": 8, "n_head": 2,
                                                                        "vocab_size": 30, "n_positions": 16}})
    out = model(input_ids=torch.randint(0, 30, (2, 5)))
    assert out.logits.shape == (2, 5, 30)
    with pytest.raises(ConfigError, match="unknown auto_class"):
        MODELS.build("hf_config", {"model_type": "gpt2", "auto_class": "AutoModelForMagic"})


def test_hf_pretrained_missing_directory() -> None:
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        MODELS.build("hf_pretrained", {"path": "/nonexistent/model"})


def test_hf_pretrained_loads_a_local_directory(tmp_path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    original = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=30, n_positions=16))
    original.save_pretrained(tmp_path / "tiny")
    loaded = MODELS.build("hf_pretrained", {"path": str(tmp_path / "tiny")})
    ids = torch.randint(0, 30, (2, 5))
    original.eval()
    loaded.eval()
    torch.testing.assert_close(loaded(input_ids=ids).logits, original(input_ids=ids).logits)


@pytest.mark.parametrize(("content", "message"), [
    (b"a,b,y\n1,2,x\n3,nan,z\n", r"t.csv line 3, column 'b': 'nan' is not a finite number"),
    (b"a,b,y\n1,2,x\n3,-inf,z\n", r"t.csv line 3, column 'b': '-inf' is not a finite number"),
    (b"a,b,y\n1,2,x\n3,,z\n", r"t.csv line 3, column 'b': not a number: ''"),
    (b"a,b,y\n1,2,x\n3,4,\n", r"t.csv line 3, column 'y' \(the label\): an empty cell"),
    (b"a,b,y\n1,2,x\n3,4,NaN\n", r"t.csv line 3, column 'y' \(the label\): 'NaN', a missing-value marker"),
    (b"a,b,y\n1,2,x\n3,4,\xe9\n", r"t.csv line 3, column 5: not valid UTF-8"),
    (b"", r"t.csv: the file is empty"),
    (b"a,b,y\n", r"t.csv: no rows after the header"),
])
def test_tabular_csv_names_the_line_and_column_of_bad_cells(tmp_path, content: bytes, message: str) -> None:
    file = tmp_path / "t.csv"
    file.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        DATASETS.build("csv", {"path": str(file), "label": "y"})
