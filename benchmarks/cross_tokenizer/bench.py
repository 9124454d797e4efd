"""Cross-tokenizer benchmark: SmolLM2-135M-Instruct teaching a student whose tokenizer is not its own.

Data: BBC News articles (`ktransfer data prepare bbc-news`), split by article (`bbc_news_text`); training blocks
of `max_length` student tokens, the first `prompt_length` of them a prompt (no loss: the same blocks for every
method, and the prompts the on-policy student continues). The student is a small Llama (`llama_student`, as in
configs/causal/smollm2_cross_tokenizer.yaml) with a byte-level BPE of 8,000 tokens trained on the training
articles (`train_tokenizer: 8000`); the teacher reads its own tokens of the same text (`teacher_tokenizer`).
Per seed:

  labels          references alone (cross-entropy)
  uld             ULD (`cross_tokenizer`, `method: uld`) + cross-entropy, 1:1
  span            span alignment, off-policy (`method: span`, forward KL, span likelihood) + cross-entropy, 1:1
  span_on_policy  span alignment alone (`divergence: backward_kl`) on the student's samples mixed with the
                  dataset's blocks 1:1, from the references-alone student after `warm_steps` steps (no cross-entropy:
                  on a rewritten row it would train the student on its own samples)
  span_on_policy_refs  the same, plus cross-entropy on the dataset's rows only (`labels` with `sources: [dataset]`,
                  1:1), the guard GKD uses against on-policy collapse
  reinforce_on_policy  REINFORCE across tokenizers (`cross_tokenizer_reinforce`, span rewards, moving-average
                  baseline) on the same mixed rows, plus cross-entropy on the dataset's rows only, 1:1
  same_tokenizer  the reference point: the same student on SmolLM2's own tokenizer (49,152 tokens), forward KL
                  per token (`response`) + cross-entropy, 1:1
  uld_store, span_store, same_tokenizer_store
                  uld, span and same_tokenizer with the teacher read from a teacher output store of its top-`store_k`
                  (64) and a tail bucket per position, built once on the teacher's tokens (`ktransfer teacher-outputs
                  build`; units store-xtok and store-own) and read by every seed: the teacher runs once, not once a
                  seed, and no teacher is in memory while the students train

and once, the teacher itself (scored, not trained). `end_of_sequence` (a size setting) says whether the
cross-tokenizer terms align the two ends of sequence (--quick: no, --full: yes, the terms' default). Every method makes `steps` optimizer steps (the on-policy one
count their warm start's). Every unit is an ordinary ktransfer run of configs/causal/smollm2_cross_tokenizer.yaml,
loaded and changed here (knowledge, sizes, seed).

Scores, comparable across tokenizers (`scores.py`), on the held-out test articles as text:

- bits per byte: the student's negative log2-likelihood of the first `bpb_articles` test articles, summed over
  every token of its own tokenization of them, divided by the UTF-8 bytes those tokens spell (each article read
  after the end-of-sequence token that separates documents in training, in windows of `max_length` tokens
  overlapping by one, so every token is predicted once; windows of the same token count hold fewer characters
  for a tokenizer with shorter tokens, as its training blocks do);
- chrF (`benchmarks/real_teacher/metrics.chrf`) of greedy continuations of text prompts (an article's first
  `prompt_words` words) against the next `reference_chars` characters, each continuation (`new_tokens` tokens)
  cut to its reference's length in characters.

Also: the run's own held-out perplexity per token (validation split, not comparable across tokenizers), the
alignment of the two tokenizations of the training blocks (the share of each side's tokens inside aligned spans),
wall time per training step and peak resident memory.

Sizes. The budget below comes from costs measured on the 2-core machine (one thread, batch 8 x 64 student tokens;
`STEP_S` and the constants beside it, one process alone on the quiet machine), summed by `expected_budget` (see
`unit_seconds`), each unit 1.02 times slower with two workers side by side (`harness.budget.SIDE_BY_SIDE`):

  --quick  three seeds of labels, uld_store, span_store, span_on_policy, same_tokenizer_store; 300 steps (warm
           start 150), 2,400 training blocks; 24 test articles for bits per byte and 32 prompts: about 86 min
           of work, about 45 min of wall time with --jobs 2 (its sitting took 75 min beside other work; any
           other method: --methods, one seed of each with the live teacher ran so)
  --full   three seeds of every method but the live-teacher uld, span and same_tokenizer (their store
           versions instead); 1,200 steps (warm start 600), 9,600 training blocks; 96 test articles and 128
           prompts: about 8.2 h of work, about 4.2 h with --jobs 2, over sittings (each finished unit's JSON is
           kept; a sitting started again skips them)

    nohup python benchmarks/cross_tokenizer/bench.py --quick --jobs 2 > cross_tokenizer.log 2>&1 &   # resumable
    python benchmarks/cross_tokenizer/bench.py --full --jobs 2       # start again after a stop; commit the JSONs

Unit results: benchmarks/results/cross_tokenizer/<size>/<unit>.json; the aggregate: benchmarks/results/
cross_tokenizer[-full].json and .md (paired differences against references alone, by seed).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CONFIG = ROOT / "configs" / "causal" / "smollm2_cross_tokenizer.yaml"
sys.path.insert(0, str(HERE.parent))  # benchmarks/: the harness
sys.path.insert(0, str(HERE.parent / "real_teacher"))  # chrF of the real-teacher study
sys.path.insert(0, str(HERE))  # this study's scores
from harness import budget, grid, provenance  # noqa: E402
from harness.aggregate import aggregate_provenance, cells, ci, paired  # noqa: E402
from harness.cli import Benchmark, apply_sets  # noqa: E402
from harness.cli import main as harness_main  # noqa: E402
from harness.grid import Unit  # noqa: E402
from harness.reproduce import load_study  # noqa: E402
from harness.sittings import read_sittings, wall_minutes  # noqa: E402
from harness.stores import build_time_note, store_result  # noqa: E402
from metrics import chrf  # noqa: E402
from scores import bits_per_byte, continuations, prompts_and_references, truncated_to  # noqa: E402

REAL_TEACHER = load_study("real_teacher/bench.py")  # its per-unit measurements: step time, peak memory, table cells

METHODS = ["labels", "uld", "span", "span_on_policy", "span_on_policy_refs", "reinforce_on_policy", "same_tokenizer",
           "uld_store", "span_store", "same_tokenizer_store"]
# --quick: the methods, the off-policy ones from the teacher output store (the teacher runs once, not once
# per seed), so that three seeds fit.
QUICK_METHODS = ["labels", "uld_store", "span_store", "span_on_policy", "same_tokenizer_store"]
# --full: every method, the off-policy ones from the store only (their live runs, --methods uld span same_tokenizer,
# cost three times as much).
FULL_METHODS = ["labels", "span_on_policy", "span_on_policy_refs", "reinforce_on_policy", "uld_store", "span_store",
                "same_tokenizer_store"]
ON_POLICY = ("span_on_policy", "span_on_policy_refs", "reinforce_on_policy")
# A method trained from a store -> (the live method it reads like, the store it reads: on the student's blocks
# tokenised for the teacher, or on the teacher's own tokenizer's blocks).
FROM_STORE = {"uld_store": ("uld", "xtok"), "span_store": ("span", "xtok"), "same_tokenizer_store": ("same_tokenizer",
                                                                                                    "own")}
STORE_OF = {"xtok": "span", "own": "same_tokenizer"}  # the config whose data and teacher build each store
BASELINE = "labels"
LABELS = {"teacher": "teacher (SmolLM2-135M-Instruct), not trained", "labels": "references alone",
          "uld": "ULD + references", "span": "span alignment, forward KL, off-policy + references",
          "span_on_policy": "span alignment, backward KL, on-policy (from references alone)",
          "span_on_policy_refs": "span alignment, backward KL, on-policy + references on the dataset's rows",
          "reinforce_on_policy": "REINFORCE across tokenizers, on-policy + references on the dataset's rows",
          "same_tokenizer": "same tokenizer as the teacher: forward KL per token + references",
          "uld_store": "ULD + references, from the store",
          "span_store": "span alignment, forward KL, off-policy + references, from the store",
          "same_tokenizer_store": "same tokenizer as the teacher: forward KL per token + references, from the store"}

# Seconds on the 2-core machine, one thread, batch 8 x 64 student tokens: measured per step between the 10th and the
# 40th step (20th for the on-policy run) of each method while the machine ran other work, then divided by 2.0, the
# ratio of SmolLM2's forward pass on 8 x 64 tokens timed around those runs (2.7 s before, 3.6-4.5 s after) to the
# 1.6 s it takes on the quiet machine (benchmarks/real_teacher).
STEP_S = {"labels": 0.3, "uld": 3.1, "span": 2.0, "span_on_policy": 2.4, "span_on_policy_refs": 2.4,
          "reinforce_on_policy": 2.4, "same_tokenizer": 2.8,  # the last on-policy two: as span_on_policy, not measured
          "uld_store": 0.4, "span_store": 0.4, "same_tokenizer_store": 1.3}
# the store methods: measured the same way in their --quick sitting (0.71-0.83, 0.77-0.89 and 2.36-2.76 s), / 2.0
STORE_BATCH_S = 2.4  # a store batch (the teacher on 8 blocks, top-k kept): 4.8 s in that sitting, / 2.0
TEACHER_BPB_BATCH_S = 6.4  # the teacher over 32 windows of 64 tokens (4 x the 8 x 64 forward)
STUDENT_BPB_BATCH_S = 0.5
TEACHER_TOKEN_S = 0.07  # one greedy token of the teacher, one prompt
STUDENT_TOKEN_S = 0.01
TOKENS_PER_ARTICLE = 420  # a test article in 8,000-token BPE tokens (SmolLM2's: 410)

SIZES: dict[str, dict[str, Any]] = {
    "quick": {"steps": 300, "warm_steps": 150, "batch_size": 8, "train_size": 2400, "val_size": 64, "test_size": 64,
              "max_length": 64, "prompt_length": 16, "new_tokens": 40, "lr": 2e-3, "on_policy_lr": 1e-3,
              "bpb_articles": 24, "prompts": 32, "prompt_words": 12, "reference_chars": 120, "seeds": 3,
              "store_k": 64, "methods": QUICK_METHODS, "end_of_sequence": False, "student": {}, "threads": 1},
    "full": {"steps": 1200, "warm_steps": 600, "batch_size": 8, "train_size": 9600, "val_size": 64, "test_size": 64,
             "max_length": 64, "prompt_length": 16, "new_tokens": 40, "lr": 2e-3, "on_policy_lr": 1e-3,
             "bpb_articles": 96, "prompts": 128, "prompt_words": 12, "reference_chars": 120, "seeds": 3,
             "store_k": 64, "methods": FULL_METHODS, "end_of_sequence": True, "student": {}, "threads": 1},
}


# ------------------------------------------------------------------------------------------- grid and budget
def grid_units(methods: list[str], seeds: int, runs: Path | None = None,
               size: dict[str, Any] | None = None) -> list[Unit]:
    """The teacher's scores, the stores and the warm starts (shared; given `runs` and `size`, the stores and warm
    starts name the files they keep there for the units that need them), then one unit per method and seed (the
    dearest first)."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; valid choices: {', '.join(METHODS)}")
    known = runs is not None and size is not None
    units = [Unit("teacher", {"kind": "teacher"})]
    units += [Unit(f"store-{which}", {"kind": "store", "store": which},
                   keeps=(str(store_dir(runs, which, size)),) if known else ())
              for which in STORE_OF if any(FROM_STORE.get(m, ("", ""))[1] == which for m in methods)]
    if any(m in ON_POLICY for m in methods):
        units += [Unit(f"warm-s{s}", {"kind": "warm", "seed": s}, keeps=(str(warm_weights(runs, s)),) if known else ())
                  for s in range(seeds)]
    order = [m for m in ("span_on_policy", "uld", "same_tokenizer", "span", "span_on_policy_refs", "reinforce_on_policy",
                         "same_tokenizer_store", "uld_store", "span_store", "labels") if m in methods]
    for s in range(seeds):
        for m in order:
            needs = (f"warm-s{s}",) if m in ON_POLICY else (f"store-{FROM_STORE[m][1]}",) if m in FROM_STORE else ()
            units.append(Unit(f"{m}-s{s}", {"kind": "method", "method": m, "seed": s}, needs))
    return units


