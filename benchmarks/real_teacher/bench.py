"""Real-teacher benchmark: SmolLM2-135M-Instruct distilled into a student cut from it (10 of its 30 layers).

Data: BBC News articles (`ktransfer data prepare bbc-news`), split by article (the causal corpus dataset
`bbc_news_text`, `packing: pad`: each block one article's piece); a training block is a 16-token prompt and its
reference continuation (the loss is on the continuation only, `prompt_length: 16`); held-out blocks of other
articles give the test prompts (their first 16 tokens) and references (the rest). The student
(`hf_cut`, every 3rd layer, weights copied) is trained per seed by:

  untrained    the cut student as cut, no training
  labels       references alone (cross-entropy)
  word_kd      word-level forward KL(teacher || student) per token, live teacher
  store_k8     forward KL from the teacher output store, top-8 plus a tail bucket (no teacher in memory)
  store_k64    the same at top-64
  backward_kl  on-policy: exact per-token KL(student || teacher) at the student's sampled continuations
  jsd          on-policy: generalised JSD(0.5) at the student's sampled continuations
  seq_kd       cross-entropy on the teacher's greedy continuations (generated once, cached)

The on-policy methods start from the references-alone student after `warm_steps` steps (a shared unit per
seed) and train the remaining steps, so that every method makes `steps` optimizer steps. Shared units: the two
stores (`ktransfer teacher-outputs build`'s `build_store`), the warm starts and the teacher's generations.
Every unit is an ordinary ktransfer run of a config of configs/real_teacher/, loaded and changed here (model
folders, sizes, seed).

Scores, each on the test split: loss / perplexity and teacher_kl, KL(teacher || student) per token (the
product's evaluator); chrF of the student's greedy continuations against the references (`metrics.chrf`;
ROUGE-L's `rouge-score` is not installed here); the teacher's mean log-probability per token of those
continuations; their repetition rate (share of repeated token 3-grams); wall time per training step
(evaluation aside, from the run's log); peak resident memory during the unit (VmHWM, reset at its start); for
the stores, bytes per target token and build time.

Sizes, from the steps of the --quick sitting (one process of one thread on the 2-core machine, batch 8 x 64
tokens): a step of references alone 3.5 s, a word-level KD step with the live teacher 5.6 s (so a teacher
forward 2.1 s), sampling 64 tokens for 8 prompts 4.25 s (the student; the teacher's generation is taken as that
times the parameter ratio 134.5M / 63.7M = 2.11, and --full generates 64 prompts at a time, twice as fast per
prompt, `generation_batch.py`); two workers side by side on the 2 cores, with little else
running, make each step about 1.02 times slower (`harness.budget.SIDE_BY_SIDE`; other work beside them slows
them far more). `expected_budget` sums the units from these (see `unit_seconds`):

  --quick  one seed of untrained, labels, word_kd, store_k8, store_k64, backward_kl, seq_kd; 150 steps
           (warm start 75), 1,200 training blocks: about 102 min of work, about 54 min of wall time with
           --jobs 2 (the longest chain of needed units: 27 min, the teacher's generations then seq_kd)
  --full   three seeds of every method; 600 steps (warm start 300), 4,800 training blocks: about 17.7 h of
           work, about 9 h with --jobs 2, over sittings (each finished unit's JSON is kept; a sitting started
           again skips them, and builds again the shared units whose files a unit still to run needs)

    nohup python benchmarks/real_teacher/bench.py --quick --jobs 2 > real_teacher.log 2>&1 &   # resumable
    python benchmarks/real_teacher/bench.py --full --jobs 2        # start again after a stop; commit the JSONs

Unit results: benchmarks/results/real_teacher/<size>/<unit>.json; the aggregate: benchmarks/results/
real_teacher[-full].json and .md (paired differences against references alone, by seed).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CONFIGS = ROOT / "configs" / "real_teacher"
sys.path.insert(0, str(HERE.parent))  # benchmarks/: the harness
sys.path.insert(0, str(HERE))  # this study's metrics
from harness import budget, grid, provenance  # noqa: E402
from harness.aggregate import aggregate_provenance, cells, ci, paired  # noqa: E402
from harness.cli import Benchmark  # noqa: E402
from harness.cli import main as harness_main  # noqa: E402
from harness.grid import Unit  # noqa: E402
from harness.sittings import ran_by as sittings_ran_by  # noqa: E402
from harness.sittings import read_sittings, wall_minutes  # noqa: E402
from harness.stores import build_time_note, store_result  # noqa: E402
from metrics import chrf, mean_repetition_rate, teacher_logprob_per_token  # noqa: E402

METHODS = ["untrained", "labels", "word_kd", "store_k8", "store_k64", "backward_kl", "jsd", "seq_kd"]
QUICK_METHODS = ["untrained", "labels", "word_kd", "store_k8", "store_k64", "backward_kl", "seq_kd"]
ON_POLICY = ("backward_kl", "jsd")
STORE_K = {"store_k8": 8, "store_k64": 64}
WARM_WEIGHTS = "warm-s{seed}/final/model.safetensors"  # the warm start the on-policy methods begin from
BASELINE = "labels"
CONFIG_OF = {"labels": "labels", "word_kd": "word_kd", "store_k8": "store_kd", "store_k64": "store_kd",
             "backward_kl": "backward_kl", "jsd": "jsd", "seq_kd": "seq_kd", "untrained": "labels", "warm": "labels"}
LABELS = {"untrained": "cut student, untrained", "labels": "references alone",
          "word_kd": "word-level forward KL, live teacher", "store_k8": "forward KL from the store, k = 8",
          "store_k64": "forward KL from the store, k = 64", "backward_kl": "on-policy backward KL (exact per token)",
          "jsd": "on-policy JSD(0.5)", "seq_kd": "sequence-level KD (teacher's greedy continuations)"}

# Seconds on the 2-core machine, one process of one thread, batch 8 x 64 tokens: the training steps of the
# committed --quick sitting (benchmarks/results/real_teacher/quick/, `--jobs 1`): references alone 3.5 s (labels
# 3.51, warm start 3.49), word-level KD with the live teacher 5.6 s (5.58), so a teacher forward 5.6 - 3.5 = 2.1 s;
# backward KL 8.79 s a step = sampling 48 tokens + a KD step, so sampling 64 tokens (3.19 * 64 / 48) 4.25 s.
STUDENT_STEP_S = 3.5
KD_STEP_S = 5.6
TEACHER_FORWARD_S = KD_STEP_S - STUDENT_STEP_S
STUDENT_SAMPLE_64_S = 4.25
# The teacher's greedy continuations for seq_kd, by prompts per generate call: per prompt, 64 at a time take
# 1 / 1.99 of the time 8 at a time take, with the same continuations for all 128 prompts timed
# (benchmarks/results/real_teacher_generation_batch.json, `generation_batch.py`). Sizes not measured: no gain.
GENERATION_SPEEDUP = {64: 1.987}
TEACHER_PARAMETERS, STUDENT_PARAMETERS = 134.5e6, 63.7e6  # SmolLM2-135M and its every-3rd-layer cut (tied head)
PARAMETER_RATIO = TEACHER_PARAMETERS / STUDENT_PARAMETERS

SIZES: dict[str, dict[str, Any]] = {
    "quick": {"steps": 150, "warm_steps": 75, "batch_size": 8, "train_size": 1200, "val_size": 64, "test_size": 64,
              "generation_prompts": 64, "prompt_length": 16, "max_length": 64, "new_tokens": 48, "lr": 2e-4,
              "on_policy_lr": 1e-4, "seeds": 1, "methods": QUICK_METHODS, "threads": 1},
    "full": {"steps": 600, "warm_steps": 300, "batch_size": 8, "train_size": 4800, "val_size": 64, "test_size": 256,
             "generation_prompts": 128, "prompt_length": 16, "max_length": 64, "new_tokens": 48, "lr": 2e-4,
             "on_policy_lr": 1e-4, "seeds": 3, "methods": METHODS, "threads": 1, "generation_batch": 64},
}


# ------------------------------------------------------------------------------------------- grid and budget
def grid_units(methods: list[str], seeds: int, runs: Path | None = None) -> list[Unit]:
    """The stores, the teacher's generations and the warm starts (shared, each keeping its files under `runs` for
    the units that need them), then one unit per method and seed (the dearest first, so that the last units to
    finish are short)."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; valid choices: {', '.join(METHODS)}")

    def keeps(*parts: str) -> tuple[str, ...]:
        return (str(Path(runs, *parts)),) if runs is not None else ()

    units = [Unit(f"store-k{STORE_K[m]}", {"kind": "store", "k": STORE_K[m]}, keeps=keeps(f"store-k{STORE_K[m]}"))
             for m in METHODS if m in STORE_K and m in methods]
    if "seq_kd" in methods:
        units.append(Unit("generation", {"kind": "generation"}, keeps=keeps("generations")))
    if any(m in ON_POLICY for m in methods):
        units += [Unit(f"warm-s{s}", {"kind": "warm", "seed": s}, keeps=keeps(*WARM_WEIGHTS.format(seed=s).split("/")))
                  for s in range(seeds)]
    order = [m for m in ("backward_kl", "jsd", "seq_kd", "word_kd", "store_k64", "store_k8", "labels", "untrained")
             if m in methods]
    for s in range(seeds):
        for m in order:
            needs = ((f"warm-s{s}",) if m in ON_POLICY else (f"store-k{STORE_K[m]}",) if m in STORE_K
                     else ("generation",) if m == "seq_kd" else ())
            units.append(Unit(f"{m}-s{s}", {"kind": "method", "method": m, "seed": s}, needs))
    return units


