"""Worker for the sharded (FSDP2) tests, run by torchrun with 2 CPU processes, or plainly as one.

    python _fsdp_worker.py MODE OUT_DIR [MODEL]

MODE "run": a 10-step distillation into OUT_DIR (sharded under several processes); also writes
each process's parameter bytes of the teacher and student (`memory-rank<N>.json`).
MODE "killed_and_full": the same run uninterrupted in OUT_DIR/full, and killed after 5 steps
(a checkpoint at 5) in OUT_DIR/killed. MODE "resume": resumes OUT_DIR/killed. MODE "nan": a sharded bf16 run whose extra term becomes NaN
on rank 1 only at step 3; each process writes the step it stopped at (`rank<N>.txt`).
MODEL "causal" (default): tiny GPT-2 student and a larger teacher with a response term.
MODEL "encoder": tiny BERT classifiers with feature and attention terms and labels.
A trailing "dropout" turns on the student's dropout (which makes the RNG states matter); a trailing
"unsharded" runs with train.sharding=none (data parallel) for comparison; a trailing "sgd" trains with
SGD (momentum 0.9) instead of AdamW.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from ktransfer.data import TensorDictDataset
from ktransfer.engine import sharding
from ktransfer.knowledge import ResponseTerm
from ktransfer.knowledge import StepView
from ktransfer.train import Distiller, NonFiniteLossError, OptimConfig, TrainConfig

VOCAB = 40


def gpt2(seed: int, layers: int, width: int, dropout: float = 0.0) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=VOCAB, n_layer=layers, n_embd=width, n_head=2, n_positions=16, resid_pdrop=dropout,
                     embd_pdrop=dropout, attn_pdrop=0.0, attn_implementation="eager", bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg)


def bert(seed: int, layers: int, width: int, dropout: float = 0.0) -> torch.nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=width, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=2 * width, max_position_embeddings=16, num_labels=3,
                     hidden_dropout_prob=dropout, attention_probs_dropout_prob=0.0, attn_implementation="eager")
    return BertForSequenceClassification(cfg)


def token_data(n: int = 24) -> TensorDictDataset:
    """Sequences of uneven length (2 to 12 tokens), so that the step-level token count matters; every
    third has no targets at all, so that some process's slice of a micro-batch has none."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, VOCAB, (n, 12), generator=g)
    lengths = torch.randint(2, 13, (n,), generator=g)
    mask = (torch.arange(12)[None, :] < lengths[:, None]).long()
    labels = ids.masked_fill(mask == 0, -100)
    labels[::3] = -100
    return TensorDictDataset(input_ids=ids, attention_mask=mask, labels=labels)


def class_data(n: int = 24) -> TensorDictDataset:
    """Unpadded sequences: feature and attention terms average over each micro-batch's positions, which
    equals the average over the step's only when every process's slice has as many positions."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, VOCAB, (n, 10), generator=g)
    return TensorDictDataset(input_ids=ids, attention_mask=torch.ones_like(ids),
                             labels=torch.randint(0, 3, (n,), generator=g))


def distiller(model: str, run_dir: Path | None, dropout: float = 0.0, stop_after: int | None = None,
              optimizer: str = "adamw", **train: Any) -> Distiller:
    config = TrainConfig(**{"max_steps": 10, "batch_size": 4, "grad_accum_steps": 2, "checkpoint_every": 5,
                            "checkpoint_minutes": 0, "log_every": 1, "sharding": "fsdp", **train})
    optim = OptimConfig(name=optimizer, lr=0.01 if optimizer == "adamw" else 0.5, max_grad_norm=0.5)
    if model == "causal":
        return Distiller(gpt2(0, 2, 16, dropout), gpt2(1, 3, 32), [ResponseTerm("forward_kl", temperature=2.0)],
                         train_data=token_data(), task="causal_lm", config=config, optim=optim, run_dir=run_dir,
                         progress=False, stop_after_steps=stop_after)
    from ktransfer.knowledge import AttentionTerm, FeatureTerm, LabelsTerm

    terms = [FeatureTerm(layer_map="last", weight=0.5), AttentionTerm(layer_map="last", weight=0.5), LabelsTerm()]
    return Distiller(bert(0, 2, 16, dropout), bert(1, 3, 32), terms, train_data=class_data(),
                     task="classification", config=config, optim=optim, run_dir=run_dir, progress=False,
                     stop_after_steps=stop_after)


class NanOnRank1:
    """A term that is finite everywhere except on rank 1 from step 3 on."""

    name = "nan_on_rank1"
    weight = 1.0
    requires_teacher = False
    student_modules: tuple[str, ...] = ()
    teacher_modules: tuple[str, ...] = ()

    def loss(self, view: StepView) -> torch.Tensor:
        value = view.student.logits.float().pow(2).mean() * 1e-3
        if int(os.environ.get("RANK", "0")) == 1 and view.step + 1 >= 3:
            return value * float("nan")
        return value


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    model = sys.argv[3] if len(sys.argv) > 3 else "causal"
    dropout = 0.1 if "dropout" in sys.argv[4:] else 0.0
    train: dict[str, Any] = {"sharding": "none"} if "unsharded" in sys.argv[4:] else {}
    if "sgd" in sys.argv[4:]:
        train["optimizer"] = "sgd"
    rank = int(os.environ.get("RANK", "0"))
    if mode == "run":
        d = distiller(model, out, dropout, **train)
        d.fit()
        assert d.teacher is not None
        memory = {"teacher": sharding.local_parameter_bytes(d.teacher),
                  "student": sharding.local_parameter_bytes(d.student),
                  "teacher_sharded": sharding.is_sharded(d.teacher)}
        (out / f"memory-rank{rank}.json").write_text(json.dumps(memory))
    elif mode == "killed_and_full":
        distiller(model, out / "full", dropout, **train).fit()
        distiller(model, out / "killed", dropout, stop_after=5, **train).fit()
    elif mode == "resume":
        distiller(model, out / "killed", dropout, **train).fit(resume=True)
    elif mode == "nan":
        d = distiller(model, None, mixed_precision="bf16")
        d.terms.append(NanOnRank1())  # type: ignore[arg-type]
        try:
            d.fit()
        except NonFiniteLossError as e:
            out.mkdir(parents=True, exist_ok=True)
            (out / f"rank{rank}.txt").write_text(f"{e.step}\n{e}")
            sys.exit(3)


if __name__ == "__main__":
    main()
