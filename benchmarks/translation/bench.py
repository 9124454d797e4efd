"""Translation benchmark: a German -> English teacher distilled into a student 1/4 its size, six ways.

The data is the Bible, Elberfelder (German) -> World English Bible (English), whole books held
out for dev and test (`bible_translation`). A teacher Transformer is trained on the references;
then, per seed, a student with about 1/4 of its parameters is trained from one initialisation
(the same weights for every method of that seed; the seed also fixes data order and dropout) by:

  labels       references only (cross-entropy), no teacher
  word_kd      word-level forward KL(teacher || student) per token on the references
  seq_kd       cross-entropy on the teacher's beam-search translations (generated once, cached)
  backward_kl  on-policy: exact per-token KL(student || teacher) at the student's sampled prefixes
  reinforce    on-policy: backward KL by REINFORCE (per-token returns, moving-average baseline)
  jsd          on-policy: generalised JSD(0.5) at the student's sampled prefixes

The on-policy methods start from a shared warm start, the references-only student after
`warm_steps` steps (as practitioners do), and train for the remaining steps, so every method
makes the same number of optimizer steps. On request (not in the default set), the same three
start instead from a word-level KD student trained for `warm_steps` steps (`*_from_kd`; built as
the references-only warm start is, with its own learning-rate schedule): the student then has the
teacher's word-level knowledge before it samples, as on-policy distillation is used in practice.
Their control, `word_kd_from_kd`, continues word KD from that start with the on-policy runs'
learning rate and schedule, so that against it only the last steps' targets and divergence differ.
Checkpoints are picked on dev BLEU (tuning on dev only); test BLEU / chrF (sacrebleu, greedy
decoding, detokenised) are measured once at the end.

    python benchmarks/translation/bench.py --quick --jobs 2   # 2 CPU cores, < 60 min (teacher included)
    python benchmarks/translation/bench.py --gpu --jobs 4     # one H100-class GPU, sized for < 10 min (not yet run;
                                                              # gpu_budget.py: sampling alone >= 13 min in one process)

Each finished run writes its own JSON under benchmarks/results/translation/<size>/ at once and
is skipped when the benchmark is started again (runs themselves resume from checkpoints).
Writes benchmarks/results/translation.json and translation.md (translation-gpu.* for --gpu),
and the gradient analysis of the teacher against the warm-start and word-KD students on dev
batches (gradient_analysis-*.json / .png beside the per-run results).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CONFIGS = ROOT / "configs" / "translation"
sys.path.insert(0, str(HERE.parent))  # benchmarks/: the harness
from harness import grid, provenance  # noqa: E402
from harness.aggregate import aggregate_provenance, ci, paired  # noqa: E402
from harness.cli import Benchmark  # noqa: E402
from harness.cli import main as harness_main  # noqa: E402
from harness.grid import Unit  # noqa: E402
from harness.sittings import read_sittings, wall_minutes  # noqa: E402

METHODS = ["labels", "word_kd", "seq_kd", "backward_kl", "reinforce", "jsd"]
ON_POLICY = ("backward_kl", "reinforce", "jsd")
# the on-policy methods started from the word-KD student instead (opt-in: --methods ... backward_kl_from_kd), and
# their control: word KD continued from that start with the on-policy runs' learning rate and schedule
FROM_KD = tuple(f"{m}_from_kd" for m in ON_POLICY) + ("word_kd_from_kd",)
CONTROL = "word_kd_from_kd"
ALL_METHODS = METHODS + list(FROM_KD)
BASELINE = "word_kd"
LABELS_ON_POLICY = {"backward_kl": "on-policy backward KL (exact per token)", "reinforce": "backward KL by REINFORCE",
                    "jsd": "on-policy JSD(0.5)"}
LABELS = {"labels": "references only", "word_kd": "word-level forward KL", "seq_kd": "sequence-level KD (beam 4)",
          **LABELS_ON_POLICY, **{f"{m}_from_kd": f"{LABELS_ON_POLICY[m]}, from word KD" for m in ON_POLICY},
          CONTROL: "word-level forward KL, continued from word KD"}

# Everything the two sizes change; the rest comes from configs/translation/*.yaml.
SIZES: dict[str, dict[str, Any]] = {
    "quick": {
        "data": {"max_length": 32, "vocab_size": 4000, "train_size": 4000, "val_size": 300, "test_size": 500,
                 "eval_examples": 150},
        "teacher": {"d_model": 128, "encoder_layers": 3, "decoder_layers": 3, "attention_heads": 4, "ffn_dim": 512},
        "student": {"d_model": 64, "encoder_layers": 2, "decoder_layers": 2, "attention_heads": 4, "ffn_dim": 256},
        "teacher_steps": 1500, "teacher_lr": 0.001, "steps": 1500, "warm_steps": 1000, "batch_size": 32,
        "lr": 0.0015, "on_policy_lr": 0.0005, "eval_every": 500, "max_new_tokens": 32, "threads": 1,
    },
    "gpu": {
        "data": {"max_length": 64, "vocab_size": 8000, "train_size": None, "val_size": 500, "test_size": 1000,
                 "eval_examples": 300},
        "teacher": {"d_model": 384, "encoder_layers": 4, "decoder_layers": 4, "attention_heads": 6, "ffn_dim": 1536},
        "student": {"d_model": 192, "encoder_layers": 3, "decoder_layers": 3, "attention_heads": 4, "ffn_dim": 768},
        "teacher_steps": 3000, "teacher_lr": 0.001, "steps": 1200, "warm_steps": 600, "batch_size": 128,
        "lr": 0.001, "on_policy_lr": 0.0003, "eval_every": 300, "max_new_tokens": 64, "threads": None,
    },
}


def _sets(prefix: str, values: dict[str, Any]) -> list[str]:
    return [f"{prefix}.{k}={json.dumps(v)}" for k, v in values.items()]


def config_overrides(size: dict[str, Any], *, role: str, seed: int, steps: int, lr: float) -> list[str]:
    """`--set` overrides that turn a config of configs/translation into this size's run."""
    model = size["teacher"] if role == "teacher" else size["student"]
    out = _sets("data", size["data"]) + _sets("student", model)
    out += [f"train.max_steps={steps}", f"train.batch_size={size['batch_size']}", f"train.seed={seed}",
            f"train.eval_every={size['eval_every']}", f"optim.lr={lr}", "train.log_every=25",
            f"train.checkpoint_every={size['eval_every']}",
            f"schedule.warmup_steps={min(100, steps // 10) if role != 'on_policy' else 0}"]
    return out