def unit_seconds(unit: Unit, size: dict[str, Any]) -> float:
    """A unit's expected seconds on one thread: its training steps and its scoring (bits per byte over the test
    articles in batches of 32 windows; one greedy continuation per prompt)."""
    windows = size["bpb_articles"] * math.ceil(TOKENS_PER_ARTICLE / (size["max_length"] - 1))
    batches = math.ceil(windows / 32)
    kind = unit.key["kind"]
    if kind == "teacher":
        return batches * TEACHER_BPB_BATCH_S + size["prompts"] * size["new_tokens"] * TEACHER_TOKEN_S
    if kind == "warm":
        return size["warm_steps"] * STEP_S["labels"]
    if kind == "store":
        return math.ceil(size["train_size"] / size["batch_size"]) * STORE_BATCH_S
    method = unit.key["method"]
    scoring = batches * STUDENT_BPB_BATCH_S + size["prompts"] * size["new_tokens"] * STUDENT_TOKEN_S
    steps = size["steps"] - size["warm_steps"] if method in ON_POLICY else size["steps"]
    return steps * STEP_S[method] + scoring


def expected_budget(size: dict[str, Any], methods: list[str], seeds: int, jobs: int) -> dict[str, float]:
    """Expected work (one thread alone, summed over units) and wall time with `jobs` workers, in minutes
    (`harness.budget.expected_budget`: each unit slower by `SIDE_BY_SIDE` when workers share the cores)."""
    return budget.expected_budget(grid_units(methods, seeds), lambda u: unit_seconds(u, size), jobs)


