"""Token-level losses give one large batch's update under accumulation and several processes.

Found before the fix (causal LM, uneven padding, one SGD step): batch 4 vs 2 x 2 accumulated
differed by 40 % in update norm, vs 1 x 4 by 105 %, because each micro-batch's loss was a mean
over its own tokens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
import _launch  # noqa: E402
import _mp_worker as worker  # noqa: E402

from ktransfer.data import TensorDictDataset  # noqa: E402
from ktransfer.data.base import collate_dicts  # noqa: E402
from ktransfer.knowledge import LabelsTerm  # noqa: E402
from ktransfer.sequence.estimators import OnPolicyTerm, ReinforceTerm  # noqa: E402
from ktransfer.train import Distiller, OptimConfig, TrainConfig  # noqa: E402

WORKER = Path(__file__).parent / "_mp_worker.py"


def update(term: str, batch: int, accum: int) -> dict[str, torch.Tensor]:
    before = {k: v.clone() for k, v in worker.tiny_gpt2(0).state_dict().items()}
    d = worker.one_step(term, batch, accum)
    d.fit()
    return {k: v.detach() - before[k] for k, v in d.student.state_dict().items()}


def relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    da = torch.cat([v.flatten() for v in a.values()])
    db = torch.cat([v.flatten() for v in b.values()])
    return float((da - db).norm() / da.norm())


def reference_update(term: str) -> dict[str, torch.Tensor]:
    """The update of one step over all 4 sequences, by hand: the mean over all target tokens."""
    data = worker.uneven_data().tensors
    student = worker.tiny_gpt2(0)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    logits = student(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits[:, :-1].double()
    targets = data["labels"][:, 1:]
    mask = targets != -100
    if term == "labels":
        loss = torch.nn.functional.cross_entropy(logits[mask], targets[mask])
    else:
        with torch.no_grad():
            t_logits = worker.tiny_gpt2(1)(input_ids=data["input_ids"],
                                           attention_mask=data["attention_mask"]).logits[:, :-1].double()
        p = t_logits[mask].log_softmax(-1)
        q = logits[mask].log_softmax(-1)
        loss = (p.exp() * (p - q)).sum(-1).mean()
    loss.backward()
    with torch.no_grad():
        for p in student.parameters():
            p -= 1.0 * p.grad
    return {k: v.detach() - before[k] for k, v in student.state_dict().items()}


@pytest.mark.parametrize("term", ["labels", "response"])
def test_accumulation_gives_the_update_of_one_large_batch(term: str) -> None:
    reference = reference_update(term)
    one = update(term, 4, 1)
    assert relative_difference(reference, one) < 1e-5
    for batch, accum in ((2, 2), (1, 4)):
        assert relative_difference(one, update(term, batch, accum)) < 1e-5, (batch, accum)


def _mixed_sources() -> TensorDictDataset:
    """The uneven data with its targets' sources: the first row from the references, the rest sampled by the student."""
    from ktransfer.knowledge.sources import SOURCE_IDS, SOURCE_KEY

    source = torch.tensor([SOURCE_IDS["dataset"]] + [SOURCE_IDS["student"]] * 3)
    return TensorDictDataset(**worker.uneven_data().tensors, **{SOURCE_KEY: source})


SOURCE_TERMS = {  # terms that read only some rows: their units are those rows' targets (or sequences)
    "on_policy": lambda: OnPolicyTerm(),
    "reinforce_constant": lambda: ReinforceTerm(normalise=12.0, baseline="none"),
    "reinforce_sample_length": lambda: ReinforceTerm(normalise="sample_length", baseline="none"),
    "labels_from_references": lambda: LabelsTerm(sources=["dataset", "teacher"]),
}


