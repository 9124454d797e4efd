"""Worker for the sharded (FSDP2) tests, run by torchrun with 2 CPU processes, or plainly as one.

    python _fsdp_worker.py MODE OUT_DIR [MODEL]

MODE "run": a 10-step distillation into OUT_DIR (sharded under several processes); also writes
each process's parameter bytes of the teacher and student (`memory-rank<N>.json`).
MODE "killed_and_full": the same run uninterrupted in OUT_DIR/full, and killed after 5 steps
(a checkpoint at 5) in OUT_DIR/killed. MODE "resume": resumes OUT_DIR/killed. MODE "nan": a sharded bf16 run whose extra term becomes NaN
on rank 1 only at step 3; each process writes the step it stopped at (`rank<N>.txt`).
MODE "eos": the targets stage's generation with a sharded student whose greedy samples end at once on
rank 0 and run to max_new_tokens on rank 1, then with nothing to generate on rank 0; each process writes
its sample lengths and the unsharded model's (`eos-rank<N>.json`).
MODEL "causal" (default): tiny GPT-2 student and a larger teacher with a response term.
MODEL "onpolicy": the causal models with half the targets sampled from the student and an on-policy term.
MODEL "seq2seq": tiny T5 student and teacher, the same targets and term.
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


def t5(seed: int, layers: int, width: int) -> torch.nn.Module:
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=VOCAB, d_model=width, d_kv=width // 2, d_ff=2 * width, num_layers=layers,
                   num_decoder_layers=layers, num_heads=2, dropout_rate=0.0, decoder_start_token_id=0,
                   pad_token_id=0, eos_token_id=1, attn_implementation="eager")
    return T5ForConditionalGeneration(cfg)


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


def prompted_data(n: int = 24) -> TensorDictDataset:
    """Sequences of 6 to 12 tokens whose first 2 to 5 are a prompt (label -100): every example has targets."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, VOCAB, (n, 12), generator=g)
    lengths = torch.randint(6, 13, (n,), generator=g)
    prompts = torch.randint(2, 6, (n,), generator=g)
    positions = torch.arange(12)[None, :]
    mask = (positions < lengths[:, None]).long()
    labels = ids.masked_fill((mask == 0) | (positions < prompts[:, None]), -100)
    return TensorDictDataset(input_ids=ids, attention_mask=mask, labels=labels)


def pair_data(n: int = 24) -> TensorDictDataset:
    """Sources of 4 to 8 tokens (padded to 8) and targets of 3 to 6 (-100 after), ids from 2 (0 pads, 1 ends)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, VOCAB, (n, 8), generator=g)
    mask = (torch.arange(8)[None, :] < torch.randint(4, 9, (n,), generator=g)[:, None]).long()
    labels = torch.randint(2, VOCAB, (n, 6), generator=g)
    labels = labels.masked_fill(torch.arange(6)[None, :] >= torch.randint(3, 7, (n,), generator=g)[:, None], -100)
    return TensorDictDataset(input_ids=ids.masked_fill(mask == 0, 0), attention_mask=mask, labels=labels)


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
    if model == "onpolicy":
        from ktransfer.sequence import OnPolicyTerm, TargetsStage

        stage = TargetsStage(sources={"dataset": 0.5, "student": 0.5}, generation={"max_new_tokens": 4}, seed=1)
        return Distiller(gpt2(0, 2, 16, dropout), gpt2(1, 3, 32), [OnPolicyTerm("backward_kl")],
                         train_data=prompted_data(), task="causal_lm", config=config, optim=optim, run_dir=run_dir,
                         progress=False, stop_after_steps=stop_after, stages=[stage])
    if model == "seq2seq":
        from ktransfer.sequence import OnPolicyTerm, TargetsStage

        stage = TargetsStage(sources={"dataset": 0.5, "student": 0.5}, generation={"max_new_tokens": 4}, seed=1)
        return Distiller(t5(0, 2, 16), t5(1, 3, 32), [OnPolicyTerm("backward_kl")], train_data=pair_data(),
                         task="seq2seq", config=config, optim=optim, run_dir=run_dir, progress=False,
                         stop_after_steps=stop_after, stages=[stage])
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


EOS = 5


def repeater() -> torch.nn.Module:
    """A GPT-2 whose layers add nothing and whose greedy next token is the current one: it repeats
    its prompt's last token (one-hot embeddings, no positions, zero output projections)."""
    model = gpt2(0, 2, 64)
    with torch.no_grad():
        model.transformer.wte.weight.copy_(torch.eye(VOCAB, 64) * 10)
        model.transformer.wpe.weight.zero_()
        for block in model.transformer.h:
            block.attn.c_proj.weight.zero_()
            block.attn.c_proj.bias.zero_()
            block.mlp.c_proj.weight.zero_()
            block.mlp.c_proj.bias.zero_()
    return model


def eos_generation(out: Path, rank: int) -> None:
    """Rank 0's prompts end in the end-of-sequence token (its greedy samples end at the first token), rank
    1's do not (they run to max_new_tokens); then rank 0 has nothing to generate while rank 1 has."""
    from ktransfer.sequence import StageContext, TargetsStage
    from ktransfer.tasks import Task

    torch.distributed.init_process_group("gloo")
    ids = torch.tensor([[3, 7, EOS, 9], [8, EOS, 9, 9]]) if rank == 0 else torch.tensor([[3, 7, 11, 9], [8, 12, 9, 9]])
    starts = torch.tensor([3, 2])
    attention = torch.ones_like(ids)
    plain = repeater()
    sharded = repeater()
    sharding.shard_model(sharded, ["GPT2Block"], sharding.device_mesh(torch.device("cpu"), 2))
    lengths: dict[str, list[int]] = {}
    for name, model in (("plain", plain), ("sharded", sharded)):
        stage = TargetsStage(sources={"student": 1.0}, generation={"max_new_tokens": 6, "do_sample": False,
                                                                   "eos_token_id": EOS})
        ctx = StageContext(student=model, teacher=None, task=Task("causal_lm"), step=0,
                           device=torch.device("cpu"), process_index=rank, num_processes=2)
        rows = stage._generate_rows(ctx, torch.tensor([2, 2]), starts, ids, attention)
        lengths[name] = [int(rows[i][0].shape[0]) for i in (0, 1)]
        lengths[name + "_tokens"] = rows[0][0].tolist()
        if name == "sharded":  # rank 0 has no student rows: it still steps with rank 1
            choice = torch.tensor([0, 0]) if rank == 0 else torch.tensor([2, 2])
            rows = stage._generate_rows(ctx, choice, starts, ids, attention)
            lengths["sharded_only_rank1"] = sorted(int(t.shape[0]) for t, _ in rows.values())
    (out / f"eos-rank{rank}.json").write_text(json.dumps(lengths))
    torch.distributed.destroy_process_group()


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    model = sys.argv[3] if len(sys.argv) > 3 else "causal"
    dropout = 0.1 if "dropout" in sys.argv[4:] else 0.0
    train: dict[str, Any] = {"sharding": "none"} if "unsharded" in sys.argv[4:] else {}
    if "sgd" in sys.argv[4:]:
        train["optimizer"] = "sgd"
    rank = int(os.environ.get("RANK", "0"))
    if mode == "eos":
        eos_generation(out, rank)
    elif mode == "compare":  # the same run sharded (OUT_DIR/two) and data parallel (OUT_DIR/dp)
        distiller(model, out / "two", dropout, **train).fit()
        distiller(model, out / "dp", dropout, **{**train, "sharding": "none"}).fit()
    elif mode == "run":
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