# ------------------------------------------------------------------------------------------- configs
def method_config(method: str, size: dict[str, Any], runs: Path, seed: int, teacher: str | None,
                  data: dict[str, Any] | None = None) -> Any:
    """The RunConfig of a method's run (or of `warm`, the references-alone warm start): the cross-tokenizer config
    with this size's data, steps, seed and knowledge; `teacher` a model folder holding its tokenizer (None: the
    prepared SmolLM2)."""
    from ktransfer.config import RunConfig

    if method in FROM_STORE:  # the live method's run, its teacher read from the store built for it
        live, which = FROM_STORE[method]
        cfg = method_config(live, size, runs, seed, teacher, data).to_dict()
        cfg["teacher"] = {"store": str(store_dir(runs, which, size))}
        return RunConfig.from_dict(cfg)
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["data"] = {**cfg["data"], "max_length": size["max_length"], "prompt_length": size["prompt_length"],
                   "train_size": size["train_size"], "val_size": size["val_size"], "test_size": size["test_size"],
                   **(data or {})}
    cfg["student"] = {**cfg["student"], **size.get("student", {})}  # e.g. a smaller student for a test
    teacher_tokenizer = teacher or "smollm2"
    cfg["data"]["teacher_tokenizer"] = teacher_tokenizer
    cfg["teacher"] = {"builder": "smollm2"} if teacher is None else {"builder": "hf_pretrained", "model": teacher,
                                                                     "dtype": "float32"}
    eos = {"end_of_sequence": bool(size.get("end_of_sequence", True))}  # ends of sequence aligned across tokenizers
    xtok = {"type": "cross_tokenizer", "temperature": 1.0, "weight": 0.5, **eos}
    labels = {"type": "labels", "weight": 0.5}
    if method in ("labels", "warm"):
        cfg["knowledge"] = [{"type": "labels", "weight": 1.0}]
        cfg["teacher"] = None  # the same training blocks as the other students, no teacher
    elif method == "uld":
        cfg["knowledge"] = [{**xtok, "method": "uld"}, labels]
    elif method == "span":
        cfg["knowledge"] = [{**xtok, "method": "span", "divergence": "forward_kl", "likelihood_weight": 1.0}, labels]
    elif method == "span_on_policy":
        # the term alone: a labels term would also train on the student's own samples (the rewritten rows' labels)
        cfg["knowledge"] = [{**xtok, "method": "span", "divergence": "backward_kl", "likelihood_weight": 1.0,
                             "weight": 1.0}]
    elif method == "span_on_policy_refs":
        # GKD's guard: the references stay in the loss, on the dataset's rows only (labels' sources)
        cfg["knowledge"] = [{**xtok, "method": "span", "divergence": "backward_kl", "likelihood_weight": 1.0},
                            {**labels, "sources": ["dataset"]}]
    elif method == "reinforce_on_policy":
        cfg["knowledge"] = [{"type": "cross_tokenizer_reinforce", "baseline": "moving_average", "weight": 0.5, **eos},
                            {**labels, "sources": ["dataset"]}]
    elif method == "same_tokenizer":
        own = {"tokenizer": None, "prepared_tokenizer": "smollm2"} if teacher is None else {"tokenizer": teacher,
                                                                                           "prepared_tokenizer": None}
        cfg["data"] = {k: v for k, v in {**cfg["data"], **own}.items()
                       if k not in ("teacher_tokenizer", "train_tokenizer") and v is not None}
        cfg["knowledge"] = [{"type": "response", "divergence": "forward_kl", "temperature": 1.0, "weight": 0.5}, labels]
    else:
        raise ValueError(f"unknown method {method!r}; valid choices: warm, {', '.join(METHODS)}")
    on_policy = method in ON_POLICY
    if on_policy:
        cfg["targets"] = {"sources": {"dataset": 0.5, "student": 0.5},
                          "generation": {"max_new_tokens": size["max_length"] - size["prompt_length"],
                                         "do_sample": True, "temperature": 1.0}}
        cfg["student"] = {**cfg["student"], "weights": str(warm_weights(runs, seed))}
    steps = size["steps"] - size["warm_steps"] if on_policy else size["warm_steps"] if method == "warm" else size["steps"]
    cfg["train"] = {**cfg["train"], "max_steps": max(steps, 1), "batch_size": size["batch_size"], "seed": seed,
                    "eval_every": max(steps, 1), "log_every": max(1, min(10, steps))}
    cfg["optim"] = {**cfg["optim"], "lr": size["on_policy_lr"] if on_policy else size["lr"]}
    if on_policy:
        cfg["schedule"] = {**cfg["schedule"], "warmup_steps": 0}  # continues a trained student
    return RunConfig.from_dict(cfg)