def unit_seconds(unit: Unit, size: dict[str, Any]) -> float:
    """A unit's expected seconds on one thread, from the measured costs: training steps, the stores' and the
    generation's teacher passes over the training blocks, and each method's evaluation (held-out loss and
    teacher_kl: one teacher and one student forward per batch; generation scoring: student sampling and one
    teacher forward per batch of prompts); every trained run also evaluates its validation split once, at its end."""
    batch = size["batch_size"]
    train_batches = math.ceil(size["train_size"] / batch)
    sample_s = STUDENT_SAMPLE_64_S * size["new_tokens"] / 64
    kind = unit.key["kind"]
    if kind == "store":
        return train_batches * TEACHER_FORWARD_S
    if kind == "generation":  # the teacher samples as the student does, for its parameters; more prompts per call
        per_prompt = sample_s * PARAMETER_RATIO / batch
        calls = generation_batch(size)
        return math.ceil(size["train_size"] / calls) * calls * per_prompt / GENERATION_SPEEDUP.get(calls, 1.0)
    held_out_batch_s = TEACHER_FORWARD_S * (1 + 1 / PARAMETER_RATIO)
    validation = math.ceil(size["val_size"] / batch) * held_out_batch_s
    if kind == "warm":
        return size["warm_steps"] * STUDENT_STEP_S + validation
    method = unit.key["method"]
    evaluation = (math.ceil(size["test_size"] / batch) * held_out_batch_s
                  + math.ceil(size["generation_prompts"] / batch) * (sample_s + TEACHER_FORWARD_S))
    if method != "untrained":
        evaluation += validation
    steps = size["steps"]
    train = {"untrained": 0.0, "labels": steps * STUDENT_STEP_S, "word_kd": steps * KD_STEP_S,
             "store_k8": steps * STUDENT_STEP_S, "store_k64": steps * STUDENT_STEP_S,
             "seq_kd": steps * STUDENT_STEP_S}.get(method)
    if train is None:  # on-policy: sample, teacher forward and student step per remaining step
        train = (steps - size["warm_steps"]) * (sample_s + KD_STEP_S)
    return train + evaluation


