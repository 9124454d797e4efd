"""Sharding the student and the frozen teacher across processes, one layer at a time (PyTorch FSDP2).

With `train.sharding: fsdp` under several processes, every repeated layer of each model and then
the model itself are wrapped by `torch.distributed.fsdp.fully_shard`: each process keeps 1/N of
every parameter (and of the student's optimizer state), and a layer's parameters are gathered
whole only while that layer runs. The teacher is sharded the same way but never trains: eval
mode, no gradients, no optimizer state. Everything the loop does with a model that involves its
parameters (gradient-norm clipping, saving whole weights, checkpoints of the local shards) goes
through the helpers here, and every one of them is collective: all processes call it together.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

# Where Hugging Face and similar models keep their repeated blocks, searched in this order when
# a model names no `_no_split_modules`.
LAYER_CONTAINERS = ("model.layers", "layers", "model.decoder.layers", "decoder.layers", "encoder.layer",
                    "bert.encoder.layer", "transformer.h", "h", "transformer.layers", "blocks", "layer")


class ShardingError(ValueError):
    """A run that cannot be sharded as configured (no layers found, a feature the sharded path does not serve)."""


def _dtensor_type() -> type:
    from torch.distributed.tensor import DTensor

    return DTensor


def is_sharded(model: nn.Module) -> bool:
    """Whether `model` holds parameters sharded across processes (DTensors)."""
    dtensor = _dtensor_type()
    return any(isinstance(p, dtensor) for p in model.parameters())


def _repeated_block_class(model: nn.Module) -> list[str]:
    """The class of the blocks in the first layer container (`LAYER_CONTAINERS`) the model has."""
    modules = dict(model.named_modules())
    for name in LAYER_CONTAINERS:
        container = modules.get(name)
        if isinstance(container, (nn.ModuleList, nn.Sequential)) and len(container) > 0:
            return sorted({type(block).__name__ for block in container})
    return []


def layer_class_names(model: nn.Module, names: Sequence[str] = (), role: str = "model") -> list[str]:
    """The class names of the layers of `model` (the `role`: student or teacher) to shard one by one.

    With `names` (train.shard_layers), those of them that occur in the model (the student and the
    teacher may differ); otherwise found from the model: its `_no_split_modules` (Hugging Face's
    list of blocks that must stay whole) when those classes occur in it, else the class of the
    blocks in a known layer container (`model.layers`, `encoder.layer`, `transformer.h`, ...).
    """
    present = {type(m).__name__ for m in model.modules() if m is not model}
    if names:
        found = [n for n in names if n in present]
        if not found:
            raise ShardingError(
                f"train.shard_layers: the {role} ({type(model).__name__}) has no module of class "
                f"{', '.join(map(repr, names))}; its module classes are: {', '.join(sorted(present))}"
            )
        return found
    declared = sorted({n for n in (getattr(model, "_no_split_modules", None) or []) if n in present})
    if declared:
        return declared
    found = _repeated_block_class(model)
    if found:
        return found
    declared_all = sorted(getattr(model, "_no_split_modules", None) or [])
    looked = (f"the classes of its _no_split_modules ({', '.join(declared_all)}), then " if declared_all
              else "a _no_split_modules list (it has none), then ")
    raise ShardingError(
        f"train.sharding=fsdp: cannot find the layers of the {role} ({type(model).__name__}) to shard; looked for "
        f"{looked}a list of blocks at {', '.join(LAYER_CONTAINERS)}. Name the layer class in train.shard_layers "
        f"(e.g. --set 'train.shard_layers=[MyBlock]'); its module classes are: {', '.join(sorted(present))}"
    )


def shard_model(model: nn.Module, class_names: Sequence[str], mesh: Any, frozen: bool = False) -> int:
    """Wrap each module of a class in `class_names`, then `model` itself, with `fully_shard`; the number of layers.

    A layer nested in another layer of the listed classes is wrapped first (FSDP2 wraps bottom-up).
    A `frozen` model (the teacher) also gives back its outermost parameters (embeddings, head)
    after every forward: with no backward to follow, FSDP2 would otherwise keep them gathered.
    """
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    wanted = set(class_names)
    layers = [m for m in model.modules() if type(m).__name__ in wanted and m is not model]
    reshard: bool | None = True if frozen else None  # None: FSDP2's choice (the root stays gathered for backward)
    for layer in reversed(layers):  # innermost first
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard)
    if callable(getattr(model, "generate", None)):
        # generate may call a part directly (an encoder-decoder's get_encoder()), bypassing the forward
        # hook that gathers the outermost parameters (the shared embeddings): gather them around it
        register_fsdp_forward_method(model, "generate")
    return len(layers)


def local_parameter_bytes(model: nn.Module) -> int:
    """Bytes of parameters this process holds: its shards of sharded parameters, whole others."""
    dtensor = _dtensor_type()
    total = 0
    for p in model.parameters():
        t = p.to_local() if isinstance(p, dtensor) else p
        total += t.numel() * t.element_size()
    return total


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the reduce-scatter of gradients for this backward (all but the last accumulated micro-batch)."""
    setter = getattr(model, "set_requires_gradient_sync", None)
    if enabled or setter is None:
        yield
        return
    setter(False)
    try:
        yield
    finally:
        setter(True)