def load_config(name: str, overrides: list[str]) -> Any:
    from ktransfer.config import RunConfig

    return RunConfig.from_yaml(CONFIGS / f"{name}.yaml", overrides)


def train(cfg: Any, run_dir: Path) -> Any:
    """Train (or resume, or leave a finished run as it is) and return the RunResult."""
    from ktransfer.runner import resume, run

    if (run_dir / "summary.json").is_file() or (run_dir / "checkpoints").is_dir():
        return resume(run_dir, progress=False)
    return run(cfg, run_dir, progress=False, overwrite=True, data=data_for(cfg))


_DATA: dict[str, Any] = {}


def data_for(cfg: Any) -> Any:
    """The dataset of a config, loaded once per process (every run of a size shares it)."""
    from ktransfer.runner import load_data

    key = json.dumps(cfg.data, sort_keys=True)
    if key not in _DATA:
        _DATA[key] = load_data(cfg)
    return _DATA[key]


def test_scores(run_dir: Path, which: str = "best") -> dict[str, Any]:
    """BLEU / chrF of a run's student on the whole test split (greedy), plus loss and accuracy."""
    from dataclasses import replace

    from ktransfer.checkpoint import load_weights
    from ktransfer.runner import _architecture, build_model, load_run_config
    from ktransfer.tasks import Task
    from ktransfer.train import make_evaluator

    cfg = load_run_config(run_dir)
    data = data_for(cfg)
    model = build_model(_architecture(cfg.student), data.info, "student")
    load_weights(model, run_dir / which / "model.safetensors")
    test = copy.copy(data.test)
    test.evaluation = replace(test.evaluation, examples=None)
    started = time.perf_counter()
    metrics = make_evaluator(test, Task("seq2seq"), cfg.train.eval_batch_size, collate_fn=data.collate_fn)(model)
    return {**metrics, "test_size": len(test), "test_eval_s": round(time.perf_counter() - started, 2)}


def write_unit(path: Path, unit: dict[str, Any]) -> None:
    """Write one finished run's record, with the commit, command and machine that made it."""
    grid.write_unit(path, unit)


