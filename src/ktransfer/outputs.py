"""A model's outputs on a data split beside the references, one JSON line per example (`ktransfer eval --outputs`).

* classification: `label` and `predicted` (class names where the dataset has them), the
  predicted class's `probability` and `correct`;
* seq2seq: `output`, the translation decoded as the evaluation decodes (the split's beams and
  length limit) beside the `reference`;
* causal LM: `output`, the greedy continuation of a prompt beside the `reference` continuation:
  the prompt is the tokens before the first target, or the first half of an example whose
  every token is a target (language-model evaluation data); the continuation has the
  reference's length at most (it stops at the end-of-sequence token).

Each line starts with the example's `index` in the split and its `source`: the text where the
split or its tokenizer gives it back, else the token ids (or a tabular row's features).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ktransfer.tasks import IGNORE_INDEX, Task

Decoder = Callable[[list[int]], str]


def write_run_outputs(run_dir: str | Path, path: str | Path, split: str = "test", which: str = "best") -> int:
    """Write a run's student outputs on `split` (its `which` weights) to the JSONL file `path`; the line count."""
    from ktransfer.checkpoint import load_weights
    from ktransfer.building import _architecture, build_model, load_data
    from ktransfer.rundir import load_run_config

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    data = load_data(cfg)
    model = build_model(_architecture(cfg.student), data.info, "student")
    load_weights(model, run_dir / which / "model.safetensors")
    return write_outputs(model, data.get(split), Task(cfg.task), path, collate_fn=data.collate_fn, info=data.info,
                         batch_size=cfg.train.eval_batch_size, tokenizer=cfg.data.get("tokenizer"))


def write_outputs(model: nn.Module, dataset: Any, task: Task, path: str | Path, *, collate_fn: Any,
                  info: dict[str, Any] | None = None, batch_size: int = 64, tokenizer: str | None = None) -> int:
    """Write `model`'s outputs on every example of `dataset` to `path` (JSONL, written aside then renamed)."""
    from ktransfer.io import atomic_path

    info = info or {}
    if task.kind == "classification":
        rows = _classification(model, dataset, collate_fn, info, batch_size, _decoder(dataset, info, tokenizer))
    elif task.kind == "seq2seq":
        rows = _translations(model, dataset, collate_fn)
    else:
        rows = _continuations(model, dataset, _decoder(dataset, info, tokenizer))
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def _decoder(dataset: Any, info: dict[str, Any], tokenizer: str | None) -> Decoder | None:
    """Token ids -> text with the split's tokenizer, the dataset's tokenizer folder or the configured one."""
    own = getattr(dataset, "tokenizer", None)
    if own is not None and hasattr(own, "decode"):
        return lambda ids: own.decode([ids])[0]
    folder = info.get("tokenizer") or tokenizer
    if info.get("kind") != "tokens":
        return None
    from ktransfer.data.text import load_tokenizer

    try:
        tok = load_tokenizer(folder)
    except (OSError, ValueError):  # no tokenizer to be had: the ids are written instead
        return None
    return lambda ids: tok.decode(ids, skip_special_tokens=True)


def _source(row: dict[str, Any], decode: Decoder | None) -> Any:
    """An example's input as text (tokens) or as a list (features, or ids without a tokenizer)."""
    if "input_ids" in row:
        ids = [int(i) for i in row["input_ids"][row["attention_mask"].bool()]] if "attention_mask" in row else \
            [int(i) for i in row["input_ids"]]
        return decode(ids) if decode is not None else ids
    value = row.get("inputs")
    return value.tolist() if isinstance(value, Tensor) else value


def _batches(dataset: Any, collate_fn: Any, batch_size: int) -> Iterator[tuple[int, list[dict[str, Any]], dict[str, Any]]]:
    for start in range(0, len(dataset), batch_size):
        rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        yield start, rows, collate_fn(rows)


@torch.no_grad()
def _classification(model: nn.Module, dataset: Any, collate_fn: Any, info: dict[str, Any], batch_size: int,
                    decode: Decoder | None) -> Iterator[dict[str, Any]]:
    classes = info.get("classes")

    def name(k: int) -> Any:
        return classes[k] if classes is not None and 0 <= k < len(classes) else k

    task = Task("classification")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for start, rows, batch in _batches(dataset, collate_fn, batch_size):
            batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
            out = task.forward(model, batch)
            probs = torch.softmax(out.logits.double(), -1)
            best, predicted = probs.max(-1)
            for i, row in enumerate(rows):
                label = int(row["labels"]) if "labels" in row else None
                line = {"index": start + i, "source": _source(row, decode)}
                if label is not None:
                    line["label"] = name(label)
                line.update(predicted=name(int(predicted[i])), probability=float(best[i]))
                if label is not None:
                    line["correct"] = label == int(predicted[i])
                yield line
    finally:
        model.train(was_training)


def _translations(model: nn.Module, dataset: Any, collate_fn: Any) -> Iterator[dict[str, Any]]:
    from ktransfer.bleu import has_references, translate

    if not has_references(dataset):
        raise ValueError("eval --outputs for seq2seq needs a split that keeps its references and tokenizer "
                         "(a translation dataset: bible_translation, parallel_tsv, parallel_jsonl)")
    ev = dataset.evaluation
    indices = list(range(len(dataset)))
    outputs = translate(model, dataset, indices, collate_fn, max_new_tokens=ev.max_new_tokens, num_beams=ev.num_beams,
                        batch_size=ev.batch_size)
    for i, output in zip(indices, outputs, strict=True):
        yield {"index": i, "source": dataset.sources[i], "reference": dataset.references[i], "output": output}


@torch.no_grad()
def _continuations(model: nn.Module, dataset: Any, decode: Decoder | None) -> Iterator[dict[str, Any]]:
    device = next(model.parameters()).device
    config = getattr(model, "config", None)
    eos = getattr(config, "eos_token_id", None)
    pad = getattr(config, "pad_token_id", None)
    was_training = model.training
    model.eval()
    show: Decoder = decode if decode is not None else list  # type: ignore[assignment]
    try:
        for i in range(len(dataset)):
            row = dataset[i]
            ids, labels = row["input_ids"], row["labels"]
            if "attention_mask" in row:
                keep = row["attention_mask"].bool()
                ids, labels = ids[keep], labels[keep]
            targets = (labels != IGNORE_INDEX).nonzero()
            cut = int(targets[0]) if len(targets) else len(ids)
            if cut == 0:  # every token is a target: the first half is the prompt
                cut = max(1, len(ids) // 2)
            prompt, reference = ids[:cut].tolist(), ids[cut:].tolist()
            output: list[int] = []
            if reference:
                generated = model.generate(input_ids=ids[:cut].unsqueeze(0).to(device), max_new_tokens=len(reference),
                                           do_sample=False, eos_token_id=eos, pad_token_id=pad if pad is not None else eos)
                output = generated[0, cut:].tolist()
            yield {"index": i, "source": show(prompt), "reference": show(reference), "output": show(output)}
    finally:
        model.train(was_training)


__all__ = ["write_outputs", "write_run_outputs"]
