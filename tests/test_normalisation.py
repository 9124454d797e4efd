"""Token-level losses give one large batch's update under accumulation and several processes.

Found before the fix (causal LM, uneven padding, one SGD step): batch 4 vs 2 x 2 accumulated
differed by 40 % in update norm, vs 1 x 4 by 105 %, because each micro-batch's loss was a mean
over its own tokens.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
import _mp_worker as worker  # noqa: E402

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
    exe = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([exe, "--nproc_per_node", str(nproc), str(WORKER), *args],
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