_DATA: dict[str, Any] = {}
_TEACHER: dict[str, Any] = {}


def warm_weights(runs: Path, seed: int) -> Path:
    """The warm start's weights, which the on-policy methods begin from."""
    return runs / f"warm-s{seed}" / "final" / "model.safetensors"


def store_dir(runs: Path, which: str, size: dict[str, Any]) -> Path:
    """Where the store `which` (xtok: the student's blocks on the teacher's tokens; own: the teacher's tokenizer's
    blocks) of top-`store_k` is built."""
    return runs / f"store-{which}-k{size['store_k']}"


def build_store_unit(which: str, size: dict[str, Any], runs: Path, teacher: str | None,
                     data: dict[str, Any] | None) -> dict[str, Any]:
    """The teacher's top-k over the training blocks of `which`'s config, written once (resumable): its size per
    target token and build time."""
    from ktransfer.store.build import build_store

    cfg = method_config(STORE_OF[which], size, runs, 0, teacher, data)
    out = store_dir(runs, which, size)
    report = build_store(cfg, out, k=size["store_k"], batch_size=size["batch_size"])
    return {"kind": "store", "store": which, "k": size["store_k"], **store_result(out, report)}


def data_for(cfg: Any) -> Any:
    """A config's dataset, loaded once per process."""
    from ktransfer.runner import load_data

    key = json.dumps(cfg.data, sort_keys=True)
    if key not in _DATA:
        _DATA[key] = load_data(cfg)
    return _DATA[key]


