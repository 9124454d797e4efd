"""A cross-tokenizer student from a teacher output store built on the teacher's own tokens.

The store holds the teacher's top-k, tail and next-token log-probabilities on its own positions. With
k = the teacher's vocabulary the `cross_tokenizer` loss from the store equals the live teacher's (span and
ULD, at T != 1); with a small k it follows the documented tail treatment, checked against float64
references written here from the live teacher's logits. A store on other tokens is refused by name.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from test_cross_tokenizer import SENTENCES, _reference_uld, xtok_config  # noqa: E402

from ktransfer.building import build_model, load_data  # noqa: E402
from ktransfer.checkpoint import save_weights  # noqa: E402
from ktransfer.config import RunConfig  # noqa: E402
from ktransfer.cross_tokenizer import CrossTokenizerTerm  # noqa: E402
from ktransfer.cross_tokenizer.sparse import TeacherTokensSparse  # noqa: E402
from ktransfer.engine.batches import split_batch  # noqa: E402
from ktransfer.knowledge.base import STORED_TEACHER_KEY, StepView  # noqa: E402
from ktransfer.registry import ConfigError  # noqa: E402
from ktransfer.store import IndexedCollate, IndexedDataset, StoreStage, StoreWriter, TeacherStore  # noqa: E402
from ktransfer.store.build import build_store  # noqa: E402
from ktransfer.tasks import Task  # noqa: E402

TEACHER = {"builder": "llama_student", "hidden_size": 16, "num_layers": 1, "num_heads": 2}
STUDENT = TEACHER  # the run's student section (xtok_config), given fixed initial weights here


def _bpe_folder(folder: Path, vocab: int) -> str:
    """A byte-level BPE of `vocab` tokens trained on the corpus' sentences, saved as a tokenizer folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(SENTENCES, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<pad>").save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A corpus, two teacher tokenizers (270 and 280 tokens) and fixed weights of a tiny teacher over the first."""
    root = tmp_path_factory.mktemp("xtok_store")
    corpus = root / "corpus.txt"
    lines = [f"{s} Line {i} ends here." for i, s in enumerate(SENTENCES * 2)]
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tok, other = _bpe_folder(root / "tok270", 270), _bpe_folder(root / "tok280", 280)
    info = load_data(RunConfig.from_dict(xtok_config(corpus, tok, TEACHER))).info
    torch.manual_seed(5)
    save_weights(build_model(TEACHER, info, "teacher"), root / "teacher.safetensors")
    save_weights(build_model(STUDENT, info, "student"), root / "student.safetensors")
    return {"root": root, "corpus": corpus, "tok": tok, "other": other, "vocab": int(info["teacher_vocab_size"]),
            "teacher": {**TEACHER, "weights": str(root / "teacher.safetensors")},
            "student": {**STUDENT, "weights": str(root / "student.safetensors")}}


