"""Students cut from a Hugging Face teacher: chosen layers, optionally narrower MLPs or fewer heads, weights copied.

`cut_student(teacher, layers=[0, 2])` is the teacher with only those layers of each layer stack:
the decoder stack of a decoder-only model (Llama, Qwen2, Mistral: `model.layers`; GPT-2:
`transformer.h`), the encoder of an encoder (BERT: `encoder.layer`), or both stacks of an
encoder-decoder (Marian, BART: `encoder.layers` and `decoder.layers`, chosen together or apart).
Everything else (embeddings, final norm, output head, pooler) is copied, or with
`share_embeddings` the student holds the teacher's own input embedding and output layer.
Keeping every layer reproduces the teacher exactly; keeping some gives the model a hand-written
copy of those layers gives (layer numbers of the KV cache renumbered, per-layer config lists cut).

`intermediate_size` keeps that many MLP units of every kept layer (rows of the input projections,
columns of the output projection), `num_heads` that many attention heads (rows of the query,
key and value projections, columns of the output projection; under grouped-query attention the
same number of query heads per key/value head, all key/value heads kept). `keep: norm` keeps the
units or heads whose weights have the largest norm (in their original order), `keep: first` the
first ones. What was kept is recorded on the student's config (`config.ktransfer_cut`) and
returned in full by `cut_student_with_record`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

Keep = Literal["norm", "first"]
# Where a model's layer stacks live, relative to its base model; the first path present is used.
SINGLE_STACKS = ("layers", "h", "encoder.layer", "decoder.layers", "gpt_neox.layers")
PAIR_STACKS = {"encoder": ("encoder.layers", "encoder.block"), "decoder": ("decoder.layers", "decoder.block")}
# The config key holding each stack's depth, first present wins.
DEPTH_KEYS = {"layers": ("num_hidden_layers",), "encoder": ("encoder_layers", "num_layers"),
              "decoder": ("decoder_layers", "num_decoder_layers")}
MLP_KEYS = {"layers": ("intermediate_size", "n_inner", "ffn_dim"), "encoder": ("encoder_ffn_dim", "d_ff"),
            "decoder": ("decoder_ffn_dim", "d_ff")}


def _get(root: nn.Module, dotted: str) -> Any:
    for part in dotted.split("."):
        root = getattr(root, part, None)  # type: ignore[assignment]
        if root is None:
            return None
    return root


def _set(root: nn.Module, dotted: str, value: nn.Module) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        root = getattr(root, part)
    setattr(root, last, value)


def layer_stacks(model: nn.Module) -> dict[str, str]:
    """{stack name: dotted path from the model}: `layers` for decoder-only models and encoders, `encoder` and
    `decoder` for encoder-decoders; an error naming what was looked for when none is found."""
    base = model.base_model
    prefix = "" if base is model else f"{model.base_model_prefix}."
    pair = {name: next((p for p in paths if isinstance(_get(base, p), nn.ModuleList)), None)
            for name, paths in PAIR_STACKS.items()}
    if getattr(model.config, "is_encoder_decoder", False) and all(pair.values()):
        return {name: prefix + str(path) for name, path in pair.items()}
    single = next((p for p in SINGLE_STACKS if isinstance(_get(base, p), nn.ModuleList)), None)
    if single is None:
        raise ValueError(f"cut: no layer stack found in {type(model).__name__} (looked for "
                         f"{', '.join(SINGLE_STACKS + tuple(p for v in PAIR_STACKS.values() for p in v))})")
    return {"layers": prefix + single}


def choose_layers(
    depth: int, layers: Sequence[int] | None = None, every: int | None = None, first: int | None = None,
    last: int | None = None, where: str = "layers", stack: str = "",
) -> list[int]:
    """The teacher layers to keep: `layers` as listed, every `every`-th counted from the top (so the last layer
    is kept: 6 layers, every 2 -> [1, 3, 5]), the `first` and/or `last` n, or (none given) all of them."""
    given = [k for k, v in (("layers", layers), ("every", every), ("first/last", first if first is not None else last))
             if v is not None]
    if len(given) > 1:
        raise ValueError(f"{where}: give one of layers, every, or first/last; got {', '.join(given)}")
    listing = f"its {depth} layers{f' ({stack})' if stack else ''} are 0 to {depth - 1}"
    if layers is not None:
        chosen = [int(i) for i in layers]
        missing = [i for i in chosen if not 0 <= i < depth]
        if missing:
            raise ValueError(f"{where}: the teacher has no layer {missing[0]}; {listing}")
        if not chosen or any(b <= a for a, b in zip(chosen, chosen[1:])):
            raise ValueError(f"{where}: expected teacher layers in increasing order, each once, got {chosen}")
        return chosen
    if every is not None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        return list(range(depth - 1, -1, -every))[::-1]
    if first is not None or last is not None:
        for key, n in (("first", first), ("last", last)):
            if n is not None and not 0 <= n <= depth:
                raise ValueError(f"{key} must be in [0, {depth}]; {listing}")
        chosen = sorted(set(range(first or 0)) | set(range(depth - (last or 0), depth)))
        if not chosen:
            raise ValueError(f"first/last keep no layer; {listing}")
        return chosen
    return list(range(depth))


def _config_key(config: Any, keys: Sequence[str]) -> str | None:
    present = config.to_dict()
    return next((k for k in keys if k in present), None)


def _renumber(layer: nn.Module, index: int) -> None:
    """Set every `layer_idx` inside `layer` (the KV cache's slot) to `index`."""
    for module in layer.modules():
        if isinstance(getattr(module, "layer_idx", None), int):
            module.layer_idx = index


def _slice_layer_lists(config: Any, depth: int, chosen: list[int]) -> None:
    """Cut per-layer config lists (e.g. Qwen2's `layer_types`) to the chosen layers."""
    for key, value in config.to_dict().items():
        if "layer" in key and isinstance(value, list) and len(value) == depth:
            setattr(config, key, [value[i] for i in chosen])


# ------------------------------------------------------------------------------------------- MLP units
def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D"  # GPT-2's transposed linear layer: weight (in, out)


def _mlp_parts(layer: nn.Module) -> tuple[list[nn.Module], nn.Module] | None:
    """(input projections, output projection) of a layer's MLP, or None for an unknown layout."""
    for ins, out in ((("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj"), (("intermediate.dense",), "output.dense"),
                     (("fc1",), "fc2"), (("mlp.c_fc",), "mlp.c_proj"), (("mlp.fc1",), "mlp.fc2")):
        found = [_get(layer, p) for p in ins]
        if all(m is not None for m in found) and _get(layer, out) is not None:
            return found, _get(layer, out)
    return None


def _out_rows(module: nn.Module) -> torch.Tensor:
    """The weight with one row per output unit."""
    return module.weight.t() if _is_conv1d(module) else module.weight


def _in_columns(module: nn.Module) -> torch.Tensor:
    """The weight with one column per input unit."""
    return module.weight.t() if _is_conv1d(module) else module.weight


def _keep_outputs(module: nn.Module, index: torch.Tensor) -> None:
    w = module.weight.detach()
    module.weight = nn.Parameter((w[:, index] if _is_conv1d(module) else w[index]).clone())
    if getattr(module, "bias", None) is not None:
        module.bias = nn.Parameter(module.bias.detach()[index].clone())
    if _is_conv1d(module):
        module.nf = len(index)
    else:
        module.out_features = len(index)


def _keep_inputs(module: nn.Module, index: torch.Tensor) -> None:
    w = module.weight.detach()
    module.weight = nn.Parameter((w[index] if _is_conv1d(module) else w[:, index]).clone())
    if not _is_conv1d(module):
        module.in_features = len(index)


def _top(scores: torch.Tensor, n: int, keep: str) -> torch.Tensor:
    """Indices of the `n` kept items, ascending: the first n, or the n of largest score."""
    if keep == "first":
        return torch.arange(n)
    return torch.sort(torch.topk(scores.double(), n).indices).values


def narrow_mlp(layer: nn.Module, size: int, keep: str, where: str) -> list[int]:
    """Keep `size` MLP units of `layer`; the kept unit indices."""
    parts = _mlp_parts(layer)
    if parts is None:
        raise ValueError(f"{where}: intermediate_size: no MLP of a known layout in {type(layer).__name__} (known: "
                         "gate/up/down_proj, intermediate/output.dense, fc1/fc2, c_fc/c_proj)")
    ins, out = parts
    width = _out_rows(ins[0]).shape[0]
    if not 1 <= size <= width:
        raise ValueError(f"{where}: intermediate_size must be in [1, {width}] (the teacher's), got {size}")
    score = _in_columns(out).detach().double().norm(dim=0)
    for module in ins:
        score = score * _out_rows(module).detach().double().norm(dim=1)
    index = _top(score, size, keep)
    for module in ins:
        _keep_outputs(module, index)
    _keep_inputs(out, index)
    return index.tolist()


# ------------------------------------------------------------------------------------------- attention heads
def _heads_llama(attn: nn.Module, n: int, keep: str, config: Any, where: str) -> list[int]:
    heads, kv = int(config.num_attention_heads), int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    hd = int(attn.head_dim)
    if not 1 <= n <= heads or n % kv:
        raise ValueError(f"{where}: num_heads must be a multiple of the teacher's {kv} key/value heads in [1, {heads}] "
                         f"(the same number of query heads per key/value head), got {n}")
    group, per = heads // kv, n // kv
    q = attn.q_proj.weight.detach().double().view(heads, hd, -1)
    o = attn.o_proj.weight.detach().double().view(-1, heads, hd)
    score = q.flatten(1).norm(dim=1) * o.transpose(0, 1).flatten(1).norm(dim=1)
    chosen = [g * group + int(j) for g in range(kv) for j in _top(score[g * group:(g + 1) * group], per, keep)]
    rows = torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in chosen])
    _keep_outputs(attn.q_proj, rows)
    _keep_inputs(attn.o_proj, rows)
    attn.num_key_value_groups = per
    return chosen