def teacher_model(teacher: str | None, info: dict[str, Any]) -> Any:
    """The teacher, built once per process."""
    from ktransfer.runner import build_model

    key = teacher or "smollm2"
    if key not in _TEACHER:
        spec = {"builder": "smollm2"} if teacher is None else {"builder": "hf_pretrained", "model": teacher,
                                                               "dtype": "float32"}
        _TEACHER[key] = build_model(spec, info, "teacher").eval().requires_grad_(False)
    return _TEACHER[key]


def held_out_articles(data: dict[str, Any]) -> list[str]:
    """The held-out test documents of a config's data section, as text (the dataset's own split by document)."""
    from ktransfer.data.corpus import read_documents, split_documents

    name = data["name"]
    if name == "bbc_news_text":
        from ktransfer.data.packaged import BBC, ROWS_FILE, _read_rows

        docs = [r["text"] for r in _read_rows(BBC.require(ROWS_FILE))]
    elif name == "text_corpus":
        docs = read_documents(data["path"], data.get("format", "auto"), data.get("text_field", "text"),
                              data.get("separator", "line"))
    else:
        raise ValueError(f"data.name: the benchmark reads the test documents of bbc_news_text or text_corpus, "
                         f"got {name!r}")
    _, _, test, _ = split_documents(docs, data.get("val_fraction", 0.1), data.get("test_fraction", 0.1),
                                    data.get("split_seed", 0))
    return [docs[i] for i in test]


# ------------------------------------------------------------------------------------------- units
def train(cfg: Any, run_dir: Path) -> Any:
    """Train (or resume, or leave a finished run as it is) and return the RunResult."""
    from ktransfer.runner import resume, run

    if (run_dir / "summary.json").is_file() or (run_dir / "checkpoints").is_dir():
        return resume(run_dir, progress=False)
    return run(cfg, run_dir, progress=False, overwrite=True, data=data_for(cfg))


