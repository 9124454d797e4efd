"""Worker for the multi-process tests, run by torchrun (or plainly, as one process).

    python _mp_worker.py MODE OUT_DIR [TERM BATCH ACCUM]

MODE "step": one SGD step of a tiny causal LM on unevenly padded data; writes the student's
weights. MODE "nan": a term that becomes NaN on rank 1 only at step 3. MODE "eval": records how
many validation examples each process evaluated and the gathered metrics.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from ktransfer.data import TensorDictDataset
from ktransfer.engine.distributed import leave_process_group
from ktransfer.knowledge import LabelsTerm, ResponseTerm, StepView
from ktransfer.train import Distiller, NonFiniteLossError, OptimConfig, TrainConfig, make_evaluator

VOCAB = 40


def tiny_gpt2(seed: int) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=VOCAB, n_layer=1, n_embd=16, n_head=2, n_positions=16, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="eager")
    return GPT2LMHeadModel(cfg)


def uneven_data() -> TensorDictDataset:
    """Four sequences with 11, 11, 2 and 1 target tokens: short ones weigh more under per-batch means."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (4, 12), generator=g)
    mask = torch.ones_like(ids)
    for row, length in enumerate((12, 12, 3, 2)):
        mask[row, length:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    return TensorDictDataset(input_ids=ids, attention_mask=mask, labels=labels)


@dataclass
class NanOnRank1:
    name: str = "nan_on_rank1"
    weight: float = 1.0
    requires_teacher: bool = False
    student_modules: tuple[str, ...] = ()
    teacher_modules: tuple[str, ...] = ()

    def loss(self, view: StepView) -> Tensor:
        value = view.student.logits.float().pow(2).mean()
        if int(os.environ.get("RANK", "0")) == 1 and view.step + 1 >= 3:
            return value * float("nan")
        return value


def one_step(term: str, batch: int, accum: int) -> Distiller:
    teacher = tiny_gpt2(1) if term == "response" else None
    terms = [ResponseTerm("forward_kl")] if term == "response" else [LabelsTerm()]
    return Distiller(tiny_gpt2(0), teacher, terms, train_data=uneven_data(), task="causal_lm",
                     optim=OptimConfig(name="sgd", lr=1.0, momentum=0.0, max_grad_norm=None),
                     config=TrainConfig(max_steps=1, batch_size=batch, grad_accum_steps=accum), progress=False)


@dataclass
class CountingTerm:
    """No loss; counts the examples and the steps this process saw (`counts`, logged by the engine)."""

    name: str = "counting"
    weight: float = 1.0
    requires_teacher: bool = False
    student_modules: tuple[str, ...] = ()
    teacher_modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.counts = {"examples": 0, "calls": 0}

    def loss(self, view: StepView) -> Tensor:
        self.counts["examples"] += int(view.batch["labels"].shape[0])
        self.counts["calls"] += 1
        return view.student.logits.sum() * 0.0


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    rank = int(os.environ.get("RANK", "0"))
    out.mkdir(parents=True, exist_ok=True)
    if mode == "step":
        term, batch, accum = sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
        d = one_step(term, batch, accum)
        d.fit()
        if rank == 0:
            state = {k: v.detach().clone().contiguous() for k, v in d.student.state_dict().items()}
            save_file(state, str(out / "student.safetensors"))
    elif mode == "nan":
        data = TensorDictDataset(inputs=torch.randn(64, 6), labels=torch.randint(0, 3, (64,)))
        d = Distiller(torch.nn.Linear(6, 3), None, [LabelsTerm(), NanOnRank1()], train_data=data,
                      config=TrainConfig(max_steps=10, batch_size=8), progress=False)
        try:
            d.fit()
        except NonFiniteLossError as e:
            (out / f"rank{rank}.txt").write_text(f"{e.step}\n{e}")
            sys.exit(3)
    elif mode == "counts":  # a term's running counts in the log: summed over processes
        data = TensorDictDataset(inputs=torch.randn(32, 6), labels=torch.randint(0, 3, (32,)))
        Distiller(torch.nn.Linear(6, 3), None, [LabelsTerm(), CountingTerm()], train_data=data, run_dir=out / "run",
                  config=TrainConfig(max_steps=3, batch_size=8, log_every=1), progress=False).fit()
    elif mode == "eval":
        g = torch.Generator().manual_seed(0)
        val = TensorDictDataset(inputs=torch.randn(37, 6, generator=g), labels=torch.randint(0, 3, (37,), generator=g))
        seen: list[int] = []
        torch.manual_seed(0)
        model = torch.nn.Linear(6, 3)
        model.register_forward_hook(lambda m, i, o: seen.append(int(i[0].shape[0])))
        evaluate = make_evaluator(val, batch_size=8)
        d = Distiller(model, None, [LabelsTerm()], train_data=val, evaluate=evaluate,
                      config=TrainConfig(max_steps=2, batch_size=2, eval_every=1000), progress=False)
        result = d.fit()
        n_train_rows = 2 * 2 // max(1, int(os.environ.get("WORLD_SIZE", "1")))
        (out / f"rank{rank}.json").write_text(json.dumps({
            "evaluated": sum(seen) - n_train_rows, "metrics": result.final_metrics}))
    leave_process_group()


if __name__ == "__main__":
    main()
