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
    from ktransfer.checks import preflight

    with pytest.raises(ConfigError, match=r"teacher\.k: the store at .* holds all class logits \(kind logits\)"):
        preflight(RunConfig.from_dict(digits_config(digits_models, teacher={"store": str(tmp_path / "store"), "k": 3})))


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


# ------------------------------------------------------------------------------------ sequences (tiny Llama)
from test_causal import corpus  # noqa: E402, F401  (a fixture: a word-level text corpus and its tokenizer)


@pytest.fixture(scope="module")
def llama_models(corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Fixed initial weights for a tiny Llama teacher (2 layers) and student (1 layer) on the corpus' vocabulary."""
    from ktransfer.building import build_model, load_data

    folder = tmp_path_factory.mktemp("llama_models")
    info = load_data(RunConfig.from_dict(llama_config(corpus, {"teacher": "-", "student": "-"}))).info
    torch.manual_seed(3)
    save_weights(build_model(TEACHER_LLAMA, info, "teacher"), folder / "t.safetensors")
    save_weights(build_model(STUDENT_LLAMA, info, "student"), folder / "s.safetensors")
    return {"teacher": str(folder / "t.safetensors"), "student": str(folder / "s.safetensors")}


TEACHER_LLAMA = {"builder": "llama_student", "hidden_size": 32, "num_layers": 2, "num_heads": 2}
STUDENT_LLAMA = {"builder": "llama_student", "hidden_size": 16, "num_layers": 1, "num_heads": 2}


def llama_config(corpus: dict[str, Path], models: dict[str, str], **changes: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "task": "causal_lm",
        "data": {"name": "text_corpus", "path": str(corpus["lines"]), "tokenizer": str(corpus["tokenizer"]),
                 "max_length": 10, "prompt_length": 3, "val_fraction": 0.2, "test_fraction": 0.2},
        "teacher": {**TEACHER_LLAMA, **({"weights": models["teacher"]} if models["teacher"] != "-" else {})},
        "student": {**STUDENT_LLAMA, **({"weights": models["student"]} if models["student"] != "-" else {})},
        "knowledge": [{"type": "response", "divergence": "forward_kl", "temperature": 2.0, "weight": 0.5},
                      {"type": "labels", "weight": 0.5}],
        "optim": {"lr": 0.003},
        "train": {"max_steps": 4, "batch_size": 4, "eval_every": 4, "log_every": 1, "metric": "perplexity", "seed": 0},
    }
    cfg.update(changes)
    return cfg


def test_sequence_store_with_k_equal_to_the_vocabulary_trains_exactly_as_the_live_teacher(
        corpus: dict[str, Path], llama_models: dict[str, str], tmp_path: Path) -> None:
    from ktransfer.runner import run

    live = llama_config(corpus, llama_models)
    vocab = 2 + 30 * 12
    build_store(RunConfig.from_dict(live), tmp_path / "store", k=vocab, shard_size=5, batch_size=3)
    store = TeacherStore.open(tmp_path / "store")
    assert store.kind == "topk" and store.manifest["k"] == store.manifest["vocab_size"] == vocab
    ids, logprobs, tail = store.topk(0)
    assert ids.shape == logprobs.shape and ids.shape[1] == vocab and bool(torch.isneginf(tail).all())
    run(RunConfig.from_dict(live), tmp_path / "live", progress=False)
    stored = llama_config(corpus, llama_models, teacher={"store": str(tmp_path / "store")})
    result = run(RunConfig.from_dict(stored), tmp_path / "stored", progress=False)
    assert result.train.step == 4 and result.teacher_parameters is None
    diff = _max_diff(tmp_path / "live" / "final" / "model.safetensors", tmp_path / "stored" / "final" / "model.safetensors")
    assert diff < 1e-5
    assert _max_diff(tmp_path / "stored" / "final" / "model.safetensors", Path(llama_models["student"])) > 1e-4


@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
def test_sequence_store_with_small_k_trains_on_the_sparse_divergence_float64_reference(
        corpus: dict[str, Path], llama_models: dict[str, str], tmp_path: Path, tail: str) -> None:
    from ktransfer.building import build_model, load_data
    from ktransfer.runner import run

    live = llama_config(corpus, llama_models)
    build_store(RunConfig.from_dict(live), tmp_path / "store", k=4, values="float16", shard_size=4)
    data = load_data(RunConfig.from_dict(live))
    n = len(data.train)
    stored = llama_config(corpus, llama_models, teacher={"store": str(tmp_path / "store")},
                          knowledge=[{"type": "response", "divergence": "forward_kl", "temperature": 2.0, "tail": tail}])
    stored["train"] = {**stored["train"], "batch_size": n, "max_steps": 1}  # one step over every example
    run(RunConfig.from_dict(stored), tmp_path / "run", progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = next(r for r in records if r.get("split") == "train")["terms"]["response"]
    # reference: the initial student and the teacher in float64 over the whole training split
    batch = data.collate_fn([data.train[i] for i in range(n)])
    models = {}
    for role, spec in (("teacher", live["teacher"]), ("student", live["student"])):
        models[role] = build_model(spec, data.info, role).double().eval()
    with torch.no_grad():
        s = models["student"](input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        t = models["teacher"](input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    mask = batch["labels"][:, 1:] != -100
    top = SparseTeacher.from_logits(t, 4)
    half = SparseTeacher(top.ids, top.logprobs.half().double(), top.tail_logprob, mass_tolerance=2e-2)
    expected = float(sparse_forward_kl(s, half, tail=tail, temperature=2.0, mask=mask))
    assert abs(logged - expected) < 1e-3 * max(1.0, abs(expected))
    dense = float(torch.nn.functional.kl_div(torch.log_softmax(s / 2, -1)[mask], torch.log_softmax(t / 2, -1)[mask],
                                             log_target=True, reduction="sum")) / int(mask.sum())
    assert abs(logged - dense) > 1e-3  # k = 4 of 362 tokens is not the dense loss


def test_a_store_read_at_a_smaller_k_trains_as_a_store_built_at_that_k(
        corpus: dict[str, Path], llama_models: dict[str, str], tmp_path: Path) -> None:
    """`teacher: {store: DIR, k: 4}` on a store built at k = 16 gives the top 4 and the tail a build at k = 4
    writes, so the run trains to the same weights; a k above the stored one, or on a store of class logits, is
    refused before training, naming what the store holds."""
    from ktransfer.checks import preflight
    from ktransfer.runner import run

    live = llama_config(corpus, llama_models)
    build_store(RunConfig.from_dict(live), tmp_path / "k16", k=16, shard_size=5)
    build_store(RunConfig.from_dict(live), tmp_path / "k4", k=4, shard_size=5)
    wide, native = TeacherStore.open(tmp_path / "k16").narrowed(4), TeacherStore.open(tmp_path / "k4")
    assert wide.k == 4 and native.k == 4 and wide.manifest["k"] == 16
    for index in (0, 3):
        (ids, lp, tail), (n_ids, n_lp, n_tail) = wide.topk(index), native.topk(index)
        assert torch.equal(ids, n_ids) and float((lp - n_lp).abs().max()) < 1e-6
        assert float((tail - n_tail).abs().max()) < 1e-5
    knowledge = [{"type": "response", "divergence": "forward_kl", "tail": "bucket", "weight": 1.0}]
    for name, teacher in (("read", {"store": str(tmp_path / "k16"), "k": 4}), ("built", {"store": str(tmp_path / "k4")}),
                          ("wide", {"store": str(tmp_path / "k16")})):
        run(RunConfig.from_dict(llama_config(corpus, llama_models, teacher=teacher, knowledge=knowledge)),
            tmp_path / name, progress=False)
    final = {n: tmp_path / n / "final" / "model.safetensors" for n in ("read", "built", "wide")}
    assert _max_diff(final["read"], final["built"]) < 1e-5
    assert _max_diff(final["read"], final["wide"]) > 1e-4  # k = 4 is not k = 16
    too_many = llama_config(corpus, llama_models, teacher={"store": str(tmp_path / "k16"), "k": 17}, knowledge=knowledge)
    with pytest.raises(ConfigError, match=r"teacher\.k: the store at .*k16 holds the top 16 per position, so it can "
                                          r"be read at k from 1 to 16; got 17"):
        preflight(RunConfig.from_dict(too_many))


@pytest.mark.parametrize("source", ["store", "live"])
def test_label_weight_trains_as_a_response_and_a_labels_term(
        corpus: dict[str, Path], llama_models: dict[str, str], tmp_path: Path, source: str) -> None:
    """One response term with label_weight = a response term plus a labels term of the same weights."""
    from ktransfer.runner import run

    live = llama_config(corpus, llama_models)
    teacher: Any = live["teacher"]
    if source == "store":
        build_store(RunConfig.from_dict(live), tmp_path / "store", k=8, shard_size=5)
        teacher = {"store": str(tmp_path / "store")}
    response = {"type": "response", "divergence": "forward_kl", "weight": 0.5}
    two = llama_config(corpus, llama_models, teacher=teacher,
                       knowledge=[response, {"type": "labels", "weight": 0.5 * 0.3}])
    one = llama_config(corpus, llama_models, teacher=teacher, knowledge=[{**response, "label_weight": 0.3}])
    run(RunConfig.from_dict(two), tmp_path / "two", progress=False)
    run(RunConfig.from_dict(one), tmp_path / "one", progress=False)
    final = [tmp_path / name / "final" / "model.safetensors" for name in ("one", "two")]
    assert _max_diff(*final) < 1e-5
    assert _max_diff(final[0], Path(llama_models["student"])) > 1e-4
    without = llama_config(corpus, llama_models, teacher=teacher, knowledge=[response])
    run(RunConfig.from_dict(without), tmp_path / "without", progress=False)
    assert _max_diff(final[0], tmp_path / "without" / "final" / "model.safetensors") > 1e-4  # the labels count


def test_sequence_store_of_another_tokenizer_is_refused_naming_it(corpus: dict[str, Path], llama_models: dict[str, str],
                                                                 tmp_path: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    from ktransfer.checks import preflight
    from test_causal import N_DOCS, doc_words, word_tokenizer_file

    build_store(RunConfig.from_dict(llama_config(corpus, llama_models)), tmp_path / "store", k=8, shard_size=8)
    words = [w for i in reversed(range(N_DOCS)) for w in doc_words(i)]  # the same words, other ids
    other = PreTrainedTokenizerFast(tokenizer_file=str(word_tokenizer_file(tmp_path, words)), eos_token="<eos>",
                                    pad_token="<pad>")
    other.save_pretrained(tmp_path / "other_tok")
    cfg = llama_config(corpus, llama_models, teacher={"store": str(tmp_path / "store")})
    assert preflight(RunConfig.from_dict(cfg)).checked
    cfg["data"] = {**cfg["data"], "tokenizer": str(tmp_path / "other_tok")}
    with pytest.raises(ConfigError, match="teacher.store: .*built on the tokens of another tokenizer"):
        preflight(RunConfig.from_dict(cfg))


def test_store_config_is_validated() -> None:
    base = {"task": "classification", "data": {"name": "digits"}, "student": {"builder": "mlp"},
            "knowledge": [{"type": "response"}]}
    assert RunConfig.from_dict({**base, "teacher": {"store": "s"}}).teacher_model is None
    with pytest.raises(ConfigError, match=r"teacher\.builder: not allowed with 'store' \(valid keys: store, sha256, k\)"):
        RunConfig.from_dict({**base, "teacher": {"store": "s", "builder": "mlp"}})
    with pytest.raises(ConfigError, match=r"teacher\.sha256: expected the 64 hex digits"):
        RunConfig.from_dict({**base, "teacher": {"store": "s", "sha256": "abc"}})
    for bad in (0, -3, 2.5, True, "8"):
        with pytest.raises(ConfigError, match=r"teacher\.k: expected a whole number >= 1 \(read the store's top k"):
            RunConfig.from_dict({**base, "teacher": {"store": "s", "k": bad}})
    with pytest.raises(ConfigError, match=r"student\.store: only the teacher section"):
        RunConfig.from_dict({**base, "student": {"store": "s"}})
    feature = [{"type": "feature", "path": "net.0"}]  # checked against the store's captures when the run starts
    assert RunConfig.from_dict({**base, "teacher": {"store": "s"}, "knowledge": feature}).teacher_store.endswith("s")
    causal = {**base, "task": "causal_lm", "data": {"name": "text_corpus", "path": "x"}, "teacher": {"store": "s"}}
    with pytest.raises(ConfigError, match=r"terms \['on_policy'\] need the teacher model \(its generations\); "
                                          r"teacher\.store provides its output distribution"):
        RunConfig.from_dict({**causal, "knowledge": [{"type": "on_policy"}]})
    with pytest.raises(FileNotFoundError, match="teacher.store: no teacher output store at .*ktransfer teacher-outputs build"):
        from ktransfer.checks import check_sources

        check_sources(RunConfig.from_dict({**base, "teacher": {"store": "/nonexistent/store"}}))


def test_writer_checks_what_a_script_adds_and_the_reader_gives_it_back(tmp_path: Path) -> None:
    writer = StoreWriter(tmp_path / "s", kind="topk", task="causal_lm", examples=3, teacher="served-model-v1",
                         data="d" * 64, k=2, vocab_size=70000, values="float16", shard_size=2)
    lp = torch.log(torch.tensor([[0.5, 0.25], [0.9, 0.05]]))
    writer.add(0, ids=torch.tensor([[66000, 3], [1, 2]]), logprobs=lp)  # tail derived: log(0.25), log(0.05)
    with pytest.raises(ValueError, match=r"example 1: token ids must lie in \[0, 70000\)"):
        writer.add(1, ids=torch.tensor([[70000, 3]]), logprobs=lp[:1])
    with pytest.raises(ValueError, match=r"example 1: .*mass at position \(0,\) is 1\.49"):
        writer.add(1, ids=torch.tensor([[4, 3]]), logprobs=torch.log(torch.tensor([[1.0, 0.5]])))
    with pytest.raises(ValueError, match=r"shape \(positions, k=2\)"):
        writer.add(1, ids=torch.tensor([4, 3]), logprobs=torch.tensor([-1.0, -2.0]))
    writer.add(1, ids=torch.zeros(0, 2, dtype=torch.long), logprobs=torch.zeros(0, 2))  # no target positions
    assert writer.missing() == [2] and (tmp_path / "s" / "shard-00000.safetensors").is_file()
    with pytest.raises(StoreError, match="1 example.s. were never added"):
        writer.close()
    writer.add(2, ids=torch.tensor([[7, 8]]), logprobs=torch.log(torch.tensor([[0.6, 0.4]])),
               tail=torch.tensor([-math.inf]))
    writer.close()
    store = TeacherStore.open(tmp_path / "s")
    ids, logprobs, tail = store.topk(0)
    assert ids.tolist() == [[66000, 3], [1, 2]] and ids.dtype == torch.int64
    assert torch.allclose(logprobs, lp, atol=1e-3) and torch.allclose(tail.exp(), torch.tensor([0.25, 0.05]), atol=1e-3)
    assert store.topk(1)[0].shape == (0, 2) and store.keys["teacher"] == "served-model-v1"
    assert store.positions == 3  # 2 + 0 + 1 target positions
    with pytest.raises(StoreError, match="example 3 is not in the store"):
        store.topk(3)
    with pytest.raises(StoreError, match=r"made from something else \(keys.teacher: store 'served-model-v1', now 'other'\)"):
        StoreWriter(tmp_path / "s", kind="topk", task="causal_lm", examples=3, teacher="other", data="d" * 64, k=2,
                    vocab_size=70000, values="float16", shard_size=2)


def test_cli_builds_and_describes_a_store(digits_models: dict[str, str], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from ktransfer.cli import main

    config = tmp_path / "live.yaml"
    config.write_text(yaml.safe_dump(digits_config(digits_models)))
    assert main(["teacher-outputs", "build", str(config), "--out", str(tmp_path / "store"), "--values", "float16"]) == 0
    assert "1167 of 1167 examples computed" in capsys.readouterr().out
    assert main(["teacher-outputs", "info", str(tmp_path / "store")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "logits" and info["values"] == "float16" and info["examples"] == 1167
    assert info["bytes_per_example"] < 10 * 2 + 4  # 10 half-precision logits and the shard's header share
    (tmp_path / "store" / "shard-00000.safetensors").write_bytes(b"damaged")
    assert main(["teacher-outputs", "info", str(tmp_path / "store")]) == 2
    assert "shard-00000.safetensors: shard damaged" in capsys.readouterr().err


def test_example_script_writes_a_scikit_learn_teachers_outputs_and_trains_from_them(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(root / "examples" / "store_from_topk_api.py"), "--steps", "60",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    accuracy = float(done.stdout.split("student trained from the store at ")[1].split("test accuracy ")[1].split(" %")[0])
    assert accuracy > 50.0  # 10 classes: chance is about 10 %
    store = TeacherStore.open(tmp_path / "out" / "store")
    assert store.kind == "logits" and store.keys["teacher"].startswith("sklearn LogisticRegression")


def test_a_run_from_a_store_killed_and_resumed_ends_as_the_uninterrupted_run(digits_models: dict[str, str],
                                                                             tmp_path: Path) -> None:
    from ktransfer.runner import resume, run

    build_store(RunConfig.from_dict(digits_config(digits_models)), tmp_path / "store", shard_size=600)
    cfg = digits_config(digits_models, teacher={"store": str(tmp_path / "store")})
    cfg["train"] = {**cfg["train"], "checkpoint_every": 2}
    run(RunConfig.from_dict(cfg), tmp_path / "whole", progress=False)
    run(RunConfig.from_dict(cfg), tmp_path / "cut", progress=False, stop_after_steps=4)
    assert resume(tmp_path / "cut", progress=False).train.step == 6
    assert _max_diff(tmp_path / "whole" / "final" / "model.safetensors", tmp_path / "cut" / "final" / "model.safetensors") == 0.0


def test_a_written_store_whose_positions_do_not_fit_the_batch_is_refused_naming_the_example(
        corpus: dict[str, Path], llama_models: dict[str, str], tmp_path: Path) -> None:
    from ktransfer.runner import run

    live = llama_config(corpus, llama_models)
    build_store(RunConfig.from_dict(live), tmp_path / "good", k=4, shard_size=100)
    good = TeacherStore.open(tmp_path / "good")
    m = good.manifest
    writer = StoreWriter(tmp_path / "short", kind="topk", task="causal_lm", examples=good.examples, teacher="t",
                         data=good.keys["data"], tokenizer=good.keys["tokenizer"], k=4, vocab_size=m["vocab_size"])
    for i in range(good.examples):
        ids, logprobs, tail = good.topk(i)
        cut = 1 if i == 5 else 0  # example 5 loses its last position
        writer.add(i, ids=ids[: len(ids) - cut], logprobs=logprobs[: len(ids) - cut], tail=tail[: len(ids) - cut])
    writer.close()
    cfg = llama_config(corpus, llama_models, teacher={"store": str(tmp_path / "short")})
    cfg["train"] = {**cfg["train"], "batch_size": good.examples, "max_steps": 1}
    n = len(good.topk(5)[0])
    with pytest.raises(StoreError, match=rf"example 5 has {n - 1} stored target positions, but the batch gives it {n}"):
        run(RunConfig.from_dict(cfg), tmp_path / "run", progress=False)


def test_cli_builds_a_fit_store_that_decodes_near_the_float32_store_and_trains(
        corpus: dict[str, Path], llama_models: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ktransfer.cli import main
    from ktransfer.runner import run

    live = llama_config(corpus, llama_models)
    config = tmp_path / "live.yaml"
    config.write_text(yaml.safe_dump(live))
    assert main(["teacher-outputs", "build", str(config), "--out", str(tmp_path / "fit"), "--k", "16",
                 "--values", "fit", "--fit-degree", "3", "--shard-size", "8"]) == 0
    capsys.readouterr()
    assert main(["teacher-outputs", "info", str(tmp_path / "fit")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["values"] == "fit" and info["fit_degree"] == 3
    build_store(RunConfig.from_dict(live), tmp_path / "f32", k=16, shard_size=8)
    fit, f32 = TeacherStore.open(tmp_path / "fit"), TeacherStore.open(tmp_path / "f32")
    assert fit.bytes_per_position() < f32.bytes_per_position()
    for i in range(fit.examples):
        (ids, lp, tail), (ids32, lp32, tail32) = fit.topk(i), f32.topk(i)
        assert torch.equal(ids, ids32)
        torch.testing.assert_close(tail, tail32, rtol=2e-3, atol=2e-3)
        distance = (lp.exp() - lp32.exp()).abs().sum(-1)  # total variation of the fit within the top-k, x2
        assert distance.numel() == 0 or float(distance.max()) < 0.1
    stored = llama_config(corpus, llama_models, teacher={"store": str(tmp_path / "fit")})
    stored["train"] = {**stored["train"], "max_steps": 2}
    assert run(RunConfig.from_dict(stored), tmp_path / "run", progress=False).train.step == 2


def test_built_store_equals_the_float64_top_k_of_the_teachers_logits(corpus: dict[str, Path], llama_models: dict[str, str],
                                                                     tmp_path: Path) -> None:
    """Every stored position against log_softmax in float64 of the same float32 teacher logits, its top-k and the
    summed probability of the other tokens (the definition the build's one-pass computation must reproduce)."""
    from ktransfer.building import build_model, load_data
    from ktransfer.tasks import Task

    live = llama_config(corpus, llama_models)
    build_store(RunConfig.from_dict(live), tmp_path / "store", k=8, shard_size=4, batch_size=3)
    store = TeacherStore.open(tmp_path / "store")
    data = load_data(RunConfig.from_dict(live))
    teacher = build_model(live["teacher"], data.info, "teacher").eval()
    task = Task("causal_lm")
    for i in range(store.examples):
        with torch.no_grad():
            out = task.forward(teacher, data.collate_fn([data.train[i]]))
        logp = torch.log_softmax(out.logits[out.mask].double(), -1)
        want_lp, want_ids = logp.topk(8, -1)
        rest = logp.exp().scatter(-1, want_ids, 0.0).sum(-1).log()
        ids, lp, tail = store.topk(i)
        assert torch.equal(ids, want_ids)
        torch.testing.assert_close(lp.double(), want_lp, rtol=0, atol=2e-6)
        torch.testing.assert_close(tail.double(), rest, rtol=0, atol=2e-6)


def test_sequence_store_with_hidden_states_trains_a_projected_feature_term_as_the_live_teacher(
        corpus: dict[str, Path], llama_models: dict[str, str], tmp_path: Path) -> None:
    from ktransfer.runner import run

    knowledge = [{"type": "response", "divergence": "forward_kl", "weight": 0.5},
                 {"type": "feature", "weight": 1.0}, {"type": "labels", "weight": 0.5}]  # widths 16 -> 32: a projection
    live = llama_config(corpus, llama_models, knowledge=knowledge)
    vocab = 2 + 30 * 12
    build_store(RunConfig.from_dict(live), tmp_path / "store", k=vocab, shard_size=5, batch_size=3,
                hidden=["model.layers.1"], feature_values="float32")
    run(RunConfig.from_dict(live), tmp_path / "live", progress=False)
    stored = llama_config(corpus, llama_models, knowledge=knowledge, teacher={"store": str(tmp_path / "store")})
    assert run(RunConfig.from_dict(stored), tmp_path / "stored", progress=False).train.step == 4
    for name in ("model.safetensors", "terms.safetensors"):
        assert _max_diff(tmp_path / "live" / "final" / name, tmp_path / "stored" / "final" / name) < 1e-5
    assert _max_diff(tmp_path / "stored" / "final" / "model.safetensors", Path(llama_models["student"])) > 1e-4