def text_scores(model: Any, tok: Any, info: dict[str, Any], size: dict[str, Any], articles: list[str]) -> dict[str, Any]:
    """Bits per byte of the test articles and chrF of the greedy continuations of their prompts."""
    eos, pad = info.get("eos_token_id"), info["pad_token_id"]
    start = eos if eos is not None else pad
    bpb = bits_per_byte(model, tok, articles[:size["bpb_articles"]], start, size["max_length"])
    pairs = prompts_and_references(articles, size["prompt_words"], size["reference_chars"], size["prompts"])
    refs = [r for _, r in pairs]
    hyps = truncated_to(continuations(model, tok, [p for p, _ in pairs], start, eos, pad, size["new_tokens"]), refs)
    return {"bpb": bpb, "generation": {"chrf": chrf(hyps, refs), "prompts": len(pairs), "characters_scored":
                                       sum(len(h) for h in hyps),
                                       "example": {"prompt": pairs[0][0], "reference": refs[0], "model": hyps[0]}}}


def teacher_unit(size: dict[str, Any], runs: Path, teacher: str | None, data: dict[str, Any] | None) -> dict[str, Any]:
    """The teacher's own scores (its tokenizer, the same windows and prompts)."""
    from ktransfer.data.corpus import load_tokenizer

    cfg = method_config("same_tokenizer", size, runs, 0, teacher, data)
    split = data_for(cfg)
    model = teacher_model(teacher, split.info)
    tok = load_tokenizer(split.info["tokenizer"])
    started = time.perf_counter()
    unit = {"kind": "teacher", "method": "teacher", "seed": 0,
            **text_scores(model, tok, split.info, size, held_out_articles(cfg.data))}
    unit["eval_s"] = round(time.perf_counter() - started, 2)
    return unit


def run_method(method: str, seed: int, size: dict[str, Any], runs: Path, teacher: str | None,
               data: dict[str, Any] | None) -> dict[str, Any]:
    """One student (`method`, `seed`) trained and scored; `warm` is the references-alone warm start (not scored)."""
    from ktransfer.checkpoint import load_weights
    from ktransfer.data.corpus import load_tokenizer
    from ktransfer.runner import build_model

    cfg = method_config(method, size, runs, seed, teacher, data)
    unit: dict[str, Any] = {"method": method, "seed": seed,
                            "peak_rss_of": "unit" if REAL_TEACHER.reset_peak_rss() else "process"}
    run_dir = runs / f"{method}-s{seed}"
    result = train(cfg, run_dir)
    unit.update({"steps": cfg.train.max_steps, "wall_time_s": round(result.train.wall_time_s, 2),
                 "step_s": REAL_TEACHER.training_step_s(run_dir)})
    if method != "warm":
        split = data_for(cfg)
        started = time.perf_counter()
        model = build_model(cfg.student, split.info, "student")
        load_weights(model, run_dir / "final" / "model.safetensors")
        tok = load_tokenizer(split.info["tokenizer"])
        unit.update(text_scores(model, tok, split.info, size, held_out_articles(cfg.data)))
        unit["val_perplexity"] = float(result.train.final_metrics.get("perplexity", float("nan")))
        unit["vocab_size"] = int(split.info["vocab_size"])
        if any(k["type"] == "cross_tokenizer" for k in cfg.knowledge):
            unit["alignment"] = alignment_counts(split.train)
        unit["eval_s"] = round(time.perf_counter() - started, 2)
    unit["peak_rss_mb"] = round(REAL_TEACHER.peak_rss_mb(), 1)
    return unit


def alignment_counts(train: Any) -> dict[str, Any]:
    """How the two tokenizations of the training blocks align (`align_offsets`): spans, and each side's tokens and
    the share of them inside aligned spans."""
    from ktransfer.cross_tokenizer.align import align_offsets

    counts = {"blocks": len(train), "spans": 0, "student_tokens": 0, "teacher_tokens": 0, "student_aligned": 0,
              "teacher_aligned": 0}
    for k in range(len(train)):
        row = train[k]
        a = align_offsets(row["token_offsets"].tolist(), row["teacher_token_offsets"].tolist())
        s_count = int((row["token_offsets"][:, 0] >= 0).sum())
        t_count = int((row["teacher_token_offsets"][:, 0] >= 0).sum())
        counts["spans"] += len(a.spans)
        counts["student_tokens"] += s_count
        counts["teacher_tokens"] += t_count
        counts["student_aligned"] += s_count - a.student_unaligned
        counts["teacher_aligned"] += t_count - a.teacher_unaligned
    return {**counts, "student_aligned_share": counts["student_aligned"] / max(counts["student_tokens"], 1),
            "teacher_aligned_share": counts["teacher_aligned"] / max(counts["teacher_tokens"], 1)}