def _config(setup: dict[str, Any], teacher: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
    cfg = xtok_config(setup["corpus"], setup["tok"], teacher or setup["teacher"], **changes)
    cfg["student"] = setup["student"]  # the same initial student with a live teacher and with a store
    return cfg


def _views(setup: dict[str, Any], store_dir: Path, n: int = 6) -> tuple[StepView, StepView]:
    """The same batch of the first `n` training blocks as seen with the live teacher (float32) and from the store,
    with a random student."""
    cfg = RunConfig.from_dict(_config(setup))
    data = load_data(cfg)
    collate = IndexedCollate(data.collate_fn)
    batch = collate([IndexedDataset(data.train)[i] for i in range(n)])
    ctx = type("Ctx", (), {"device": torch.device("cpu"), "task": Task("causal_lm")})()
    stored = StoreStage(TeacherStore.open(store_dir))(batch, ctx)
    plain = {k: v for k, v in stored.items() if k != STORED_TEACHER_KEY}
    student_batch, teacher_batch = split_batch(plain)
    teacher = build_model(setup["teacher"], data.info, "teacher").eval()
    student = build_model(cfg.student, data.info, "student").eval()
    task = Task("causal_lm")
    with torch.no_grad():
        t_out = task.forward(teacher, teacher_batch)
    s_out = task.forward(student, student_batch)
    assert isinstance(stored[STORED_TEACHER_KEY], TeacherTokensSparse)
    live = StepView(batch=plain, student=s_out, teacher=t_out)
    from_store = StepView(batch=plain, student=s_out, teacher=None, teacher_sparse=stored[STORED_TEACHER_KEY])
    return live, from_store


def _term(setup: dict[str, Any], **settings: Any) -> CrossTokenizerTerm:
    cfg = RunConfig.from_dict(_config(setup))
    term = CrossTokenizerTerm(**settings)
    term.bind_data(load_data(cfg).info)
    return term


@pytest.fixture(scope="module")
def full_store(setup: dict[str, Any]) -> Path:
    out = setup["root"] / "store_full"
    build_store(RunConfig.from_dict(_config(setup)), out, k=setup["vocab"], shard_size=8, batch_size=5)
    return out


@pytest.fixture(scope="module")
def small_store(setup: dict[str, Any]) -> Path:
    out = setup["root"] / "store_k5"
    build_store(RunConfig.from_dict(_config(setup)), out, k=5, shard_size=8)
    return out


def test_the_store_holds_the_teachers_positions_next_token_log_probs_and_keys(
        setup: dict[str, Any], full_store: Path) -> None:
    store = TeacherStore.open(full_store)
    m = store.manifest
    assert m["version"] == 3 and m["teacher_tokens"] is True and m["vocab_size"] == setup["vocab"]
    data = load_data(RunConfig.from_dict(_config(setup)))
    assert m["keys"]["teacher_tokenizer"] == data.info["teacher_tokenizer_sha256"]
    assert m["keys"]["tokenizer"] == data.info["tokenizer_sha256"]
    row = data.train[0]
    teacher = build_model(setup["teacher"], data.info, "teacher").eval().double()
    with torch.no_grad():
        logits = teacher(input_ids=row["teacher_input_ids"][None]).logits[0, :-1]
    lp = torch.log_softmax(logits, -1)
    ids, logprobs, tail = store.topk(0)
    assert ids.shape[0] == len(row["teacher_input_ids"]) - 1  # one row per teacher position with a target
    torch.testing.assert_close(logprobs.double(), lp.gather(-1, ids), atol=1e-5, rtol=0)
    want = lp.gather(-1, row["teacher_input_ids"][1:, None]).squeeze(-1)
    torch.testing.assert_close(store.next_logprobs(0).double(), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["span", "uld"])
def test_loss_from_a_store_with_k_equal_to_the_vocabulary_equals_the_live_teachers(
        setup: dict[str, Any], full_store: Path, method: str) -> None:
    live, from_store = _views(setup, full_store)
    settings: dict[str, Any] = {"method": method, "temperature": 1.7}
    if method == "span":
        settings.update(divergence="jsd", params={"beta": 0.3}, likelihood_weight=0.7)
    want = _term(setup, **settings).loss(live)
    term = _term(setup, **settings)
    got = term.loss(from_store)
    assert term.counts["spans_counted"] > 10
    want_value = float(want.detach())
    assert abs(float(got.detach()) - want_value) < 1e-5 * max(1.0, abs(want_value))
    got.backward()  # the gradient reaches the student
    assert from_store.student.logits.grad_fn is not None


@pytest.mark.parametrize(("values", "tolerance"), [("float16", 2e-3), ("fit", 5e-2)])
def test_reduced_precision_encodings_on_the_teachers_tokens_give_the_float32_stores_loss(
        setup: dict[str, Any], small_store: Path, values: str, tolerance: float) -> None:
    out = setup["root"] / f"store_k5_{values}"
    build_store(RunConfig.from_dict(_config(setup)), out, k=5, shard_size=8, values=values, fit_degree=3)
    reduced, exact = TeacherStore.open(out), TeacherStore.open(small_store)
    assert reduced.manifest["values"] == values and reduced.manifest["teacher_tokens"] is True
    torch.testing.assert_close(reduced.next_logprobs(0).float(), exact.next_logprobs(0).float(), atol=2e-3, rtol=0)
    assert not torch.equal(reduced.next_logprobs(0).float(), exact.next_logprobs(0).float())  # the encoding is lossy
    for method in ("span", "uld"):
        _, want_view = _views(setup, small_store)
        _, got_view = _views(setup, out)
        want = float(_term(setup, method=method).loss(want_view).detach())
        got = float(_term(setup, method=method).loss(got_view).detach())
        # not `got != want`: the span losses of a near-uniform teacher differ per span (1e-6 to 3e-5 with `fit`), and
        # their mean over the batch rounded to the same float32 value once
        assert abs(got - want) <= tolerance * max(1.0, abs(want)), (method, got, want)


def _spans(term: CrossTokenizerTerm, view: StepView) -> dict[str, torch.Tensor]:
    index = term._gather(view)
    assert index is not None
    return index


@pytest.mark.parametrize("method", ["span", "uld"])
def test_loss_from_a_small_k_store_follows_the_documented_tail_treatment(
        setup: dict[str, Any], small_store: Path, method: str) -> None:
    """k = 5 of 270: float64 references from the live teacher's logits: the tail's mass to the rest bucket
    (span) or spread evenly past the sorted top-k (ULD), tempered as a uniform tail."""
    live, from_store = _views(setup, small_store)
    T, k, V = 1.5, 5, setup["vocab"]
    settings: dict[str, Any] = {"method": method, "temperature": T}
    term = _term(setup, **settings)
    got = float(term.loss(from_store).detach())
    assert math.isfinite(got)
    index = _spans(_term(setup, **settings), live)
    t_logits = live.teacher.logits.double()  # type: ignore[union-attr]
    s_logits = live.student.logits.detach().double()
    values = []
    mapping = term.mapping() if method == "span" else None
    for n in range(index["b"].numel()):
        b, s, t = int(index["b"][n]), int(index["s"][n]), int(index["t"][n])
        p = torch.softmax(t_logits[b, t], -1).tolist()
        top = sorted(range(V), key=lambda i: -p[i])[:k]
        tail = 1.0 - sum(p[i] for i in top)
        kept = [p[i] ** (1 / T) for i in top]
        rest = (V - k) * (tail / (V - k)) ** (1 / T)
        z = sum(kept) + rest
        kept, rest = [x / z for x in kept], rest / z
        q = torch.softmax(s_logits[b, s] / T, -1).tolist()
        if method == "uld":
            values.append(_reference_uld(kept + [rest / (V - k)] * (V - k), q))
            continue
        assert mapping is not None
        n_b = mapping.shared + 1
        pb, qb = [0.0] * n_b, [0.0] * n_b
        for i, x in zip(top, kept):
            pb[int(mapping.teacher_bucket[i])] += x
        pb[-1] += rest
        for i, x in enumerate(q):
            qb[int(mapping.student_bucket[i]) if i < mapping.student_bucket.numel() else -1] += x
        kl = sum(a * (math.log(a) - math.log(max(c, 1e-300))) for a, c in zip(pb, qb) if a > 0)
        # span likelihood: the teacher's tempered next-token probabilities over the span's tokens, against the student's
        t_lp = s_lp = 0.0
        for j in range(int(index["t_tok"].numel())):
            if int(index["t_span"][j]) == n:
                tb, tt = int(index["t_tok_b"][j]), int(index["t_tok"][j])
                probs = torch.softmax(t_logits[tb, tt], -1).tolist()
                order = sorted(range(V), key=lambda i: -probs[i])[:k]
                lost = 1.0 - sum(probs[i] for i in order)
                zt = sum(probs[i] ** (1 / T) for i in order) + (V - k) * (lost / (V - k)) ** (1 / T)
                nxt = int(live.batch["teacher_input_ids"][tb, tt + 1])
                t_lp += math.log(probs[nxt]) / T - math.log(zt)
        for j in range(int(index["s_tok"].numel())):
            if int(index["s_span"][j]) == n:
                sb, ss = int(index["s_tok_b"][j]), int(index["s_tok"][j])
                nxt = int(live.batch["input_ids"][sb, ss + 1])
                s_lp += float(torch.log_softmax(s_logits[sb, ss] / T, -1)[nxt])
        ps, qs = math.exp(t_lp), math.exp(s_lp)
        values.append(kl + ps * math.log(ps / qs) + (1 - ps) * math.log((1 - ps) / (1 - qs)))
    want = sum(values) / len(values)
    assert abs(got - want) < 2e-5 * max(1.0, abs(want)), (got, want)
    dense = float(_term(setup, **settings).loss(live).detach())
    assert abs(got - dense) > 1e-4  # 5 of 270 tokens is not the dense loss


def test_a_store_on_other_tokens_is_refused_naming_what_differs(setup: dict[str, Any], small_store: Path) -> None:
    from ktransfer.checks import preflight

    stored = {"store": str(small_store)}
    checked = preflight(RunConfig.from_dict(_config(setup, teacher=stored))).checked
    assert any("k=5, float32, on the teacher's own tokens), shards verified" in line for line in checked)
    other = _config(setup, teacher=stored)
    other["data"]["teacher_tokenizer"] = setup["other"]
    with pytest.raises(ConfigError, match=f"teacher.store: the store at {small_store} was built on the tokens of "
                                          "another teacher tokenizer"):
        preflight(RunConfig.from_dict(other))
    # the same tokenizers, another tokenization of one text for the teacher (offsets shifted by a character)
    from ktransfer.store import StoreError, open_for_run

    data = load_data(RunConfig.from_dict(_config(setup)))
    rows = [data.train[i] for i in range(len(data.train))]
    rows[3] = {**rows[3], "teacher_token_offsets": rows[3]["teacher_token_offsets"] + 1}
    with pytest.raises(StoreError, match=f"the store at {small_store} was built on another tokenization of the "
                                         "training texts for the teacher"):
        open_for_run(small_store, task="causal_lm", train=rows, info=data.info)
    # a store on the student's tokens (no teacher_tokenizer in its data)
    plain = _config(setup, knowledge=[{"type": "response"}])
    del plain["data"]["teacher_tokenizer"]
    plain["teacher"] = dict(TEACHER)
    student_tokens = setup["root"] / "store_student_tokens"
    build_store(RunConfig.from_dict(plain), student_tokens, k=4, shard_size=64)
    with pytest.raises(ConfigError, match=f"the store at {student_tokens} holds the teacher's outputs on the student's "
                                          "tokens, but this run's teacher reads its own tokens"):
        preflight(RunConfig.from_dict(_config(setup, teacher={"store": str(student_tokens)})))
    # and a store on the teacher's tokens for a run whose teacher reads the student's
    plain["teacher"] = stored
    with pytest.raises(ConfigError, match="holds the teacher's outputs on its own tokens .* has no teacher_tokenizer"):
        preflight(RunConfig.from_dict(plain))


def test_writer_of_a_teacher_tokens_store_takes_and_checks_next_token_log_probs(tmp_path: Path) -> None:
    common = dict(kind="topk", task="causal_lm", examples=1, teacher="t", data="d", k=2, vocab_size=3)
    ids, lp = torch.tensor([[0, 1]]), torch.log(torch.tensor([[0.5, 0.3]]))
    plain = StoreWriter(tmp_path / "plain", **common)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="next_logprobs belong to a store on the teacher's own tokens"):
        plain.add(0, ids=ids, logprobs=lp, next_logprobs=torch.tensor([-0.5]))
    with pytest.raises(ValueError, match="needs both teacher_tokenizer"):
        StoreWriter(tmp_path / "half", teacher_tokenizer="v", **common)  # type: ignore[arg-type]
    own = {"teacher_tokenization": "x", **common}
    w = StoreWriter(tmp_path / "own", teacher_tokenizer="v", **own)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="takes next_logprobs"):
        w.add(0, ids=ids, logprobs=lp)
    with pytest.raises(ValueError, match="next_logprobs at row 0 is 0.5"):
        w.add(0, ids=ids, logprobs=lp, next_logprobs=torch.tensor([0.5]))
    w.add(0, ids=ids, logprobs=lp, next_logprobs=torch.tensor([-2.3]))
    w.close()
    store = TeacherStore.open(tmp_path / "own")
    assert store.teacher_tokens and store.manifest["version"] == 3
    torch.testing.assert_close(store.next_logprobs(0), torch.tensor([-2.3]))
    with pytest.raises(Exception, match=r"keys.teacher_tokenizer: store 'v', now 'w'"):
        StoreWriter(tmp_path / "own", teacher_tokenizer="w", **own)  # type: ignore[arg-type]