def clip_grad_norm(params: Sequence[nn.Parameter], max_norm: float) -> Tensor:
    """Scale gradients so that their global L2 norm is at most `max_norm`; sharded and whole ones together.

    A sharded gradient contributes its local squares summed over processes; a whole one (already
    averaged over processes, e.g. a term's projection) counts once.
    """
    dtensor = _dtensor_type()
    grads = [p.grad for p in params if p.grad is not None]
    sharded = torch.zeros((), dtype=torch.float64)
    whole = torch.zeros((), dtype=torch.float64)
    for g in grads:
        if isinstance(g, dtensor):
            sharded += g.to_local().detach().double().pow(2).sum().cpu()
        else:
            whole += g.detach().double().pow(2).sum().cpu()
    if torch.distributed.is_initialized():
        device = grads[0].device if grads else torch.device("cpu")
        reduced = sharded.to(device)
        torch.distributed.all_reduce(reduced)
        sharded = reduced.cpu()
    norm = (sharded + whole).sqrt()
    scale = max_norm / (float(norm) + 1e-6)
    if scale < 1.0:
        for g in grads:
            (g.to_local() if isinstance(g, dtensor) else g).mul_(scale)
    return norm


def full_state_dict(model: nn.Module, keep: bool = True) -> dict[str, Tensor]:
    """The model's whole state dict on the CPU, its sharded tensors gathered one at a time.

    Collective: every process calls it; only those with `keep` (the one that writes the file)
    hold the gathered tensors, the others get {}.
    """
    dtensor = _dtensor_type()
    out: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        whole = value.full_tensor() if isinstance(value, dtensor) else value
        if keep:
            out[key] = whole.detach().cpu().contiguous().clone()
        del whole
    return out


