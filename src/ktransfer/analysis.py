"""Gradient analysis: which order of KL does a teacher/student pair favour, and why.

At one token with student logits z, student distribution q = softmax(z), teacher p, and the
per-token reward r_v = log p_v - log q_v, the gradients of the two KLs with respect to z are

    forward   KL(p || q) = sum_v p_v log(p_v / q_v):   g_F = q - p
    backward  KL(q || p) = sum_v q_v log(q_v / p_v):   g_B = q * (log q - log p - KL(q || p))
                                                          = -q * (r - E_q[r])

(g_B is a policy gradient: each token's score e_v - q weighted by q_v times its centred
reward). Each is split into

    supervised-target part  S = q - p         the pull of cross-entropy towards the teacher's
                                              distribution as a fixed soft target;
    reward-weighted part    R = g - (q - p)   what the student's own probabilities and the
                                              rewards add: R_F = 0, and
                                              R_B = -q * (r - E_q[r]) - (q - p).

Near agreement (q = p + d) g_B = q * d / p + O(d^2) = d + O(d^2), so R_B is second order: the
two orders differ only where the student is far from the teacher, and R_B is the mode-seeking
part of backward KL (it withdraws mass from tokens the teacher finds unlikely, log p_v << log q_v).
Parameter gradients are these logit gradients back-propagated through the student
(vector-Jacobian products), reported as norms and cosines; per token position and in
aggregate, with the entropies (nats) and peakedness (largest probability) of both models.

The reading (`reading`) is a rule of thumb applied to these measured quantities, not a
measurement of which order trains the better student: it looks at one point of training (the
student's current weights) on a few batches. When the teacher is near uniform (mean entropy
above NEAR_UNIFORM of log V) its distribution carries little to transfer and either gradient
mostly pushes the student towards uniform, so the reading is "inconclusive" and names no order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ktransfer.tasks import Task

# The fraction of the largest possible entropy, log V, above which a teacher counts as near
# uniform (V = 4,000: entropy above 6.6 nats, as if choosing among more than ~760 tokens).
NEAR_UNIFORM = 0.8

# per-token statistics, in the order of the report's tables
TOKEN_STATS = ("norm_forward", "norm_backward", "norm_supervised", "norm_reward", "cosine", "kl_forward",
               "kl_backward", "entropy_teacher", "entropy_student", "peak_teacher", "peak_student")


def kl_logit_gradients(student_logits: Tensor, teacher_logits: Tensor) -> dict[str, Tensor]:
    """Per-row gradients of forward and backward KL with respect to the student's logits, and their parts.

    Returns `forward` (q - p), `backward` (q (log q - log p - KL(q||p))), `supervised` (q - p)
    and `reward` (backward - (q - p)), each of the logits' shape, in float64. Entries with
    q_v = 0 contribute 0 (0 log 0 = 0).
    """
    z = student_logits.double()
    log_q = torch.log_softmax(z, -1)
    log_p = torch.log_softmax(teacher_logits.double(), -1)
    q, p = log_q.exp(), log_p.exp()
    log_ratio = torch.where(q > 0, log_q - log_p, torch.zeros_like(q))
    kl_b = (q * log_ratio).sum(-1, keepdim=True)
    forward = q - p
    backward = q * (log_ratio - kl_b)
    return {"forward": forward, "backward": backward, "supervised": forward, "reward": backward - forward}


def _entropy(log_probs: Tensor) -> Tensor:
    probs = log_probs.exp()
    return -torch.where(probs > 0, probs * log_probs, torch.zeros_like(probs)).sum(-1)


def _cos(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-300)


@dataclass
class GradientReport:
    """What `gradient_analysis` found: per-position means, aggregates, and a reading of them.

    `verdict` is the reading's conclusion: "forward", "backward", "either" (the gradients agree)
    or "inconclusive" (a near-uniform teacher); `aggregate["log_vocab"]` is log V, the largest
    entropy a distribution over the V outputs can have.
    """

    positions: list[int]
    per_position: dict[str, list[float]]
    aggregate: dict[str, float]
    tokens: int
    reading: str = ""
    verdict: str = ""
    plot: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _flat_grad(outputs: Tensor, params: list[nn.Parameter], grad: Tensor) -> Tensor:
    grads = torch.autograd.grad(outputs, params, grad_outputs=grad.to(outputs.dtype), retain_graph=True,
                                allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).double()
                      for g, p in zip(grads, params, strict=True)])


def gradient_analysis(
    student: nn.Module,
    teacher: nn.Module,
    batches: Iterable[tuple[dict[str, Any], dict[str, Any]] | dict[str, Any]],
    task: Task,
    *,
    vocab_size: int | None = None,
    plot_path: str | Path | None = None,
) -> GradientReport:
    """Gradients of forward and backward KL (summed over target tokens) for `student` against `teacher`.

    `batches` yields batch dicts (or (student_batch, teacher_batch) pairs); both models run in
    eval mode (restored afterwards). Logit-space statistics are per token; parameter-space
    ones (`param_*`) are for the whole of `batches`: the gradient of the summed KL, and of its
    supervised and reward-weighted parts. With `plot_path`, a PNG of the per-position curves.
    """
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the student has no trainable parameters to analyse")
    sums: dict[str, dict[int, float]] = {k: {} for k in TOKEN_STATS}
    counts: dict[int, int] = {}
    totals = {k: 0.0 for k in TOKEN_STATS}
    param = {k: torch.zeros(sum(p.numel() for p in params), dtype=torch.float64)
             for k in ("forward", "backward", "reward")}
    tokens = 0
    vocab = 0
    modes = (student.training, teacher.training)
    student.eval()
    teacher.eval()
    try:
        for item in batches:
            s_batch, t_batch = item if isinstance(item, tuple) else (item, item)
            s_out = task.forward(student, s_batch)
            with torch.no_grad():
                t_out = task.forward(teacher, t_batch)
            s_logits, t_logits = s_out.logits, t_out.logits
            if vocab_size is not None:
                s_logits, t_logits = s_logits[..., :vocab_size], t_logits[..., :vocab_size]
            if s_logits.shape[-1] != t_logits.shape[-1]:
                raise ValueError(f"student has vocabulary {s_logits.shape[-1]}, teacher {t_logits.shape[-1]}: pass "
                                 "vocab_size if one embedding matrix is padded")
            vocab = s_logits.shape[-1]
            mask = s_out.mask if s_out.mask is not None else torch.ones(s_logits.shape[:-1], dtype=torch.bool)
            position = torch.arange(mask.shape[-1]).expand_as(mask) if mask.dim() > 1 else torch.zeros_like(mask, dtype=torch.long)
            z, t = s_logits[mask], t_logits[mask]
            pos = position[mask].tolist()
            grads = kl_logit_gradients(z.detach(), t)
            for name in param:
                param[name] += _flat_grad(z, params, grads[name])
            log_q, log_p = torch.log_softmax(z.detach().double(), -1), torch.log_softmax(t.double(), -1)
            q, p = log_q.exp(), log_p.exp()
            stats = {
                "norm_forward": grads["forward"].norm(dim=-1), "norm_backward": grads["backward"].norm(dim=-1),
                "norm_supervised": grads["supervised"].norm(dim=-1), "norm_reward": grads["reward"].norm(dim=-1),
                "cosine": _cos(grads["forward"], grads["backward"]),
                "kl_forward": torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1),
                "kl_backward": torch.where(q > 0, q * (log_q - log_p), torch.zeros_like(q)).sum(-1),
                "entropy_teacher": _entropy(log_p), "entropy_student": _entropy(log_q),
                "peak_teacher": p.max(-1).values, "peak_student": q.max(-1).values,
            }
            for name, values in stats.items():
                for k, v in zip(pos, values.tolist(), strict=True):
                    sums[name][k] = sums[name].get(k, 0.0) + v
                totals[name] += float(values.sum())
            for k in pos:
                counts[k] = counts.get(k, 0) + 1
            tokens += len(pos)
    finally:
        student.train(modes[0])
        teacher.train(modes[1])
    if tokens == 0:
        raise ValueError("the batches have no target tokens to analyse")
    positions = sorted(counts)
    per_position = {name: [sums[name][k] / counts[k] for k in positions] for name in TOKEN_STATS}
    aggregate = {name: totals[name] / tokens for name in TOKEN_STATS}
    aggregate.update(
        param_norm_forward=float(param["forward"].norm()), param_norm_backward=float(param["backward"].norm()),
        param_norm_supervised=float(param["forward"].norm()), param_norm_reward=float(param["reward"].norm()),
        param_cosine=float(_cos(param["forward"], param["backward"])), log_vocab=math.log(vocab),
    )
    report = GradientReport(positions=positions, per_position=per_position, aggregate=aggregate, tokens=tokens)
    report.verdict, report.reading = read(report)
    if plot_path is not None:
        report.plot = str(plot_report(report, plot_path))
    return report


def read(report: GradientReport) -> tuple[str, str]:
    """The reading's verdict ("forward", "backward", "either" or "inconclusive") and its paragraph.

    Rule, on the aggregates: a teacher whose mean entropy exceeds NEAR_UNIFORM x log V is near
    uniform, and the reading is inconclusive. Otherwise, where the gradients agree (parameter
    cosine >= 0.9) the choice hardly matters and forward KL is the cheaper one (no sampling);
    else a spread-out teacher (entropy above the student's, or largest probability below 0.5)
    favours backward KL, which lets the student settle on the teacher's modes instead of
    covering mass it cannot represent, and a peaked teacher favours forward KL, whose gradient
    is then the larger and steadier signal.
    """
    a = report.aggregate
    h_t, h_s, peak_t = a["entropy_teacher"], a["entropy_student"], a["peak_teacher"]
    cos, share = a["param_cosine"], a["norm_reward"] / max(a["norm_supervised"], 1e-300)
    log_v = a.get("log_vocab")
    what = ("Reading (a rule of thumb on the quantities measured here, at the student's current weights on the "
            "analysed batches; it does not measure which order trains the better student): ")
    facts = (f"Over {report.tokens} target tokens the teacher's entropy is {h_t:.3g} nats (largest probability "
             f"{peak_t:.2f}) and the student's {h_s:.3g} nats; the forward- and backward-KL gradients have cosine "
             f"{cos:.2f} in parameter space ({a['cosine']:.2f} per token in logit space), and the reward-weighted "
             f"part of the backward gradient is {share:.2f} times its supervised-target part.")
    if log_v is not None and h_t > NEAR_UNIFORM * log_v:
        return "inconclusive", (
            f"{what}inconclusive: teacher near uniform (entropy {h_t:.3g} of log V = {log_v:.3g} nats; near uniform "
            f"means above {NEAR_UNIFORM:.0%} of log V). {facts} A near-uniform teacher has little to transfer "
            "and its gradients mostly pull the student towards uniform, so they say nothing about which order of KL "
            "suits the pair; analyse a trained teacher.")
    if cos >= 0.9:
        verdict = "either", ("The two orders pull the student the same way here: it is already near the teacher, "
                             "where the reward-weighted part vanishes to second order, so forward KL, which needs no "
                             "sampling, is the economical choice.")
    elif h_t > h_s or peak_t < 0.5:
        verdict = "backward", ("The teacher spreads its mass over several tokens; forward KL would make the student "
                               "cover all of it (mean-seeking, blurring), while backward KL, through its "
                               "reward-weighted part, withdraws mass from tokens the teacher finds unlikely and settles "
                               "on the teacher's modes: this pair favours backward KL (mode-seeking), the better fit "
                               "for a small student that generates.")
    else:
        verdict = "forward", ("The teacher is peaked; both orders aim at the same modes, but the backward gradient is "
                              "scaled by the student's own probabilities and is weak where the student puts little "
                              "mass on the teacher's choice, so forward KL gives the larger and steadier signal: this "
                              "pair favours forward KL.")
    return verdict[0], f"{what}{facts} {verdict[1]}"


def reading(report: GradientReport) -> str:
    """The reading's paragraph (see `read`)."""
    return read(report)[1]


def plot_report(report: GradientReport, path: str | Path) -> Path:
    """Per-position curves: gradient norms, cosine, entropies and peakedness (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x, pp = report.positions, report.per_position
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    panels = (
        (axes[0, 0], ("norm_forward", "norm_backward", "norm_reward"), "gradient norm (logits)"),
        (axes[0, 1], ("cosine",), "cosine(forward, backward)"),
        (axes[1, 0], ("entropy_teacher", "entropy_student"), "entropy (nats)"),
        (axes[1, 1], ("peak_teacher", "peak_student"), "largest probability"),
    )
    for ax, names, title in panels:
        for name in names:
            ax.plot(x, pp[name], marker="o", label=name)
        ax.set_title(title)
        ax.set_xlabel("token position")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def analyze_target(target: str | Path, out: str | Path | None = None, *, batches: int = 4, batch_size: int = 32,
                   split: str = "val", which: str = "best") -> tuple[GradientReport, Path]:
    """`ktransfer analyze`: a run directory (its student's `which` weights) or a run config (models as built).

    Writes gradient_analysis.json and gradient_analysis.png into `out` (default: the run
    directory, or runs/<config name> for a config) and returns the report and that folder.
    """
    from torch.utils.data import DataLoader

    from ktransfer.building import _architecture, build_model, load_data
    from ktransfer.checkpoint import load_weights
    from ktransfer.config import RunConfig
    from ktransfer.engine.batches import split_batch
    from ktransfer.io import write_json_atomic

    target = Path(target)
    is_run = target.is_dir()
    if is_run and not (target / "config.yaml").is_file():
        raise FileNotFoundError(f"not a run directory (no config.yaml) nor a config file: {target}")
    cfg = RunConfig.from_yaml(target / "config.yaml" if is_run else target)
    if cfg.teacher_model is None:
        raise ValueError(f"{target}: the run has no teacher model (none, or a store of its outputs); gradient analysis "
                         "compares a student with a teacher")
    data = load_data(cfg)
    torch.manual_seed(cfg.train.seed)
    teacher = build_model(cfg.teacher_model, data.info, "teacher")
    student = build_model(_architecture(cfg.student) if is_run else cfg.student, data.info, "student")
    if is_run:
        load_weights(student, target / which / "model.safetensors")
    loader = DataLoader(data.get(split), batch_size=batch_size, shuffle=False, collate_fn=data.collate_fn)
    chosen = [split_batch(b) for _, b in zip(range(batches), loader, strict=False)]
    folder = Path(out) if out is not None else (target if is_run else Path("runs") / target.stem)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = next((k.get("vocab_size") for k in cfg.knowledge if k.get("vocab_size")), None)
    report = gradient_analysis(student, teacher, chosen, Task(cfg.task), vocab_size=vocab,
                               plot_path=folder / "gradient_analysis.png")
    report.extra = {"target": str(target), "split": split, "batches": len(chosen),
                    "weights": which if is_run else "as built"}
    write_json_atomic(folder / "gradient_analysis.json", report.to_dict())
    return report, folder


__all__ = ["NEAR_UNIFORM", "GradientReport", "analyze_target", "gradient_analysis", "kl_logit_gradients", "plot_report",
           "read", "reading"]