def expected_budget(size: dict[str, Any], methods: list[str], seeds: int, jobs: int) -> dict[str, float]:
    """Expected work (one process alone, summed over units) and wall time with `jobs` workers, in minutes
    (`harness.budget.expected_budget`: each unit slower by `SIDE_BY_SIDE` when workers share the cores)."""
    return budget.expected_budget(grid_units(methods, seeds), lambda u: unit_seconds(u, size), jobs)


# ------------------------------------------------------------------------------------------- configs
def teacher_dir(args: argparse.Namespace) -> str:
    """The teacher's model folder: --teacher, else the prepared SmolLM2."""
    if args.teacher:
        return str(args.teacher)
    from ktransfer.pretrained import smollm2_dir

    return str(smollm2_dir())


def method_config(method: str, size: dict[str, Any], runs: Path, seed: int, teacher: str,
                  data: dict[str, Any] | None = None) -> Any:
    """The RunConfig of a method's run (or of `warm`, the references-alone warm start): its file of
    configs/real_teacher with this size's data, steps, seed and the teacher's folder."""
    from ktransfer.config import RunConfig

    cfg = yaml.safe_load((CONFIGS / f"{CONFIG_OF[method]}.yaml").read_text())
    cfg["data"] = {**cfg["data"], "max_length": size["max_length"], "prompt_length": size["prompt_length"],
                   "train_size": size["train_size"], "val_size": size["val_size"], "test_size": size["test_size"],
                   **(data or {})}
    cfg["student"] = {**cfg["student"], "teacher": teacher}
    cfg["teacher"] = ({"store": str(runs / f"store-k{STORE_K[method]}")} if method in STORE_K
                      else {**cfg["teacher"], "model": teacher})
    on_policy = method in ON_POLICY
    steps = size["steps"] - size["warm_steps"] if on_policy else size["warm_steps"] if method == "warm" else size["steps"]
    cfg["train"] = {**cfg["train"], "max_steps": max(steps, 1), "batch_size": size["batch_size"], "seed": seed,
                    "eval_every": max(steps, 1), "log_every": max(1, min(10, steps))}
    cfg["optim"] = {**cfg["optim"], "lr": size["on_policy_lr"] if on_policy else size["lr"]}
    if on_policy:
        cfg["student"]["weights"] = str(runs / WARM_WEIGHTS.format(seed=seed))
        cfg["targets"]["generation"] = {**cfg["targets"]["generation"], "max_new_tokens": size["new_tokens"]}
    if method == "seq_kd":
        cfg["targets"] = {**cfg["targets"], "cache_dir": str(runs / "generations"),
                          "generation": {**cfg["targets"]["generation"], "max_new_tokens": size["new_tokens"]}}
    return RunConfig.from_dict(cfg)