# ---------------------------------------------------------------------------------- local shards
def _local(value: Any) -> Any:
    dtensor = _dtensor_type()
    if isinstance(value, dtensor):
        return value.to_local().detach().cpu().clone()
    if isinstance(value, Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: _local(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_local(v) for v in value]
    return value


def local_shards(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """This process's part of the training state: its shards of the model's tensors and of the optimizer state.

    Saved as plain tensors (the local pieces), restored by `load_local_shards` into a model and
    optimizer sharded the same way (the same number of processes).
    """
    return {"model": _local(model.state_dict()), "optimizer": _local(optimizer.state_dict())}


def load_local_shards(model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Copy saved local pieces into the model's shards and rebuild the optimizer state over them.

    The optimizer's per-parameter tensors of a sharded parameter become DTensors with that
    parameter's mesh and placements again, so the next update runs on the same shards.
    """
    dtensor = _dtensor_type()
    current = model.state_dict()
    missing = sorted(set(current) - set(saved["model"]))
    if missing:
        raise KeyError(f"the checkpoint's shards lack {missing[:5]}")
    with torch.no_grad():
        for key, value in current.items():
            target = value.to_local() if isinstance(value, dtensor) else value
            piece = saved["model"][key]
            if tuple(piece.shape) != tuple(target.shape):
                raise ValueError(f"the checkpoint's shard of {key} has shape {tuple(piece.shape)}, this process's "
                                 f"has {tuple(target.shape)}: it was written with another sharding")
            target.copy_(piece)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = saved["optimizer"]
    rebuilt: dict[int, dict[str, Any]] = {}
    for index, values in state["state"].items():
        param = params[int(index)]
        entry: dict[str, Any] = {}
        for name, value in values.items():
            if isinstance(param, dtensor) and isinstance(value, Tensor) and value.dim() > 0:
                local = value.to(param.to_local().device)
                entry[name] = dtensor.from_local(local, param.device_mesh, param.placements, run_check=False,
                                                 shape=param.shape, stride=param.stride())
            else:
                entry[name] = value
        rebuilt[int(index)] = entry
    optimizer.load_state_dict({"state": rebuilt, "param_groups": state["param_groups"]})


def device_mesh(device: torch.device, world: int) -> Any:
    """A one-dimensional mesh of all `world` processes on `device`'s kind (cpu: gloo, cuda: nccl)."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (world,))


def unservable_features(terms: Sequence[Any], stages: Sequence[Any]) -> list[str]:
    """What a run asks for that the sharded path cannot serve, one phrase each ([] when it can run sharded).

    A fused head reads the student's output layer directly (it is sharded). Sharded layers gather
    from every process at each forward pass, so every process must make the same passes: stages
    reading stored teacher outputs make none; a stage that runs the models itself serves sharding
    when it has `sharding_limits()` (the phrases of its settings that it cannot serve, [] when
    none); any other stage is refused.
    """
    out = []
    fused = [t.name for t in terms if getattr(t, "fused_head", False)]
    if fused:
        out.append(f"knowledge terms {fused} use fused_head (it reads the student's output layer, which is sharded)")
    unknown = []
    for stage in stages:
        limits = getattr(stage, "sharding_limits", None)
        if callable(limits):
            out.extend(f"batch stage {type(stage).__name__}: {phrase}" for phrase in limits())
        elif not getattr(stage, "provides_teacher_outputs", False):
            unknown.append(type(stage).__name__)
    if unknown:
        out.append(f"batch stages {unknown} run the models without keeping the processes' forward passes in step "
                   "(a stage that does declares it with sharding_limits())")
    return out


def missing_passes(n_examples: int, batch_size: int) -> int:
    """How many fewer batches this process's shard of `n_examples` (every world_size-th, as
    `ktransfer.engine.distributed.shard_batches` deals them) has than the largest shard's.

    Known from the sizes alone, so no process waits on a collective while another is still gathering layers.
    """
    world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    mine = len(range(rank, n_examples, world))
    most = -(-n_examples // world)
    return -(-most // batch_size) - -(-mine // batch_size)


def run_spare_passes(models: Sequence[nn.Module], extra: int, spare: dict[str, Any],
                     forward: Callable[[dict[str, Any]], Any], device: torch.device) -> None:
    """Call `forward(spare)` `extra` times, results dropped: the passes that a shorter shard lacks.

    Sharded layers gather their parameters from every process at each pass, so all processes
    must make the same number. `forward` makes one pass of each of `models` in the order of a
    real pass; they run in eval mode, without gradients.
    """
    if extra <= 0:
        return
    batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in spare.items()}
    was = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        with torch.no_grad():
            for _ in range(extra):
                forward(batch)
    finally:
        for m, mode in zip(models, was, strict=True):
            m.train(mode)