# ------------------------------------------------------------------------------------------- stages
def train_teacher(size_name: str, size: dict[str, Any], runs: Path) -> dict[str, Any]:
    """The teacher trained on the references, and its test scores."""
    cfg = load_config("teacher", config_overrides(size, role="teacher", seed=0, steps=size["teacher_steps"],
                                                  lr=size["teacher_lr"]))
    started = time.perf_counter()
    result = train(cfg, runs / "teacher")
    unit = {"method": "teacher", "seed": 0, "size": size_name, "best_val": result.train.best_metrics,
            "best_step": result.train.best_step, "steps": cfg.train.max_steps, "parameters": result.student_parameters,
            "wall_time_s": round(result.train.wall_time_s, 2), "total_s": round(time.perf_counter() - started, 2),
            "samples_per_s": cfg.train.max_steps * cfg.train.batch_size / max(result.train.wall_time_s, 1e-9),
            "test": test_scores(runs / "teacher")}
    print(f"teacher: test BLEU {unit['test']['bleu']:.2f} chrF {unit['test']['chrf']:.2f} "
          f"({unit['parameters']:,} parameters, {unit['wall_time_s'] / 60:.1f} min)", flush=True)
    return unit


def student_init(size: dict[str, Any], runs: Path, seed: int) -> Path:
    """The student's initial weights for `seed`, shared by every method of that seed."""
    from ktransfer.checkpoint import save_weights
    from ktransfer.runner import build_model

    path = runs / f"init-s{seed}.safetensors"
    if not path.is_file():
        cfg = load_config("student_labels", config_overrides(size, role="student", seed=seed, steps=1, lr=size["lr"]))
        torch.manual_seed(10_000 + seed)
        save_weights(build_model(cfg.student, data_for(cfg).info, "student"), path)
    return path


def pregenerate(size: dict[str, Any], runs: Path) -> dict[str, Any]:
    """The teacher's beam translations of the training split, into the cache seq_kd reads (timed once)."""
    from torch.utils.data import DataLoader

    from ktransfer.batching import length_sorted
    from ktransfer.runner import build_model
    from ktransfer.sequence.stage import StageContext
    from ktransfer.sequence.targets import targets_stage_from_config
    from ktransfer.tasks import Task

    cfg = seq_kd_config(size, runs, 0)
    data = data_for(cfg)
    teacher = build_model(cfg.teacher, data.info, "teacher").eval()
    stage = targets_stage_from_config(cfg.targets, "seq2seq")
    started = time.perf_counter()
    # longest first: batches of similar length pad little (the cache is keyed per prompt, not by order)
    loader = DataLoader(length_sorted(data.train), batch_size=size["batch_size"], shuffle=False,
                        collate_fn=data.collate_fn)
    for batch in loader:
        stage(batch, StageContext(teacher, teacher, Task("seq2seq"), 0, torch.device("cpu")))
    unit = {"examples": len(data.train), "seconds": round(time.perf_counter() - started, 2),
            "generation": cfg.targets["generation"]}
    print(f"seq_kd: teacher beam translations of {unit['examples']} training pairs in {unit['seconds']:.0f}s", flush=True)
    return unit


def seq_kd_config(size: dict[str, Any], runs: Path, seed: int) -> Any:
    over = config_overrides(size, role="student", seed=seed, steps=size["steps"], lr=size["lr"])
    over += [f"teacher.from_run={runs / 'teacher'}", f"targets.cache_dir={runs / 'generations'}",
             f"targets.generation.max_new_tokens={size['max_new_tokens']}"]
    return load_config("student_seq_kd", over + [f"student.weights={student_init(size, runs, seed)}"])