_DATA: dict[str, Any] = {}
_TEACHER: dict[str, Any] = {}


def data_for(cfg: Any) -> Any:
    """A config's dataset, loaded once per process (every run of a size shares it)."""
    from ktransfer.runner import load_data

    key = json.dumps(cfg.data, sort_keys=True)
    if key not in _DATA:
        _DATA[key] = load_data(cfg)
    return _DATA[key]


def teacher_model(teacher: str, info: dict[str, Any]) -> Any:
    """The live teacher, built once per process."""
    from ktransfer.runner import build_model

    if teacher not in _TEACHER:
        spec = {"builder": "hf_pretrained", "model": teacher, "dtype": "float32"}
        _TEACHER[teacher] = build_model(spec, info, "teacher").eval().requires_grad_(False)
    return _TEACHER[teacher]


def reset_peak_rss() -> bool:
    """Start this process's peak resident memory afresh (Linux: `5` into /proc/self/clear_refs); False where the
    system does not allow it (the peak then covers the whole process)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """This process's peak resident memory since the last reset (VmHWM), else since it started (ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ------------------------------------------------------------------------------------------- units
def training_step_s(run_dir: Path) -> float | None:
    """Seconds per training step, evaluation aside: the elapsed time of the run's last training log line
    (metrics.jsonl) over its step; None when the run logged no training line."""
    last = None
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("split") == "train" and "elapsed_s" in record and record.get("step"):
            last = record
    return None if last is None else float(last["elapsed_s"]) / int(last["step"])


