"""The engine's settings, one dataclass per config section: `optim`, `schedule` and `train`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ktransfer.schema import validate
from ktransfer.tasks import metric_mode

# Trackers of Accelerate that write locally (nothing here may need the network).
TRACKERS = ("tensorboard", "aim", "mlflow", "clearml", "dvclive")


@dataclass
class OptimConfig:
    """Optimizer of the student (the teacher has none)."""

    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float | None = 1.0

    def __post_init__(self) -> None:
        validate(self, "optim")
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"optim.max_grad_norm must be > 0 or null, got {self.max_grad_norm}")


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, by Hugging Face `transformers.get_scheduler` name."""

    name: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "constant"
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        validate(self, "schedule")
        if self.warmup_steps < 0:
            raise ValueError(f"schedule.warmup_steps must be >= 0, got {self.warmup_steps}")


@dataclass
class TrainConfig:
    """Length, batching, precision, evaluation, early stopping, checkpointing and tracking of a run.

    `max_steps` counts optimizer steps. `batch_size` is global: one micro-batch of `batch_size`
    examples is split across all processes (each takes batch_size / world_size), and one
    optimizer step consumes `grad_accum_steps` micro-batches, so a step sees
    batch_size x grad_accum_steps examples whatever the number of processes. Token-level losses
    are normalised by the target count of the whole step (all micro-batches, all processes).
    `metric` (from the evaluator) picks the best model; with `patience` set, training stops
    after that many evaluations without improvement. A checkpoint (the whole training state, for
    `resume`) is written every `checkpoint_every` steps (0: not by steps), every
    `checkpoint_minutes` of training wall time (0: not by time; by default every 10 minutes, so a
    kill loses at most that much work whatever the step count), and at the end. `report_to` sends metrics to trackers Accelerate supports (e.g.
    ["tensorboard"]), written under the run directory's `tracking/`. `sharding: fsdp` splits the
    student and the teacher across the processes layer by layer instead of copying them whole.
    """

    max_steps: int = 500
    batch_size: int = 64
    eval_batch_size: int = 512
    grad_accum_steps: int = 1
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    seed: int = 0
    eval_every: int = 100
    log_every: int = 10
    checkpoint_every: int = 0
    checkpoint_minutes: float = 10.0
    keep_checkpoints: int = 2
    metric: str = "accuracy"
    # "max" keeps the checkpoint with the highest metric, "min" the lowest; null (the default)
    # takes it from the metric: min for loss, perplexity and names containing "loss", else max
    mode: Literal["max", "min"] | None = None
    patience: int | None = None
    report_to: list[str] = field(default_factory=list)
    # Batch examples of similar length together (within windows of 50 batches, batch order
    # shuffled), so that padded batches waste little compute; the epoch still sees every example.
    group_by_length: bool = False
    # Intra-op CPU threads of this process (torch.set_num_threads, process-wide, set when training
    # starts); null leaves torch's default (one per core). Runs sharing a machine want fewer.
    num_threads: int | None = None
    # "fsdp": under several processes, shard the student and the frozen teacher across them one
    # layer at a time (PyTorch FSDP2); each process then holds 1/N of their parameters and of the
    # optimizer state. "none" (the default) keeps a whole copy of both on every process.
    sharding: Literal["none", "fsdp"] = "none"
    # Class names of the layers that sharding wraps one by one (e.g. [LlamaDecoderLayer]); empty
    # (the default) takes them from each model: its _no_split_modules, else the class of the
    # blocks in model.layers, encoder.layer, transformer.h and similar lists.
    shard_layers: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        validate(self, "train")
        unknown = sorted(set(self.report_to) - set(TRACKERS))
        if unknown:
            raise ValueError(f"train.report_to: unknown tracker '{unknown[0]}'; valid choices: {', '.join(TRACKERS)}")
        for key in ("max_steps", "batch_size", "eval_batch_size", "grad_accum_steps", "eval_every", "log_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        if self.checkpoint_every < 0 or self.keep_checkpoints < 1:
            raise ValueError("train.checkpoint_every must be >= 0 and train.keep_checkpoints >= 1")
        if not self.checkpoint_minutes >= 0:
            raise ValueError(f"train.checkpoint_minutes must be >= 0 (0: no checkpoints by time), got "
                             f"{self.checkpoint_minutes}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"train.patience must be >= 1 or null, got {self.patience}")
        if self.shard_layers and self.sharding == "none":
            raise ValueError("train.shard_layers names the layers to shard, but train.sharding is 'none'; "
                             "set train.sharding=fsdp or drop train.shard_layers")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"train.num_threads must be >= 1 or null, got {self.num_threads}")

    @property
    def resolved_mode(self) -> Literal["max", "min"]:
        """`mode` as given, or else the direction in which `metric` improves."""
        return self.mode if self.mode is not None else metric_mode(self.metric)