def method_config(method: str, size: dict[str, Any], runs: Path, seed: int) -> Any:
    teacher = [f"teacher.from_run={runs / 'teacher'}"]
    if method == "seq_kd":
        return seq_kd_config(size, runs, seed)
    if warm_kind(method):  # on-policy, or the control that starts where the from-KD ones do
        steps = size["steps"] - size["warm_steps"]
        over = config_overrides(size, role="on_policy", seed=seed, steps=steps, lr=size["on_policy_lr"])
        over += teacher + [f"student.weights={runs / f'{warm_kind(method)}-s{seed}' / 'final' / 'model.safetensors'}",
                           f"train.eval_every={max(1, min(size['eval_every'], steps))}"]
        if method == CONTROL:  # the on-policy runs' optimiser settings, the references' targets and word-level loss
            return load_config("student_word_kd", over + ["schedule.name=constant"])
        over.append(f"targets.generation.max_new_tokens={size['max_new_tokens']}")
        return load_config(f"student_{method.removesuffix('_from_kd')}", over)
    over = config_overrides(size, role="student", seed=seed, steps=size["warm_steps"] if method == "warm_kd"
                            else size["steps"], lr=size["lr"])
    over += [f"student.weights={student_init(size, runs, seed)}"] + (teacher if method in ("word_kd", "warm_kd") else [])
    return load_config("student_word_kd" if method == "warm_kd" else f"student_{method}", over)


def warm_kind(method: str) -> str | None:
    """The warm start a method begins from: `warm` (references only), `warm_kd` (word KD) or none."""
    return "warm_kd" if method in FROM_KD else "warm" if method in ON_POLICY else None


def warm_start(size: dict[str, Any], runs: Path, seed: int, kind: str = "warm") -> dict[str, Any]:
    """The shared warm start of the on-policy methods: `warm` (references only) or `warm_kd` (word KD)."""
    if kind == "warm_kd":
        cfg = method_config("warm_kd", size, runs, seed)
    else:
        over = config_overrides(size, role="student", seed=seed, steps=size["warm_steps"], lr=size["lr"])
        cfg = load_config("student_labels", over + [f"student.weights={student_init(size, runs, seed)}"])
    result = train(cfg, runs / f"{kind}-s{seed}")
    unit = {"method": kind, "seed": seed, "steps": cfg.train.max_steps, "final_val": result.train.final_metrics,
            "wall_time_s": round(result.train.wall_time_s, 2)}
    return unit


def run_method(method: str, size: dict[str, Any], runs: Path, results: Path, seed: int) -> dict[str, Any]:
    """One student trained by `method` (after its warm start, whose result is in `results`) and its test scores."""
    kind = warm_kind(method)
    warm = grid.read_unit(results / f"{kind}-s{seed}.json") if kind else None
    cfg = method_config(method, size, runs, seed)
    run_dir = runs / f"{method}-s{seed}"
    result = train(cfg, run_dir)
    wall = result.train.wall_time_s
    unit = {
        "method": method, "seed": seed, "steps": cfg.train.max_steps, "batch_size": cfg.train.batch_size,
        "warm_start_steps": warm["steps"] if warm else 0, "warm_start_s": warm["wall_time_s"] if warm else 0.0,
        "best_step": result.train.best_step, "best_val": result.train.best_metrics,
        "wall_time_s": round(wall, 2), "samples_per_s": cfg.train.max_steps * cfg.train.batch_size / max(wall, 1e-9),
        "parameters": result.student_parameters, "test": test_scores(run_dir), "config": cfg.to_dict(),
    }
    print(f"{method} seed {seed}: test BLEU {unit['test']['bleu']:.2f} chrF {unit['test']['chrf']:.2f} "
          f"(dev BLEU {unit['best_val'].get('bleu', float('nan')):.2f} at step {unit['best_step']}; "
          f"{wall / 60:.1f} min, {unit['samples_per_s']:.1f} samples/s)", flush=True)
    return unit


def analyse(size: dict[str, Any], runs: Path, results: Path, who: str) -> dict[str, Any] | None:
    """Gradient analysis of the teacher against a trained student (`who`: a run name) on 4 dev batches."""
    out = results / f"gradient_analysis-{who}.json"
    if out.is_file():
        return json.loads(out.read_text())
    if not (runs / who / "final" / "model.safetensors").is_file():
        return None
    from torch.utils.data import DataLoader

    from ktransfer.analysis import gradient_analysis
    from ktransfer.checkpoint import load_weights
    from ktransfer.runner import _architecture, build_model, load_run_config
    from ktransfer.tasks import Task
    from ktransfer.train import split_batch

    cfg = load_run_config(runs / who)
    data = data_for(cfg)
    torch.manual_seed(0)
    teacher = build_model({"from_run": str(runs / "teacher")}, data.info, "teacher")
    student = load_weights(build_model(_architecture(cfg.student), data.info, "student"),
                           runs / who / "final" / "model.safetensors")
    loader = DataLoader(data.val, batch_size=32, shuffle=False, collate_fn=data.collate_fn)
    batches = [split_batch(b) for _, b in zip(range(4), loader, strict=False)]
    report = gradient_analysis(student, teacher, batches, Task("seq2seq"),
                               plot_path=results / f"gradient_analysis-{who}.png")
    report.extra = {"student": who, "split": "val", "batches": len(batches), "weights": "final"}
    return grid.write_unit(out, report.to_dict())