def train(cfg: Any, run_dir: Path) -> Any:
    """Train (or resume, or leave a finished run as it is) and return the RunResult."""
    from ktransfer.runner import resume, run

    if (run_dir / "summary.json").is_file() or (run_dir / "checkpoints").is_dir():
        return resume(run_dir, progress=False)
    return run(cfg, run_dir, progress=False, overwrite=True, data=data_for(cfg))


def build_store_unit(k: int, size: dict[str, Any], runs: Path, teacher: str, data: dict[str, Any] | None) -> dict[str, Any]:
    """The teacher's top-k over the training blocks, written once; its size per target token and build time."""
    from ktransfer.store.build import build_store

    cfg = method_config("word_kd", size, runs, 0, teacher, data)
    out = runs / f"store-k{k}"
    report = build_store(cfg, out, k=k, batch_size=size["batch_size"])
    return {"kind": "store", "k": k, **store_result(out, report)}


def generation_batch(size: dict[str, Any]) -> int:
    """Prompts per generate call of the teacher's continuations for seq_kd: the size's `generation_batch` (--full: 64,
    twice as fast per prompt as 8 and the same continuations), else its training batch."""
    return int(size.get("generation_batch", size["batch_size"]))


def pregenerate(size: dict[str, Any], runs: Path, teacher: str, data_over: dict[str, Any] | None) -> dict[str, Any]:
    """The teacher's greedy continuations of the training prompts, `generation_batch` at a time, into the cache
    seq_kd reads (timed once)."""
    from torch.utils.data import DataLoader

    from ktransfer.sequence.stage import StageContext
    from ktransfer.sequence.targets import targets_stage_from_config
    from ktransfer.tasks import Task

    cfg = method_config("seq_kd", size, runs, 0, teacher, data_over)
    data = data_for(cfg)
    model = teacher_model(teacher, data.info)
    stage = targets_stage_from_config(cfg.targets, "causal_lm")
    calls = generation_batch(size)
    started = time.perf_counter()
    loader = DataLoader(data.train, batch_size=calls, shuffle=False, collate_fn=data.collate_fn)
    for batch in loader:
        stage(batch, StageContext(model, model, Task("causal_lm"), 0, torch.device("cpu")))
    return {"kind": "generation", "examples": len(data.train), "batch": calls,
            "seconds": round(time.perf_counter() - started, 2)}