def _source_update(term: str, batch: int, accum: int, units: bool = True) -> dict[str, torch.Tensor]:
    made = SOURCE_TERMS[term]()
    if not units:  # the term as it was before it counted its own units: every row's targets
        made.count_units = lambda batch, task: None  # type: ignore[method-assign]
    student = worker.tiny_gpt2(0)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    d = Distiller(student, worker.tiny_gpt2(1), [made], train_data=_mixed_sources(), task="causal_lm",
                  optim=OptimConfig(name="sgd", lr=1.0, momentum=0.0, max_grad_norm=None),
                  config=TrainConfig(max_steps=1, batch_size=batch, grad_accum_steps=accum), progress=False)
    d.fit()
    return {k: v.detach() - before[k] for k, v in d.student.state_dict().items()}


@pytest.mark.parametrize("term", list(SOURCE_TERMS))
def test_terms_on_some_rows_under_accumulation_give_the_update_of_one_large_batch(term: str) -> None:
    one = _source_update(term, 4, 1)
    for batch, accum in ((2, 2), (1, 4)):
        assert relative_difference(one, _source_update(term, batch, accum)) < 1e-5, (batch, accum)
    # counted by every row's targets instead, the micro-batches were weighted wrongly (the test has teeth)
    assert relative_difference(one, _source_update(term, 2, 2, units=False)) > 0.05


def test_the_old_per_micro_batch_mean_really_differs() -> None:
    """The data is uneven enough that per-micro-batch means would give another update (the test has teeth)."""
    data = worker.uneven_data().tensors
    updates = []
    for split in ([0, 1, 2, 3], [[0, 1], [2, 3]]):
        student = worker.tiny_gpt2(0)
        before = {k: v.clone() for k, v in student.state_dict().items()}
        groups = [split] if isinstance(split[0], int) else split
        for rows in groups:
            out = student(input_ids=data["input_ids"][rows], attention_mask=data["attention_mask"][rows]).logits
            targets = data["labels"][rows][:, 1:]
            loss = torch.nn.functional.cross_entropy(out[:, :-1].reshape(-1, worker.VOCAB), targets.reshape(-1))
            (loss / len(groups)).backward()
        with torch.no_grad():
            for p in student.parameters():
                p -= p.grad
        updates.append({k: v.detach() - before[k] for k, v in student.state_dict().items()})
    assert relative_difference(updates[0], updates[1]) > 0.2


def torchrun(*args: str, nproc: int = 2, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*_launch.torchrun(nproc), str(WORKER), *args],
                          capture_output=True, text=True, timeout=300, env=env)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("term,batch,accum", [("labels", 4, 1), ("response", 2, 2)])
def test_two_processes_give_the_update_of_one_large_batch(tmp_path: Path, term: str, batch: int, accum: int) -> None:
    torchrun("step", str(tmp_path), term, str(batch), str(accum))
    two = load_file(str(tmp_path / "student.safetensors"))
    before = worker.tiny_gpt2(0).state_dict()
    reference = reference_update(term)
    assert relative_difference(reference, {k: two[k] - before[k] for k in reference}) < 1e-5


@pytest.mark.slow
def test_a_nan_on_one_process_stops_every_process_with_the_step(tmp_path: Path) -> None:
    proc = torchrun("nan", str(tmp_path), check=False)
    assert proc.returncode != 0
    for rank in (0, 1):
        step, message = (tmp_path / f"rank{rank}.txt").read_text().split("\n", 1)
        assert step == "3" and "at step 3" in message and "nan_on_rank1=nan" in message