# ------------------------------------------------------------------------------------------- report
def aggregate(units: list[dict[str, Any]], meta: dict[str, Any], teacher: dict[str, Any],
              analyses: dict[str, Any]) -> dict[str, Any]:
    by: dict[str, dict[int, dict[str, Any]]] = {}
    for u in units:
        by.setdefault(u["method"], {})[u["seed"]] = u
    rows = []
    for method in [m for m in ALL_METHODS if m in by]:
        us = by[method]
        seeds = sorted(us)
        row: dict[str, Any] = {"method": method, "label": LABELS[method], "n": len(seeds), "seeds": seeds,
                               "warm_start": warm_kind(method)}

        def versus(reference: str, key: str) -> tuple[float, float | None] | None:
            """Paired difference of test `key` against `reference` over the seeds both ran."""
            ref = by.get(reference, {})
            return paired({s: us[s]["test"][key] for s in seeds}, {s: r["test"][key] for s, r in ref.items()})

        for key in ("bleu", "chrf"):
            row[f"test_{key}"] = ci([us[s]["test"][key] for s in seeds])
            dev = [us[s]["best_val"][key] for s in seeds if key in us[s]["best_val"]]
            row[f"dev_{key}"] = ci(dev) if dev else None
            row[f"diff_{key}_vs_{BASELINE}"] = versus(BASELINE, key) if method != BASELINE else None
            row[f"diff_{key}_vs_{CONTROL}"] = versus(CONTROL, key) if method in FROM_KD and method != CONTROL else None
        row["wall_time_s"] = ci([us[s]["wall_time_s"] for s in seeds])
        row["warm_start_s"] = ci([us[s]["warm_start_s"] for s in seeds])
        row["samples_per_s"] = ci([us[s]["samples_per_s"] for s in seeds])
        row["parameters"] = us[seeds[0]]["parameters"]
        rows.append(row)
    return {"meta": meta, "teacher": teacher, "rows": rows, "gradient_analysis": analyses, "units": units}


def _fmt(ci: tuple[float, float | None] | None, signed: bool = False) -> str:
    if ci is None:
        return "—"
    m, h = ci
    text = f"{m:+.2f}" if signed else f"{m:.2f}"
    if h is None or math.isnan(h):
        return text
    mark = " *" if signed and abs(m) > h else ""
    return f"{text} ± {h:.2f}{mark}"