def test_cli_builds_a_store_on_the_teachers_tokens_and_a_run_trains_from_it_as_with_the_live_teacher(
        setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import load_file

    from ktransfer.cli import main

    cfg = _config(setup, knowledge=[{"type": "cross_tokenizer", "likelihood_weight": 1.0, "temperature": 1.3}])
    path = tmp_path / "live.yaml"
    path.write_text(yaml.safe_dump(cfg))
    store = tmp_path / "store"
    assert main(["teacher-outputs", "build", str(path), "--out", str(store), "--k", str(setup["vocab"])]) == 0
    capsys.readouterr()
    assert main(["teacher-outputs", "info", str(store)]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["teacher_tokens"] is True and described["keys"]["teacher_tokenization"]
    assert main(["run", str(path), "--run-dir", str(tmp_path / "live"), "--no-progress"]) == 0
    path.write_text(yaml.safe_dump({**cfg, "teacher": {"store": str(store)}}))
    assert main(["run", str(path), "--run-dir", str(tmp_path / "stored"), "--no-progress"]) == 0
    runs = {}
    for name in ("live", "stored"):
        records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        runs[name] = [r["terms"]["cross_tokenizer"] for r in records if r.get("split") == "train"]
    assert len(runs["stored"]) == 4 and all(math.isfinite(v) and v > 0 for v in runs["stored"])
    for a, b in zip(runs["live"], runs["stored"], strict=True):
        assert abs(a - b) < 1e-4 * max(1.0, abs(a))
    live = load_file(str(tmp_path / "live" / "final" / "model.safetensors"))
    stored = load_file(str(tmp_path / "stored" / "final" / "model.safetensors"))
    initial = load_file(setup["student"]["weights"])
    assert max(float((live[k] - stored[k]).abs().max()) for k in live) < 1e-5
    assert max(float((initial[k] - stored[k]).abs().max()) for k in initial) > 1e-4  # it trained