@pytest.mark.slow
def test_each_process_evaluates_its_shard_and_metrics_are_gathered(tmp_path: Path) -> None:
    torchrun("eval", str(tmp_path / "two"))
    subprocess.run([sys.executable, str(WORKER), "eval", str(tmp_path / "one")], check=True, timeout=300)
    one = json.loads((tmp_path / "one" / "rank0.json").read_text())
    ranks = [json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert one["evaluated"] == 37
    assert [r["evaluated"] for r in ranks] == [19, 18]  # every second example each, 37 in all
    for r in ranks:
        for key, value in one["metrics"].items():
            assert r["metrics"][key] == pytest.approx(value, rel=1e-5)


@pytest.mark.slow
def test_a_terms_running_counts_are_logged_summed_over_processes(tmp_path: Path) -> None:
    torchrun("counts", str(tmp_path / "two"))
    subprocess.run([sys.executable, str(WORKER), "counts", str(tmp_path / "one")], check=True, timeout=300)
    logged = {}
    for name in ("one", "two"):
        records = [json.loads(x) for x in (tmp_path / name / "run" / "metrics.jsonl").read_text().splitlines()]
        logged[name] = [r["counts"]["counting"] for r in records if r.get("split") == "train"]
    # 3 steps of 8 examples: one process sees all of each batch, each of two processes half of it
    assert logged["one"] == [{"examples": 8 * n, "calls": n} for n in (1, 2, 3)]
    assert logged["two"] == [{"examples": 8 * n, "calls": 2 * n} for n in (1, 2, 3)]


# ------------------------------------------------------------------------ terms with their own units
# Terms that average over something other than the student's targets (positions, spans, examples)
# say so with `count_units`; the engine weights each micro-batch's value of a term by its share of
# that term's units in the step.
def _encoder_data() -> TensorDictDataset:
    """Four padded sequences of 10, 6, 2 and 1 tokens, one label each: positions and examples split unevenly."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, worker.VOCAB, (4, 10), generator=g)
    mask = (torch.arange(10)[None, :] < torch.tensor([10, 6, 2, 1])[:, None]).long()
    return TensorDictDataset(input_ids=ids * mask, attention_mask=mask, labels=torch.tensor([0, 1, 2, 1]))


def _prompted_data() -> TensorDictDataset:
    """Four sequences whose targets (after a prompt) and examples split unevenly."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, worker.VOCAB, (4, 12), generator=g)
    positions = torch.arange(12)[None, :]
    mask = (positions < torch.tensor([12, 12, 4, 3])[:, None]).long()
    labels = ids.masked_fill((mask == 0) | (positions < torch.tensor([10, 2, 1, 1])[:, None]), -100)
    return TensorDictDataset(input_ids=ids, attention_mask=mask, labels=labels)


def _one_step_update(student: torch.nn.Module, teacher: torch.nn.Module, terms: list[Any], data: TensorDictDataset,
                     task: str, batch: int, accum: int) -> dict[str, torch.Tensor]:
    before = {k: v.clone() for k, v in student.state_dict().items()}
    d = Distiller(student, teacher, terms, train_data=data, task=task,
                  optim=OptimConfig(name="sgd", lr=1.0, momentum=0.0, max_grad_norm=None),
                  config=TrainConfig(max_steps=1, batch_size=batch, grad_accum_steps=accum), progress=False)
    d.fit()
    return {k: v.detach() - before[k] for k, v in d.student.state_dict().items()}


def _encoder_terms(kind: str, counted: bool) -> list[Any]:
    from ktransfer.knowledge import AttentionTerm, FeatureTerm, LabelsTerm, RelationTerm

    term: Any = {"feature": lambda: FeatureTerm(layer_map="last"), "attention": lambda: AttentionTerm(layer_map="last"),
                 "token": lambda: RelationTerm(variant="token", layer_map="last")}[kind]()
    if not counted:  # the task's target count (one per example) instead of the term's positions
        term.count_units = lambda batch, task: None
    return [term, LabelsTerm(weight=0.05)]


def _encoder_update(kind: str, batch: int, accum: int, counted: bool = True) -> dict[str, torch.Tensor]:
    import _fsdp_worker as fsdp  # noqa: PLC0415

    return _one_step_update(fsdp.bert(0, 2, 16), fsdp.bert(1, 3, 16), _encoder_terms(kind, counted), _encoder_data(),
                            "classification", batch, accum)


@pytest.mark.parametrize("kind", ["feature", "attention", "token"])
def test_position_terms_under_accumulation_give_the_update_of_one_large_batch(kind: str) -> None:
    one = _encoder_update(kind, 4, 1)
    for batch, accum in ((2, 2), (1, 4)):
        assert relative_difference(one, _encoder_update(kind, batch, accum)) < 1e-5, (batch, accum)
    # weighted by examples (the classifier's targets), the single-example micro-batches would count alike
    assert relative_difference(one, _encoder_update(kind, 1, 4, counted=False)) > 1e-2


def test_fsp_relation_is_weighted_by_examples_not_target_tokens() -> None:
    import _fsdp_worker as fsdp  # noqa: PLC0415
    from ktransfer.knowledge import RelationTerm

    def run(batch: int, accum: int, counted: bool = True) -> dict[str, torch.Tensor]:
        term = RelationTerm(variant="fsp", layer_map="uniform")
        if not counted:
            term.count_units = lambda b, t: None  # type: ignore[method-assign]
        return _one_step_update(fsdp.gpt2(0, 2, 16), fsdp.gpt2(1, 3, 16), [term], _prompted_data(), "causal_lm",
                                batch, accum)

    one = run(4, 1)
    for batch, accum in ((2, 2), (1, 4)):
        assert relative_difference(one, run(batch, accum)) < 1e-5, (batch, accum)
    assert relative_difference(one, run(1, 4, counted=False)) > 1e-2


def _cross_tokenizer_data() -> TensorDictDataset:
    """Texts of 12, 12, 3 and 2 characters; the student reads one character a token, the teacher two.

    The texts' counted spans (5, 5, 1, 0) split otherwise than the student's targets (11, 11, 2, 1).
    """
    g = torch.Generator().manual_seed(0)
    lengths = [12, 12, 3, 2]
    ids = torch.randint(1, worker.VOCAB, (4, 12), generator=g)
    t_ids = torch.randint(1, worker.VOCAB, (4, 6), generator=g)
    offsets = torch.full((4, 12, 2), -1)
    t_offsets = torch.full((4, 6, 2), -1)
    mask = torch.zeros(4, 12, dtype=torch.long)
    t_mask = torch.zeros(4, 6, dtype=torch.long)
    for row, n in enumerate(lengths):
        for i in range(n):
            offsets[row, i] = torch.tensor([i, i + 1])
        for k in range((n + 1) // 2):
            t_offsets[row, k] = torch.tensor([2 * k, min(2 * k + 2, n)])
        mask[row, :n] = 1
        t_mask[row, :(n + 1) // 2] = 1
    return TensorDictDataset(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100),
                             token_offsets=offsets, teacher_input_ids=t_ids, teacher_attention_mask=t_mask,
                             teacher_labels=t_ids.masked_fill(t_mask == 0, -100), teacher_token_offsets=t_offsets)


def _cross_tokenizer_update(method: str, batch: int, accum: int, counted: bool = True) -> dict[str, torch.Tensor]:
    from ktransfer.cross_tokenizer import CrossTokenizerTerm, identity_mapping
    from ktransfer.knowledge import LabelsTerm

    term = CrossTokenizerTerm(method=method) if method == "uld" else CrossTokenizerTerm(likelihood_weight=0.5)
    term.set_mapping(identity_mapping(worker.VOCAB))
    if not counted:
        term.count_units = lambda b, t: None  # type: ignore[method-assign]
    # the labels term has targets in the micro-batch where the cross-tokenizer term has no span
    return _one_step_update(worker.tiny_gpt2(0), worker.tiny_gpt2(1), [term, LabelsTerm(weight=0.05)],
                            _cross_tokenizer_data(), "causal_lm", batch, accum)


@pytest.mark.parametrize("method", ["span", "uld"])
def test_cross_tokenizer_term_under_accumulation_gives_the_update_of_one_large_batch(method: str) -> None:
    one = _cross_tokenizer_update(method, 4, 1)
    for batch, accum in ((2, 2), (1, 4)):
        assert relative_difference(one, _cross_tokenizer_update(method, batch, accum)) < 1e-5, (batch, accum)
    # weighted by targets the update differs by 2-5 % (the spans nearly follow the characters)
    assert relative_difference(one, _cross_tokenizer_update(method, 1, 4, counted=False)) > 5e-3


def test_cross_tokenizer_units_are_the_spans_its_loss_counts_and_are_aligned_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ktransfer.cross_tokenizer import CrossTokenizerTerm, identity_mapping
    from ktransfer.cross_tokenizer import term as term_module
    from ktransfer.knowledge import StepView
    from ktransfer.tasks import ForwardResult, Task

    calls = []
    real = term_module.align_offsets
    monkeypatch.setattr(term_module, "align_offsets", lambda *args: calls.append(1) or real(*args))
    batch = collate_dicts([_cross_tokenizer_data()[i] for i in range(4)])
    term = CrossTokenizerTerm(likelihood_weight=0.0)
    term.set_mapping(identity_mapping(worker.VOCAB))
    assert term.count_units(batch, Task("causal_lm")) == 5 + 5 + 1 + 0
    g = torch.Generator().manual_seed(1)
    view = StepView(batch=dict(batch),
                    student=ForwardResult(torch.randn(4, 11, worker.VOCAB, generator=g), batch["labels"][:, 1:], None,
                                          "causal_lm"),
                    teacher=ForwardResult(torch.randn(4, 5, worker.VOCAB, generator=g),
                                          batch["teacher_labels"][:, 1:], None, "causal_lm"))
    term.loss(view)
    assert term.counts["spans_counted"] == 11 and len(calls) == 4 and not term._aligned
    weighted = {**batch, "sample_weight": torch.tensor([0.5, 2.0, 3.0, 7.0])}
    assert term.count_units(weighted, Task("causal_lm")) == pytest.approx(0.5 * 5 + 2.0 * 5 + 3.0 * 1)


def test_terms_without_units_of_their_own_count_the_task_targets() -> None:
    from ktransfer.knowledge import LabelsTerm, RelationTerm, ResponseTerm
    from ktransfer.knowledge.base import term_units
    from ktransfer.tasks import Task

    batch = collate_dicts([_prompted_data()[i] for i in range(4)])
    task = Task("causal_lm")
    targets = task.count_targets(batch)
    assert targets == 2 + 10 + 3 + 2
    for term in (LabelsTerm(), ResponseTerm(), RelationTerm(variant="sample")):
        assert term_units(term, batch, task) == targets
    assert term_units(RelationTerm(variant="fsp"), batch, task) == 4
    assert term_units(RelationTerm(variant="token"), batch, task) == 12 + 12 + 4 + 3


@pytest.mark.parametrize("kind", ["causal_lm", "seq2seq"])
@pytest.mark.parametrize("per_sequence", [False, True])
def test_source_units_are_the_weighted_targets_or_sequences_of_the_rows_read(kind: str, per_sequence: bool) -> None:
    """Counted by hand: rows 0 and 2 come from the student; the causal shift drops each row's first label."""
    from ktransfer.knowledge.sources import SOURCE_IDS, SOURCE_KEY, source_units
    from ktransfer.tasks import Task

    labels = torch.tensor([[5, 6, 7, -100], [1, 2, -100, -100], [-100, -100, -100, 3], [4, 4, 4, 4]])
    source = torch.tensor([SOURCE_IDS[s] for s in ("student", "dataset", "student", "teacher")])
    weights = torch.tensor([0.5, 2.0, 3.0, 1.0])
    batch = {"labels": labels, SOURCE_KEY: source}
    task = Task(kind)
    # targets per row: causal (shifted by one) 2, 1, 1, 3; seq2seq 3, 2, 1, 4
    targets = [2, 1, 1, 3] if kind == "causal_lm" else [3, 2, 1, 4]
    read = [0, 2]
    units = [1 if per_sequence else targets[i] for i in read]
    assert source_units(batch, task, ["student"], per_sequence) == sum(units)
    weighted = sum(float(weights[i]) * u for i, u in zip(read, units))
    assert source_units({**batch, "sample_weight": weights}, task, ["student"], per_sequence) == pytest.approx(weighted)
    everyone = [1 if per_sequence else t for t in targets]
    assert source_units(batch, task, None, per_sequence) == sum(everyone)
    assert source_units({"labels": labels}, task, ["student"], per_sequence) is None  # no sources: the loss says so