def generation_scores(model: Any, teacher: Any, data: Any, size: dict[str, Any]) -> dict[str, float]:
    """chrF against the references, the teacher's log-probability per token and the repetition rate of the
    student's greedy continuations of the first test prompts (held-out articles)."""
    from ktransfer.data.corpus import load_tokenizer

    tok = load_tokenizer(data.info["tokenizer"])
    p, new = size["prompt_length"], size["new_tokens"]
    blocks = [row["input_ids"] for row in data.test if len(row["input_ids"]) > p][:size["generation_prompts"]]
    if not blocks:
        raise ValueError(f"no test block longer than the {p}-token prompt")
    eos = data.info.get("eos_token_id")
    pad = data.info["pad_token_id"]
    hyps, refs, seqs, logps, counts = [], [], [], [], []
    model.eval()
    for start in range(0, len(blocks), size["batch_size"]):
        chunk = blocks[start:start + size["batch_size"]]
        prompts = torch.stack([b[:p] for b in chunk])
        with torch.no_grad():
            out = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new,
                                 do_sample=False, pad_token_id=pad, eos_token_id=eos)
        cont = out[:, p:]
        mask = torch.ones_like(cont, dtype=torch.bool)
        for row in range(cont.shape[0]):  # the continuation ends at its first end-of-text (kept)
            ends = (cont[row] == eos).nonzero() if eos is not None else []
            if len(ends):
                mask[row, int(ends[0]) + 1:] = False
        count = int(mask.sum())
        logps.append(teacher_logprob_per_token(teacher, prompts, cont, mask) * count)
        counts.append(count)
        for row, block in enumerate(chunk):
            ids = cont[row][mask[row]].tolist()
            seqs.append(ids)
            hyps.append(tok.decode(ids, skip_special_tokens=True))
            refs.append(tok.decode(block[p:].tolist(), skip_special_tokens=True))
    return {"chrf": chrf(hyps, refs), "teacher_logprob": sum(logps) / sum(counts),
            "repetition_rate": mean_repetition_rate(seqs, 3), "prompts": len(blocks),
            "continuation_tokens": sum(counts), "example": {"reference": refs[0], "student": hyps[0]}}


def evaluate_student(method: str, cfg: Any, run_dir: Path | None, size: dict[str, Any], teacher: str) -> dict[str, Any]:
    """Held-out loss, perplexity and teacher_kl (the product's evaluator) and the generation scores."""
    from ktransfer.checkpoint import load_weights
    from ktransfer.runner import build_model, run_evaluator

    data = data_for(cfg)
    model = build_model(cfg.student, data.info, "student")
    if run_dir is not None:
        load_weights(model, run_dir / "final" / "model.safetensors")
    live = teacher_model(teacher, data.info)
    held_out = run_evaluator(cfg, data, "test", live)(model)
    return {"test": {k: float(v) for k, v in held_out.items() if isinstance(v, (int, float))},
            "generation": generation_scores(model, live, data, size)}