def _heads_bert(attn: nn.Module, out: nn.Module, n: int, keep: str, where: str) -> list[int]:
    heads, hd = int(attn.num_attention_heads), int(attn.attention_head_size)
    if not 1 <= n <= heads:
        raise ValueError(f"{where}: num_heads must be in [1, {heads}] (the teacher's), got {n}")
    q = attn.query.weight.detach().double().view(heads, hd, -1)
    o = out.weight.detach().double().view(-1, heads, hd)
    chosen = _top(q.flatten(1).norm(dim=1) * o.transpose(0, 1).flatten(1).norm(dim=1), n, keep).tolist()
    rows = torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in chosen])
    for proj in (attn.query, attn.key, attn.value):
        _keep_outputs(proj, rows)
    _keep_inputs(out, rows)
    attn.num_attention_heads, attn.all_head_size = n, n * hd
    return chosen


def fewer_heads(layer: nn.Module, n: int, keep: str, config: Any, where: str) -> list[int]:
    """Keep `n` attention heads of `layer`; the kept head indices."""
    llama = _get(layer, "self_attn")
    if llama is not None and all(hasattr(llama, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim")) \
            and hasattr(llama, "num_key_value_groups"):
        return _heads_llama(llama, n, keep, config, where)
    bert, out = _get(layer, "attention.self"), _get(layer, "attention.output.dense")
    if bert is not None and out is not None and hasattr(bert, "query"):
        return _heads_bert(bert, out, n, keep, where)
    raise ValueError(f"{where}: num_heads: the attention of {type(layer).__name__} cannot be cut here; fewer heads are "
                     "supported for Llama-style (q/k/v/o_proj with head_dim: Llama, Qwen2, Mistral) and BERT-style "
                     "(query/key/value) attention")


# ------------------------------------------------------------------------------------------- the cut
def cut_student_with_record(
    teacher: nn.Module, *, layers: Sequence[int] | None = None, every: int | None = None, first: int | None = None,
    last: int | None = None, encoder_layers: Sequence[int] | None = None, decoder_layers: Sequence[int] | None = None,
    intermediate_size: int | None = None, num_heads: int | None = None, keep: Keep = "norm",
    share_embeddings: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """(student, record): the teacher with the chosen layers (see the module docstring); the teacher is unchanged.

    `encoder_layers` / `decoder_layers` choose an encoder-decoder's stacks apart (each overrides the shared choice).
    """
    if keep not in ("norm", "first"):
        raise ValueError(f"keep: invalid value '{keep}'; valid choices: norm, first")
    stacks = layer_stacks(teacher)
    apart = {"encoder": encoder_layers, "decoder": decoder_layers}
    for name, value in apart.items():
        if value is not None and name not in stacks:
            raise ValueError(f"{name}_layers: {type(teacher).__name__} has no {name} stack; use layers")
    originals = {name: _get(teacher, path) for name, path in stacks.items()}
    chosen = {name: choose_layers(len(stack), apart.get(name) if apart.get(name) is not None else layers,
                                  None if apart.get(name) is not None else every,
                                  None if apart.get(name) is not None else first,
                                  None if apart.get(name) is not None else last,
                                  where=f"{name}_layers" if apart.get(name) is not None else "layers", stack=stacks[name])
              for name, stack in originals.items()}
    for name, path in stacks.items():  # copy everything but the layer stacks, then only the chosen layers
        _set(teacher, path, nn.ModuleList())
    try:
        student = copy.deepcopy(teacher)
    finally:
        for name, path in stacks.items():
            _set(teacher, path, originals[name])
    config = student.config
    record: dict[str, Any] = {"teacher": getattr(teacher.config, "_name_or_path", "") or type(teacher).__name__,
                              "architecture": type(teacher).__name__, "layers": {}, "stacks": dict(stacks)}
    for name, path in stacks.items():
        depth = len(originals[name])
        kept = nn.ModuleList(copy.deepcopy(originals[name][i]) for i in chosen[name])
        for k, layer in enumerate(kept):
            _renumber(layer, k)
        _set(student, path, kept)
        key = _config_key(config, DEPTH_KEYS[name])
        if key is not None:
            setattr(config, key, len(kept))
        if name != "encoder":
            _slice_layer_lists(config, depth, chosen[name])
        record["layers"][name] = chosen[name]
        if intermediate_size is not None:
            record.setdefault("mlp_units", {})[name] = [
                narrow_mlp(layer, intermediate_size, keep, f"{name}[{k}]") for k, layer in enumerate(kept)]
            mlp_key = _config_key(config, MLP_KEYS[name])
            if mlp_key is not None:
                setattr(config, mlp_key, intermediate_size)
        if num_heads is not None:
            record.setdefault("heads", {})[name] = [
                fewer_heads(layer, num_heads, keep, config, f"{name}[{k}]") for k, layer in enumerate(kept)]
    if num_heads is not None:
        if hasattr(config, "head_dim") and "layers" in stacks:
            config.head_dim = int(config.head_dim or config.hidden_size // config.num_attention_heads)
            config.num_attention_heads = num_heads
        record["num_heads"] = num_heads
    if intermediate_size is not None:
        record["intermediate_size"] = intermediate_size
    if share_embeddings:
        student.set_input_embeddings(teacher.get_input_embeddings())
        head = teacher.get_output_embeddings()
        if head is not None:
            student.set_output_embeddings(head)
    record.update(keep=keep, embeddings="shared" if share_embeddings else "copied")
    config.ktransfer_cut = {k: v for k, v in record.items() if k != "mlp_units"}  # unit lists stay in the record
    return student, record


def cut_student(teacher: nn.Module, **kwargs: Any) -> nn.Module:
    """The student `cut_student_with_record` makes, without the record (it is on `student.config.ktransfer_cut`)."""
    return cut_student_with_record(teacher, **kwargs)[0]


def cut_from_source(
    teacher: str, auto_class: str = "AutoModelForCausalLM", *, revision: str | None = None, dtype: str = "auto",
    subfolder: str | None = None, attn_implementation: str | None = "eager", num_classes: int | None = None,
    **cut: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """(student, record) cut from the pretrained teacher `teacher` (a hub id or local folder, `models.hub`).

    `num_classes` gives a sequence classifier a new head of that many classes (the teacher's is not kept).
    """
    from ktransfer.models.hub import SOURCE_ATTR, load_pretrained

    kwargs: dict[str, Any] = {}
    if num_classes is not None and auto_class == "AutoModelForSequenceClassification":
        kwargs = {"num_labels": num_classes, "ignore_mismatched_sizes": True}
    model = load_pretrained(teacher, auto_class, revision=revision, dtype=dtype, subfolder=subfolder,
                            attn_implementation=attn_implementation, kwargs=kwargs, who="hf_cut")
    student, record = cut_student_with_record(model, **cut)
    for attr in (SOURCE_ATTR, "ktransfer_tokenizer"):
        if hasattr(model, attr):
            setattr(student, attr, getattr(model, attr))
    record["teacher"] = teacher
    student.config.ktransfer_cut["teacher"] = teacher
    return student, record


def cut_from_model(model: nn.Module, name: str, **cut: Any) -> tuple[nn.Module, dict[str, Any]]:
    """(student, record) cut from an already built model (a run's student); `name` is recorded as its teacher."""
    from ktransfer.models.hub import SOURCE_ATTR

    student, record = cut_student_with_record(model, **cut)
    for attr in (SOURCE_ATTR, "ktransfer_tokenizer"):
        if hasattr(model, attr):
            setattr(student, attr, getattr(model, attr))
    record["teacher"] = name
    student.config.ktransfer_cut["teacher"] = name
    return student, record