def markdown(result: dict[str, Any]) -> str:
    meta, t = result["meta"], result["teacher"]
    lines = [
        f"Command: `{meta['command']}`; {meta['machine']}; torch {meta['versions']['torch']}, transformers "
        f"{meta['versions']['transformers']}, sacrebleu {meta['versions']['sacrebleu']}, Python "
        f"{meta['versions']['python']}; {provenance.code_line(meta.get('provenance'))}; seeds {meta['seeds']}; "
        f"benchmark wall time {meta['wall_time_min']:.0f} min over "
        f"{max(1, sum(s.get('command', meta['command']) == meta['command'] for s in meta.get('sittings', [])))} "
        f"sitting(s), teacher included."
        + "".join(f" Then `{command}`: {minutes:.0f} min." for command, minutes
                  in wall_minutes(meta.get("sittings", []), meta["command"]).items() if command != meta["command"]),
        "",
        f"Data: Bible, German (Elberfelder) -> English (World English Bible), whole books held out; "
        f"{meta['data_sizes']['train']} training pairs, {meta['data_sizes']['val']} dev, {meta['data_sizes']['test']} test "
        f"(pairs of at most {meta['size']['data']['max_length']} subword tokens; BPE vocabulary "
        f"{meta['vocab_size']} trained on the training split). Test BLEU / chrF: sacrebleu "
        f"(tokenize={meta['bleu_tokenize']}) on detokenised greedy output. Checkpoints chosen on dev BLEU.",
        "",
        f"Teacher: {t['parameters']:,} parameters, {t['steps']} steps, test BLEU {t['test']['bleu']:.2f}, chrF "
        f"{t['test']['chrf']:.2f} ({t['wall_time_s'] / 60:.1f} min). Student: {result['rows'][0]['parameters']:,} "
        f"parameters ({result['rows'][0]['parameters'] / t['parameters']:.2f} of the teacher), "
        f"{meta['size']['steps']} steps of {meta['size']['batch_size']}; on-policy methods (marked †) start from the "
        f"references-only student after {meta['size']['warm_steps']} steps (shared warm start) and train "
        f"{meta['size']['steps'] - meta['size']['warm_steps']} steps more.",
        "",
        "Mean ± 95% t-interval over seeds; Δ = paired difference against word-level forward KL (* = interval "
        "excludes 0). Wall time and samples/s are the method's own training (warm start and seq-KD generation "
        "listed separately), evaluation included.",
        "",
        "| method | test BLEU | test chrF | Δ BLEU vs word KD | Δ chrF vs word KD | dev BLEU | wall time (s) | samples/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        name = r["label"] + {"warm": " †", "warm_kd": " ‡"}.get(r["warm_start"] or "", "")
        lines.append(f"| {name} | {_fmt(r['test_bleu'])} | {_fmt(r['test_chrf'])} | "
                     f"{_fmt(r[f'diff_bleu_vs_{BASELINE}'], True)} | {_fmt(r[f'diff_chrf_vs_{BASELINE}'], True)} | "
                     f"{_fmt(r['dev_bleu'])} | {r['wall_time_s'][0]:.0f} | {r['samples_per_s'][0]:.1f} |")
    warm = [r for r in result["rows"] if r["warm_start"] == "warm"]
    if warm:
        lines += ["", f"† shared warm start: {warm[0]['warm_start_s'][0]:.0f} s per seed (not in the wall time above)."]
    from_kd = [r for r in result["rows"] if r["warm_start"] == "warm_kd"]
    if from_kd:
        lines += [f"‡ started instead from a word-level KD student trained for {meta['size']['warm_steps']} steps "
                  f"({from_kd[0]['warm_start_s'][0]:.0f} s per seed, not in the wall time above; built as the "
                  f"references-only warm start is), and trained {meta['size']['steps'] - meta['size']['warm_steps']} "
                  "steps more: the same number of optimizer steps as word KD, the last ones on-policy."]
    controlled = [r for r in result["rows"] if r.get(f"diff_bleu_vs_{CONTROL}")]
    if controlled:
        lines += ["", "From the same word-KD start, the last steps' loss alone: paired difference against word-level "
                      "forward KL continued with the on-policy runs' learning rate and schedule (the same start, "
                      "steps and optimiser; only the targets and the divergence differ).", "",
                  "| method | Δ test BLEU vs continued word KD | Δ test chrF vs continued word KD |", "|---|---:|---:|"]
        lines += [f"| {r['label']} | {_fmt(r[f'diff_bleu_vs_{CONTROL}'], True)} | {_fmt(r[f'diff_chrf_vs_{CONTROL}'], True)} |"
                  for r in controlled]
        lines.append("")
    gen = meta.get("seq_kd_generation")
    if gen:
        lines += [f"Sequence-level KD: the teacher's beam translations of {gen['examples']} training pairs took "
                  f"{gen['seconds']:.0f} s, once (cached; not in the wall time above)."]
    for who, report in result["gradient_analysis"].items():
        if report:
            a = report["aggregate"]
            lines += ["", f"Gradient analysis, teacher vs the student {who} on {report['tokens']} dev tokens "
                          f"(gradient_analysis-{who}.json / .png): parameter-gradient cosine of forward and backward "
                          f"KL {a['param_cosine']:.3f}; entropy teacher {a['entropy_teacher']:.2f} / student "
                          f"{a['entropy_student']:.2f} nats; largest probability teacher {a['peak_teacher']:.2f}. "
                          f"{report['reading']}"]
    return "\n".join(lines) + "\n"


def check_same_setup(results: Path, runs: Path, size: dict[str, Any]) -> None:
    """Refuse to mix finished runs of another size setting or other configs into this benchmark's results."""
    import yaml

    configs = {p.name: yaml.safe_load(p.read_text()) for p in sorted(CONFIGS.glob("*.yaml"))}  # comments aside
    setup = {"size": size, "configs": configs}
    record = results / "setup.json"
    if record.is_file():
        recorded = json.loads(record.read_text())
        if {k: recorded.get(k) for k in setup} != json.loads(json.dumps(setup)):
            raise SystemExit(f"{results} holds runs of another size setting or other configs/translation files; "
                             f"move it and {runs} away (or pass other --results / --out) to start afresh")
        return
    from ktransfer.checkpoint import write_json_atomic

    write_json_atomic(record, {**setup, "provenance": provenance.record()})


def grid_units(methods: list[str], seeds: int, runs: Path | None = None) -> list[Unit]:
    """Every run of the benchmark with what it needs, in the order workers take them: the teacher first,
    and alongside it what needs no teacher (warm starts, references-only students). Given `runs`, the teacher,
    the warm starts and the generations name the files they keep there for the units that need them."""

    def keeps(*parts: str) -> tuple[str, ...]:
        return (str(Path(runs, *parts)),) if runs is not None else ()

    units = [Unit("teacher", {"kind": "teacher"}, keeps=keeps("teacher", "best", "model.safetensors"))]
    on_policy = [m for m in methods if m in ON_POLICY]
    units += [Unit(f"warm-s{s}", {"kind": "warm", "seed": s}, keeps=keeps(f"warm-s{s}", "final", "model.safetensors"))
              for s in range(seeds) if on_policy]
    from_kd = [m for m in methods if m in FROM_KD]
    units += [Unit(f"warm_kd-s{s}", {"kind": "warm_kd", "seed": s}, ("teacher",),
                   keeps=keeps(f"warm_kd-s{s}", "final", "model.safetensors")) for s in range(seeds) if from_kd]
    units += [Unit(f"labels-s{s}", {"kind": "method", "method": "labels", "seed": s})
              for s in range(seeds) if "labels" in methods]
    if "seq_kd" in methods:
        units.append(Unit("seq_kd-generation", {"kind": "generation"}, ("teacher",), keeps=keeps("generations")))
    for s in range(seeds):  # the dearest (on-policy) first, so that the last runs to finish are short
        for m in on_policy + from_kd + [m for m in ("word_kd", "seq_kd") if m in methods]:
            needs = (("teacher", f"{warm_kind(m)}-s{s}") if warm_kind(m)
                     else ("seq_kd-generation",) if m == "seq_kd" else ("teacher",))
            units.append(Unit(f"{m}-s{s}", {"kind": "method", "method": m, "seed": s}, needs))
    return units


def invocation(args: argparse.Namespace, size_name: str, default_methods: bool = False) -> str:
    """The benchmark's command line as recorded in the results (`default_methods`: as if --methods were not given)."""
    flag = "--quick" if size_name == "quick" else "--gpu"
    methods = "" if default_methods or args.methods == METHODS else " --methods " + " ".join(args.methods)
    return (f"python benchmarks/translation/bench.py {flag} --seeds {args.seeds}{methods}"
            + (f" --jobs {args.jobs}" if args.jobs > 1 else ""))


class Translation(Benchmark):
    """The translation benchmark on the harness: units are the teacher, warm starts, the beam translations and
    one student per method and seed, each `<unit>.json` under results/translation/<size>/."""

    script = Path(__file__)
    description = globals()["__doc__"].splitlines()[0]
    context_keys = ("command", "machine", "versions", "provenance", "data_sizes", "vocab_size", "bleu_tokenize")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        size_arg = p.add_mutually_exclusive_group()
        size_arg.add_argument("--quick", action="store_true", help="2 CPU cores, < 60 min (the default size)")
        size_arg.add_argument("--gpu", action="store_true", help="one H100-class GPU, < 10 min")
        p.add_argument("--methods", nargs="+", default=METHODS, choices=ALL_METHODS,
                       help="methods to run (the table shows every finished run of the results folder); "
                            "the *_from_kd variants are not in the default set")
        p.add_argument("--out", default=str(HERE / "runs"), help="run directories (resumable)")
        p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"), help="results folder")
        p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                       help="change a size setting, e.g. --set steps=20 (smoke tests; recorded in the results)")

    def setup(self, args: argparse.Namespace) -> None:
        args.started = time.perf_counter()
        args.size_name = "gpu" if args.gpu else "quick"
        args.size = copy.deepcopy(SIZES[args.size_name])
        for item in args.sets:
            key, value = item.split("=", 1)
            node = args.size
            *parents, last = key.split(".")
            for part in parents:
                node = node[part]
            node[last] = json.loads(value)
        if args.size["threads"]:  # one thread per process: small matrices gain little from two, and they suffer
            torch.set_num_threads(args.size["threads"])  # most when other processes compete for the cores
        args.runs = Path(args.out) / args.size_name
        self.results(args).mkdir(parents=True, exist_ok=True)
        args.runs.mkdir(parents=True, exist_ok=True)
        if args.reproduce is None:
            check_same_setup(self.results(args), args.runs, args.size)

    def results(self, args: argparse.Namespace) -> Path:
        return Path(args.results) / "translation" / args.size_name

    def units(self, args: argparse.Namespace) -> list[Unit]:
        return grid_units(args.methods, args.seeds, args.runs)

    def run_unit(self, unit: Unit, args: argparse.Namespace) -> dict[str, Any]:
        kind = unit.key["kind"]
        if kind == "teacher":
            return train_teacher(args.size_name, args.size, args.runs)
        if kind == "generation":
            return pregenerate(args.size, args.runs)
        if kind in ("warm", "warm_kd"):
            return warm_start(args.size, args.runs, unit.key["seed"], kind)
        return run_method(unit.key["method"], args.size, args.runs, self.results(args), unit.key["seed"])

    def sitting_command(self, args: argparse.Namespace) -> str:
        return invocation(args, args.size_name)  # summed per command

    def context(self, args: argparse.Namespace) -> dict[str, Any]:
        import sacrebleu
        import transformers

        cfg = load_config("student_labels", config_overrides(args.size, role="student", seed=0, steps=1,
                                                             lr=args.size["lr"]))
        info = data_for(cfg).info
        command = invocation(args, args.size_name, default_methods=True)
        return {
            "command": command,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"
                       + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""),
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__, "sacrebleu": sacrebleu.__version__},
            "provenance": provenance.record(),
            "data_sizes": info["sizes"], "vocab_size": info["vocab_size"], "bleu_tokenize": info["bleu_tokenize"],
        }

    def aggregate(self, args: argparse.Namespace, context: dict[str, Any]) -> dict[str, Any] | None:
        results = self.results(args)
        teacher_path = results / "teacher.json"
        units = [grid.read_unit(q) for q in sorted(results.glob("*-s*.json"))
                 if not q.name.startswith(("warm-", "warm_kd-", "gradient_"))]
        units = [u for u in units if u["seed"] < args.seeds and u["method"] in ALL_METHODS]
        if not units or not teacher_path.is_file():
            return None
        analyses = {who: analyse(args.size, args.runs, results, who) for who in ("warm-s0", "word_kd-s0")}
        gen = results / "seq_kd-generation.json"
        generation = grid.read_unit(gen) if gen.is_file() else None
        teacher = grid.read_unit(teacher_path)
        warm = [w for w in (grid.read_unit(q) for q in sorted(results.glob("warm*-s*.json"))) if w["seed"] < args.seeds]
        made_of = [teacher, *warm, *([generation] if generation else []), *units, *(a for a in analyses.values() if a)]
        sittings = read_sittings(results / "sittings.jsonl")
        command = context["command"]
        meta = {
            **context, "provenance": aggregate_provenance(made_of, context), "seeds": list(range(args.seeds)),
            "size_name": args.size_name, "size": args.size,
            "wall_time_min": wall_minutes(sittings, command).get(command, (time.perf_counter() - args.started) / 60),
            "sittings": sittings, "seq_kd_generation": generation,
        }
        return aggregate(units, meta, teacher, analyses)

    def outputs(self, result: dict[str, Any], args: argparse.Namespace) -> dict[Path, Any]:
        suffix = "" if args.size_name == "quick" else "-gpu"
        root = Path(args.results)
        return {root / f"translation{suffix}.json": result, root / f"translation{suffix}.md": markdown(result)}

    def summary(self, result: dict[str, Any]) -> str:
        return markdown(result)


def main(argv: list[str] | None = None) -> int:
    return harness_main(Translation(), argv)


if __name__ == "__main__":
    sys.exit(main())