def run_method(method: str, seed: int, size: dict[str, Any], runs: Path, teacher: str,
               data: dict[str, Any] | None) -> dict[str, Any]:
    """One student (`method`, `seed`) trained and scored; `warm` is the references-alone warm start (not scored)."""
    cfg = method_config(method, size, runs, seed, teacher, data)
    unit: dict[str, Any] = {"method": method, "seed": seed, "peak_rss_of": "unit" if reset_peak_rss() else "process"}
    run_dir = None
    if method != "untrained":
        run_dir = runs / f"{method}-s{seed}"
        result = train(cfg, run_dir)
        steps = cfg.train.max_steps
        unit.update({"steps": steps, "wall_time_s": round(result.train.wall_time_s, 2),
                     "step_s": training_step_s(run_dir)})
    if method != "warm":
        started = time.perf_counter()
        unit.update(evaluate_student(method, cfg, run_dir, size, teacher))
        unit["eval_s"] = round(time.perf_counter() - started, 2)
    unit["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return unit


# ------------------------------------------------------------------------------------------- aggregate
def aggregate(units: list[dict[str, Any]], stores: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """Per method: means with 95% t-intervals over seeds, and paired differences against references alone."""
    by_cell = cells(units, ["method"])
    base = {s: r for s, r in by_cell.get((BASELINE,), {}).items()}
    metrics = {"test_loss": ("test", "loss"), "teacher_kl": ("test", "teacher_kl"), "chrf": ("generation", "chrf"),
               "teacher_logprob": ("generation", "teacher_logprob"),
               "repetition_rate": ("generation", "repetition_rate")}

    def value(r: dict[str, Any], where: tuple[str, str]) -> float:
        return float(r[where[0]].get(where[1], float("nan")))

    rows = []
    for method in METHODS:
        runs = by_cell.get((method,))
        if not runs:
            continue
        row: dict[str, Any] = {"method": method, "label": LABELS[method], "seeds": sorted(runs)}
        for name, where in metrics.items():
            row[name] = ci([value(r, where) for r in runs.values()])
            if method != BASELINE and base:
                row[f"diff_{name}"] = paired({s: value(r, where) for s, r in runs.items()},
                                             {s: value(r, where) for s, r in base.items()})
        step_s = [r["step_s"] for r in runs.values() if r.get("step_s") is not None]
        row["step_s"] = ci(step_s) if step_s else None
        row["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs.values())
        rows.append(row)
    return {"meta": meta, "rows": rows, "stores": stores, "units": units}


def _fmt(interval: Any, digits: int = 3, signed: bool = False) -> str:
    if interval is None:
        return "—"
    m, h = interval
    text = f"{m:+.{digits}f}" if signed else f"{m:.{digits}f}"
    if h is None or (isinstance(h, float) and math.isnan(h)):
        return text
    return f"{text} ± {h:.{digits}f}{' *' if signed and abs(m) > h else ''}"


def ran_by(meta: dict[str, Any]) -> str:
    """The commands whose sittings ran the units (`harness.sittings.ran_by`)."""
    return sittings_ran_by(meta.get("sittings", []), meta["command"])


def markdown(result: dict[str, Any]) -> str:
    """The aggregate as Markdown: the methods' table and the stores' table."""
    meta = result["meta"]
    lines = [
        f"{ran_by(meta)}; {provenance.code_line(meta.get('provenance'))}; seeds {meta['seeds']}; "
        f"wall time {meta['wall_time_min']:.0f} min. Teacher: {meta['teacher']}; student cut from it (every 3rd "
        f"layer); {meta['size']['steps']} steps of {meta['size']['batch_size']} blocks of at most "
        f"{meta['size']['max_length']} tokens ({meta['size']['prompt_length']}-token prompt); on-policy methods start "
        f"from the references-alone student after {meta['size']['warm_steps']} steps.",
        "",
        "Test split (held-out articles). chrF and teacher log-prob/token score the student's greedy continuations "
        f"({meta['size']['new_tokens']} new tokens) of the test prompts; repetition = share of repeated token "
        "3-grams. Mean ± 95% t-interval over seeds; Δ = paired difference against references alone (* = interval "
        "excludes 0). Peak RSS: the unit's process from the unit's start (training and evaluation; a process keeps "
        "the teacher and the dataset loaded between its units).",
        "",
        "| method | test loss | teacher_kl | chrF | teacher log-prob/token | repetition | Δ teacher_kl | Δ chrF | "
        "Δ log-prob | s/step | peak RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['label']} | {_fmt(r['test_loss'])} | {_fmt(r['teacher_kl'])} | {_fmt(r['chrf'], 2)} | "
            f"{_fmt(r['teacher_logprob'])} | {_fmt(r['repetition_rate'])} | "
            f"{_fmt(r.get('diff_teacher_kl'), 3, True)} | {_fmt(r.get('diff_chrf'), 2, True)} | "
            f"{_fmt(r.get('diff_teacher_logprob'), 3, True)} | {_fmt(r['step_s'], 2)} | {r['peak_rss_mb']:.0f} |")
    if result["stores"]:
        lines += ["", "| store | bytes per target token | build time (s) | teacher passes: forward and top-k (s) | target tokens |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| top-{s['k']} | {s['bytes_per_token']:.1f} | {s['build_s']:.1f} | {s['forward_s']:.1f} | "
                  f"{s['positions']} |" for s in result["stores"]]
        note = build_time_note(result["stores"])
        if note:
            lines += ["", note]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- the benchmark
class RealTeacher(Benchmark):
    """The real-teacher benchmark on the harness: units are the stores, the teacher's generations, the warm starts
    and one student per method and seed, each `<unit>.json` under results/real_teacher/<size>/."""

    script = Path(__file__)
    description = globals()["__doc__"].splitlines()[0]

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.set_defaults(seeds=None)  # default: the size's seeds
        size = p.add_mutually_exclusive_group()
        size.add_argument("--quick", action="store_true", help="one seed of the main methods, about 55 min on 2 "
                                                               "cores with --jobs 2 (the default size)")
        size.add_argument("--full", action="store_true", help="three seeds of every method, about 9 h with --jobs 2, "
                                                              "across sittings")
        p.add_argument("--methods", nargs="+", default=None, choices=METHODS, help="default: the size's methods")
        p.add_argument("--teacher", default=None, help="the teacher's model folder (default: the prepared SmolLM2)")
        p.add_argument("--out", default=str(HERE / "runs"), help="run directories (resumable)")
        p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"), help="results folder")
        p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=JSON",
                       help="change a size setting, e.g. --set steps=4 or --set data='{...}' (recorded)")

    def setup(self, args: argparse.Namespace) -> None:
        args.started = time.perf_counter()
        args.size_name = "full" if args.full else "quick"
        args.size = copy.deepcopy(SIZES[args.size_name])
        for item in args.sets:
            key, value = item.split("=", 1)
            args.size[key] = json.loads(value)
        if args.seeds is None:
            args.seeds = args.size["seeds"]
        if args.seeds < 1:
            raise SystemExit(f"--seeds must be at least 1, got {args.seeds}")
        args.methods = args.methods or list(args.size["methods"])
        if args.size["threads"]:
            torch.set_num_threads(args.size["threads"])
        args.runs = Path(args.out) / args.size_name
        args.runs.mkdir(parents=True, exist_ok=True)
        self.results(args).mkdir(parents=True, exist_ok=True)

    def results(self, args: argparse.Namespace) -> Path:
        return Path(args.results) / "real_teacher" / args.size_name

    def units(self, args: argparse.Namespace) -> list[Unit]:
        return grid_units(args.methods, args.seeds, args.runs)

    def run_unit(self, unit: Unit, args: argparse.Namespace) -> dict[str, Any]:
        teacher, data = teacher_dir(args), args.size.get("data")
        kind = unit.key["kind"]
        if kind == "store":
            return build_store_unit(unit.key["k"], args.size, args.runs, teacher, data)
        if kind == "generation":
            return pregenerate(args.size, args.runs, teacher, data)
        method = "warm" if kind == "warm" else unit.key["method"]
        return run_method(method, unit.key["seed"], args.size, args.runs, teacher, data)

    def aggregate(self, args: argparse.Namespace, context: dict[str, Any]) -> dict[str, Any] | None:
        results = self.results(args)
        names = [u.name for u in self.units(args)]
        done = grid.read_units(results, names)
        units = [u for u in done if u.get("method") in METHODS]
        if not units:
            return None
        stores = [u for u in done if u.get("kind") == "store"]
        sittings = read_sittings(results / "sittings.jsonl")
        command = context["command"]
        meta = {**context, "provenance": aggregate_provenance(done, context), "seeds": list(range(args.seeds)),
                "size_name": args.size_name, "size": args.size, "teacher": args.teacher or "SmolLM2-135M-Instruct",
                "expected": expected_budget(args.size, args.methods, args.seeds, args.jobs),
                "wall_time_min": sum(wall_minutes(sittings, command).values())
                or (time.perf_counter() - args.started) / 60,
                "sittings": sittings}
        return aggregate(units, stores, meta)

    def outputs(self, result: dict[str, Any], args: argparse.Namespace) -> dict[Path, Any]:
        suffix = "" if args.size_name == "quick" else f"-{args.size_name}"
        root = Path(args.results)
        return {root / f"real_teacher{suffix}.json": result, root / f"real_teacher{suffix}.md": markdown(result)}

    def summary(self, result: dict[str, Any]) -> str:
        return markdown(result)


def main(argv: list[str] | None = None) -> int:
    return harness_main(RealTeacher(), argv)


if __name__ == "__main__":
    sys.exit(main())