# ------------------------------------------------------------------------------------------- aggregate
METRICS = {"bits_per_byte": ("bpb", "bits_per_byte"), "chrf": ("generation", "chrf")}


def aggregate(units: list[dict[str, Any]], stores: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """Per method: means with 95% t-intervals over seeds, and paired differences against references alone; the
    teacher's scores as a reference row."""
    by_cell = cells(units, ["method"])
    base = dict(by_cell.get((BASELINE,), {}))

    def value(r: dict[str, Any], where: tuple[str, str]) -> float:
        return float(r[where[0]].get(where[1], float("nan")))

    rows = []
    for method in ["teacher", *METHODS]:
        runs = by_cell.get((method,))
        if not runs:
            continue
        row: dict[str, Any] = {"method": method, "label": LABELS[method], "seeds": sorted(runs)}
        for name, where in METRICS.items():
            row[name] = ci([value(r, where) for r in runs.values()])
            if method not in (BASELINE, "teacher") and base:
                row[f"diff_{name}"] = paired({s: value(r, where) for s, r in runs.items()},
                                             {s: value(r, where) for s, r in base.items()})
        row["bytes_per_token"] = next(iter(runs.values()))["bpb"]["bytes_per_token"]
        row["bytes_not_covered"] = max(r["bpb"]["bytes_not_covered"] for r in runs.values())
        step_s = [r["step_s"] for r in runs.values() if r.get("step_s") is not None]
        row["step_s"] = ci(step_s) if step_s else None
        aligned = [r["alignment"]["student_aligned_share"] for r in runs.values() if r.get("alignment")]
        row["student_aligned_share"] = ci(aligned) if aligned else None
        row["peak_rss_mb"] = max((r["peak_rss_mb"] for r in runs.values() if "peak_rss_mb" in r), default=None)
        rows.append(row)
    return {"meta": meta, "rows": rows, "stores": stores, "units": units}


def markdown(result: dict[str, Any]) -> str:
    """The aggregate as a Markdown table."""
    meta, fmt = result["meta"], REAL_TEACHER._fmt
    size = meta["size"]
    lines = [
        f"{REAL_TEACHER.ran_by(meta)}; {provenance.code_line(meta.get('provenance'))}; seeds {meta['seeds']} (a row "
        "has the seeds of its finished units: `seeds` column); "
        f"wall time {meta['wall_time_min']:.0f} min. Teacher: {meta['teacher']}, on its own tokens; students: a "
        f"Llama of 4 layers (hidden 256) with a byte-level BPE of 8,000 tokens trained on the training articles, and "
        f"the same Llama on the teacher's tokenizer; {size['steps']} steps of {size['batch_size']} blocks of at most "
        f"{size['max_length']} student tokens ({size['prompt_length']}-token prompt); the on-policy student starts "
        f"from the references-alone student after {size['warm_steps']} steps.",
        "",
        f"Test split (held-out articles), as text. Bits per byte: negative log2-likelihood of the first "
        f"{size['bpb_articles']} test articles under each model's own tokenization, over the UTF-8 bytes its tokens "
        f"spell (windows of {size['max_length']} tokens). chrF: greedy continuations of the first "
        f"{size['prompt_words']} words of {size['prompts']} articles, cut to the {size['reference_chars']}-character "
        "reference. Mean ± 95% t-interval over seeds; Δ = paired difference against references alone (* = interval "
        "excludes 0). Aligned: share of the student's training tokens inside aligned spans.",
        "",
        "| method | seeds | bits/byte | chrF | Δ bits/byte | Δ chrF | bytes/token | aligned | s/step | peak RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        rss = "—" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f}"
        lines.append(
            f"| {r['label']} | {len(r['seeds'])} | {fmt(r['bits_per_byte'])} | {fmt(r['chrf'], 2)} | "
            f"{fmt(r.get('diff_bits_per_byte'), 3, True)} | {fmt(r.get('diff_chrf'), 2, True)} | "
            f"{r['bytes_per_token']:.2f} | {fmt(r['student_aligned_share'], 3)} | {fmt(r['step_s'], 2)} | {rss} |")
    if result.get("stores"):
        lines += ["", f"The stores (top-{size['store_k']} of the teacher on its own tokens, float32 values, a tail "
                      "bucket per position; built once, read by every seed):", "",
                  "| store | target tokens | bytes per target token | build time (s) | teacher passes: forward and top-k (s) |",
                  "|---|---:|---:|---:|---:|"]
        names = {"xtok": "the student's blocks, on the teacher's tokens", "own": "the teacher tokenizer's blocks"}
        lines += [f"| {names[s['store']]} | {s['positions']} | {s['bytes_per_token']:.0f} | {s['build_s']:.0f} | "
                  f"{s['forward_s']:.0f} |" for s in result["stores"]]
        note = build_time_note([{**s, "label": names[s["store"]]} for s in result["stores"]])
        if note:
            lines += ["", note]
    missing = [r["label"] for r in result["rows"] if r["bytes_not_covered"]]
    if missing:
        lines += ["", "Bytes the tokens do not spell back (left out of bits per byte): " + ", ".join(
            f"{r['label']}: {r['bytes_not_covered']}" for r in result["rows"] if r["bytes_not_covered"])]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- the benchmark
class CrossTokenizer(Benchmark):
    """The cross-tokenizer benchmark on the harness: units are the teacher's scores, the warm starts and one student
    per method and seed, each `<unit>.json` under results/cross_tokenizer/<size>/."""

    script = Path(__file__)
    description = globals()["__doc__"].splitlines()[0]

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.set_defaults(seeds=None)  # default: the size's seeds
        size = p.add_mutually_exclusive_group()
        size.add_argument("--quick", action="store_true", help="three seeds of the main methods (off-policy ones "
                                                               "from the store), < 60 min on 2 cores with --jobs 2 "
                                                               "(the default size)")
        size.add_argument("--full", action="store_true", help="three seeds of every method, over sittings")
        p.add_argument("--methods", nargs="+", default=None, choices=METHODS,
                       help=f"default: --quick {' '.join(QUICK_METHODS)}; --full {' '.join(FULL_METHODS)}")
        p.add_argument("--teacher", default=None, help="the teacher's model folder, with its tokenizer (default: the "
                                                       "prepared SmolLM2)")
        p.add_argument("--out", default=str(HERE / "runs"), help="run directories (resumable)")
        p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"), help="results folder")
        p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=JSON",
                       help="change a size setting, e.g. --set steps=4 or --set data='{...}' (recorded)")

    def setup(self, args: argparse.Namespace) -> None:
        args.started = time.perf_counter()
        args.size_name = "full" if args.full else "quick"
        args.size = copy.deepcopy(SIZES[args.size_name])
        apply_sets(args.size, args.sets, also=("data",))
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
        return Path(args.results) / "cross_tokenizer" / args.size_name

    def units(self, args: argparse.Namespace) -> list[Unit]:
        return grid_units(args.methods, args.seeds, args.runs, args.size)

    def run_unit(self, unit: Unit, args: argparse.Namespace) -> dict[str, Any]:
        data = args.size.get("data")
        kind = unit.key["kind"]
        if kind == "teacher":
            return teacher_unit(args.size, args.runs, args.teacher, data)
        if kind == "store":
            return build_store_unit(unit.key["store"], args.size, args.runs, args.teacher, data)
        method = "warm" if kind == "warm" else unit.key["method"]
        return run_method(method, unit.key["seed"], args.size, args.runs, args.teacher, data)

    def aggregate(self, args: argparse.Namespace, context: dict[str, Any]) -> dict[str, Any] | None:
        results = self.results(args)
        # every method's finished units of these seeds, also those of methods not asked for in this sitting
        done = grid.read_units(results, [u.name for u in grid_units(list(METHODS), args.seeds)])
        units = [u for u in done if u.get("method") in ("teacher", *METHODS)]
        stores = [u for u in done if u.get("kind") == "store"]
        if not units:
            return None
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
        return {root / f"cross_tokenizer{suffix}.json": result, root / f"cross_tokenizer{suffix}.md": markdown(result)}

    def summary(self, result: dict[str, Any]) -> str:
        return markdown(result)


def main(argv: list[str] | None = None) -> int:
    return harness_main(CrossTokenizer(), argv)


if __name__ == "__main__":
    sys.exit(main())
