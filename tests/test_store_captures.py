"""A store holding the teacher's hidden states and attention maps: feature, relation and attention terms
train from it as from the live teacher; what it lacks, or a damaged shard, is refused before training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from ktransfer.config import RunConfig
from ktransfer.registry import ConfigError
from ktransfer.store import StoreError, TeacherStore
from ktransfer.store.build import build_store

HIDDEN = ["bert.encoder.layer.1", "bert.encoder.layer.3", "bert.encoder.layer.3.attention.self.value"]
ATTENTIONS = ["bert.encoder.layer.1.attention.self", "bert.encoder.layer.3.attention.self"]
TERMS: dict[str, dict[str, Any]] = {  # a 2-layer student of a 4-layer teacher: uniform maps layers 0, 1 to 1, 3
    "feature": {"type": "feature", "layer_map": "uniform", "loss": "mse", "weight": 1.0},
    "relation": {"type": "relation", "variant": "token", "path": "attention.self.value", "relation_heads": 2,
                 "layer_map": "last", "weight": 1.0},
    "attention": {"type": "attention", "layer_map": "uniform", "path": "attention.self", "weight": 1.0},
}


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 4-layer BERT (width 16, 2 heads, 3 classes) with its WordPiece tokenizer, and a CSV of texts of many lengths."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-encoder")
    words = ["good", "bad", "the", "film", "was", "very", "not", "great", "awful", "plot", "and", "actors"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator([" ".join(words)] * 20, trainers.WordPieceTrainer(
        vocab_size=80, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    fast = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(folder / "model")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(fast), hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, num_labels=3)
    BertForSequenceClassification(config).save_pretrained(folder / "model")
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(60):
        n = int(torch.randint(1, 12, (1,), generator=g))
        text = " ".join(words[int(j)] for j in torch.randint(len(words), (n,), generator=g))
        rows.append(f"{text},{['pos', 'neg', 'mixed'][i % 3]}\n")
    (folder / "reviews.csv").write_text("text,label\n" + "".join(rows))
    return {"model": folder / "model", "csv": folder / "reviews.csv"}


def config(encoder: dict[str, Path], terms: list[str], store: Path | None = None, **train: Any) -> dict[str, Any]:
    return {
        "task": "classification",
        "data": {"name": "text_csv", "path": str(encoder["csv"]), "tokenizer": str(encoder["model"]), "max_length": 16,
                 "split_seed": 0},
        "teacher": {"store": str(store)} if store else {"builder": "minilm", "path": str(encoder["model"])},
        "student": {"builder": "minilm_student", "num_layers": 2, "path": str(encoder["model"])},
        "knowledge": [{**TERMS[t], "name": t} for t in terms] + [{"type": "labels", "weight": 0.5}],
        "optim": {"name": "sgd", "lr": 0.5},  # plain gradient steps: weights differ as the gradients do
        "train": {"max_steps": 4, "batch_size": 8, "eval_every": 4, "log_every": 1, "seed": 0, **train},
    }


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "final" / "model.safetensors"))


def _max_diff(a: Path, b: Path) -> float:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)


def _moved(a: Path, start: dict[str, torch.Tensor]) -> float:
    wa = _weights(a)
    return max(float((wa[k].double() - start[k].double()).abs().max()) for k in wa if k in start)


@pytest.fixture(scope="module")
def stores(encoder: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("stores")
    cfg = RunConfig.from_dict(config(encoder, ["feature"]))
    for values in ("float16", "float32"):
        build_store(cfg, folder / values, shard_size=16, batch_size=7, hidden=HIDDEN, attentions=ATTENTIONS,
                    feature_values=values)
    return {"float16": folder / "float16", "float32": folder / "float32"}


@pytest.fixture(scope="module")
def live_runs(encoder: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from ktransfer.runner import run

    folder = tmp_path_factory.mktemp("live")
    for term in TERMS:
        run(RunConfig.from_dict(config(encoder, [term])), folder / term, progress=False)
    return {term: folder / term for term in TERMS}


def test_the_store_holds_each_examples_own_positions_of_the_teachers_internals(
        encoder: dict[str, Path], stores: dict[str, Path]) -> None:
    from ktransfer.runner import build_model, load_data

    store = TeacherStore.open(stores["float32"])
    items = {i.key: i for i in store.capture_items}
    assert list(items) == [f"{n}:output" for n in HIDDEN + ATTENTIONS]
    assert [i.kind for i in items.values()] == ["hidden"] * 3 + ["attention"] * 2 and all(i.tokens for i in items.values())
    cfg = RunConfig.from_dict(config(encoder, ["feature"]))
    data = load_data(cfg)
    teacher = build_model(cfg.teacher, data.info, "teacher").double().eval()
    for index in (0, 5, 31):  # one example alone: no padding, float64
        row = data.train[index]
        ids = row["input_ids"][row["attention_mask"].bool()][None]
        with torch.no_grad():
            out = teacher(input_ids=ids, output_hidden_states=True, output_attentions=True)
        length = ids.shape[1]
        layer3 = store.capture(index, 1)
        assert layer3.shape == (length, 16)
        assert torch.allclose(layer3.double(), out.hidden_states[4][0], atol=1e-5)  # hidden_states[0]: embeddings
        attention1 = store.capture(index, 3)
        assert attention1.shape == (2, length, length)
        assert torch.allclose(attention1.double(), out.attentions[1][0], atol=1e-6)
    half = TeacherStore.open(stores["float16"])
    assert half.manifest["captures"]["values"] == "float16"
    assert torch.allclose(half.capture(5, 1), store.capture(5, 1), rtol=1e-3, atol=1e-3)
    assert half.capture(5, 1).dtype == torch.float32  # read back as float32 for the losses


@pytest.mark.parametrize("term", list(TERMS))
def test_a_term_trained_from_the_store_equals_the_run_with_the_live_teacher(
        term: str, encoder: dict[str, Path], stores: dict[str, Path], live_runs: dict[str, Path],
        tmp_path: Path) -> None:
    from ktransfer.runner import build_model, load_data, run

    exact = run(RunConfig.from_dict(config(encoder, [term], stores["float32"])), tmp_path / "f32", progress=False)
    assert exact.train.step == 4 and exact.teacher_parameters is None  # no teacher was built
    assert _max_diff(tmp_path / "f32", live_runs[term]) < 1e-5
    run(RunConfig.from_dict(config(encoder, [term], stores["float16"])), tmp_path / "f16", progress=False)
    cfg = RunConfig.from_dict(config(encoder, [term]))
    torch.manual_seed(0)
    start = build_model(cfg.student, load_data(cfg).info, "student").state_dict()
    moved = _moved(live_runs[term], start)
    assert moved > 1e-3  # training moved the weights ...
    assert _max_diff(tmp_path / "f16", live_runs[term]) < 0.02 * moved  # ... and float16 values barely change how
    losses = {}
    for name in ("f16", "live"):
        folder = tmp_path / name if name == "f16" else live_runs[term]
        losses[name] = [r["terms"][term] for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())
                        if r.get("split") == "train"]
    assert len(losses["f16"]) == 4 and losses["f16"] == pytest.approx(losses["live"], rel=2e-3, abs=1e-5)


def test_a_run_reading_a_capture_the_store_lacks_is_refused_before_training_naming_it(
        encoder: dict[str, Path], tmp_path: Path) -> None:
    from ktransfer.runner import run

    cfg = RunConfig.from_dict(config(encoder, ["feature"]))
    build_store(cfg, tmp_path / "one", shard_size=64, hidden=["bert.encoder.layer.3"])
    with pytest.raises(ConfigError, match=r"knowledge\[0\] \(feature\): reads the teacher's 'bert\.encoder\.layer\.1:"
                                          r"output', which the store at .* does not hold \(it holds: "
                                          r"bert\.encoder\.layer\.3:output\)"):
        run(RunConfig.from_dict(config(encoder, ["feature"], tmp_path / "one")), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    build_store(cfg, tmp_path / "outputs", shard_size=64)  # outputs only
    with pytest.raises(ConfigError, match=r"does not hold \(it holds: none, a store of outputs only\)"):
        run(RunConfig.from_dict(config(encoder, ["attention"], tmp_path / "outputs")), tmp_path / "run", progress=False)
    # the engine refuses it too, also for what a selector reads (here through the Python API)
    from ktransfer.runner import build_distiller

    with pytest.raises(StoreError, match=r"reads the teacher's 'bert\.pooler:output', which the store does not hold"):
        build_distiller(RunConfig.from_dict({**config(encoder, ["feature"], tmp_path / "one"), "knowledge": [
            {**TERMS["feature"], "layer_map": [[1, 3]], "name": "feature"}], "selector": {
                "type": "actor_critic", "teacher_representation": "bert.pooler", "student_representation": "bert.pooler",
        "heldout_examples": 8}}))


def test_bad_capture_requests_are_clear_errors(encoder: dict[str, Path], tmp_path: Path) -> None:
    cfg = RunConfig.from_dict(config(encoder, ["feature"]))
    with pytest.raises(ConfigError, match=r"teacher: unknown module name 'bert\.encoder\.layers\.1'.*Closest valid "
                                          r"names: 'bert\.encoder\.layer\.1'"):
        build_store(cfg, tmp_path / "s", hidden=["bert.encoder.layers.1"])
    with pytest.raises(ConfigError, match=r"module 'bert\.encoder\.layer\.1' is named twice \(as hidden and attention\)"):
        build_store(cfg, tmp_path / "s", hidden=["bert.encoder.layer.1"], attentions=["bert.encoder.layer.1"])
    with pytest.raises(ConfigError, match=r"teacher module 'bert\.encoder\.layer\.1\.output:output' gives no attention "
                                          r"maps"):
        build_store(cfg, tmp_path / "s", attentions=["bert.encoder.layer.1.output"])
    with pytest.raises(ConfigError, match=r"feature_values must be one of float32, float16, got 'int8'"):
        build_store(cfg, tmp_path / "s", hidden=["bert.encoder.layer.1"], feature_values="int8")
    with pytest.raises(ConfigError, match=r"hidden: expected a list of module names, got the string"):
        build_store(cfg, tmp_path / "s", hidden="bert.encoder.layer.1")
    with pytest.raises(ConfigError, match=r"'' names the whole model"):
        build_store(cfg, tmp_path / "s", hidden=[""])


def test_a_damaged_shard_of_a_store_with_captures_is_refused_and_rebuilt_alone(
        encoder: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ktransfer.cli import main

    live = tmp_path / "live.yaml"
    live.write_text(yaml.safe_dump(config(encoder, ["attention"])))
    assert main(["teacher-outputs", "build", str(live), "--out", str(tmp_path / "store"), "--shard-size", "16",
                 "--attentions", *ATTENTIONS, "--hidden", "bert.encoder.layer.1"]) == 0
    capsys.readouterr()
    assert main(["teacher-outputs", "info", str(tmp_path / "store")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["captures"] == {"bert.encoder.layer.1:output": "hidden", **{f"{a}:output": "attention" for a in ATTENTIONS}}
    assert info["capture_values"] == "float16"
    shard = tmp_path / "store" / "shard-00001.safetensors"
    good = shard.read_bytes()
    shard.write_bytes(good[:-8] + bytes(8))
    stored = config(encoder, ["attention"], tmp_path / "store")
    from ktransfer.runner import run

    with pytest.raises(ConfigError, match=r"shard-00001\.safetensors: shard damaged"):
        run(RunConfig.from_dict(stored), tmp_path / "run", progress=False)
    shard.unlink()
    report = build_store(RunConfig.from_dict(config(encoder, ["attention"])), tmp_path / "store", shard_size=16,
                         hidden=["bert.encoder.layer.1"], attentions=ATTENTIONS)
    assert report.computed == 16 and shard.read_bytes() == good
    assert run(RunConfig.from_dict(stored), tmp_path / "run", progress=False).train.step == 4


def test_the_store_can_capture_what_a_configs_terms_and_selector_read(encoder: dict[str, Path], tmp_path: Path) -> None:
    from ktransfer.runner import build_model, load_data
    from ktransfer.store.reads import captures_read_by

    cfg = RunConfig.from_dict({**config(encoder, list(TERMS)), "selector": {
        "type": "actor_critic", "teacher_representation": "bert.pooler", "student_representation": "bert.pooler",
        "heldout_examples": 8}})
    data = load_data(cfg)
    student, teacher = build_model(cfg.student, data.info, "student"), build_model(cfg.teacher, data.info, "teacher")
    hidden, attentions = captures_read_by(cfg.knowledge, cfg.selector, student, teacher)
    assert hidden == ["bert.encoder.layer.1", "bert.encoder.layer.3", "bert.encoder.layer.3.attention.self.value",
                      "bert.pooler"]
    assert attentions == ATTENTIONS
    build_store(cfg, tmp_path / "s", shard_size=64, captures_of_terms=True)
    keys = [i.key for i in TeacherStore.open(tmp_path / "s").capture_items]
    assert keys == [f"{n}:output" for n in hidden + attentions]
    from ktransfer.runner import run

    stored = {**config(encoder, list(TERMS), tmp_path / "s"), "selector": cfg.selector}
    assert run(RunConfig.from_dict(stored), tmp_path / "run", progress=False).train.step == 4
