"""Several-teachers benchmark: a fine-tuned MiniLM and a TF-IDF logistic regression teaching one small student.

BBC News topics (5 classes). Two teachers of different kinds:

* `minilm`: the MiniLM encoder fine-tuned once on the task (cached, `configs/text/bbc_news_teacher.yaml`); its
  class logits on the training split are written once into a teacher output store (`ktransfer.store.build`),
  which for a classifier trains exactly as the live model would, without running it at every step;
* `tfidf`: a TF-IDF (word 1-2 grams) logistic regression fitted on the training split's texts (decoded from
  the token ids the student reads), its class log-probabilities written with `StoreWriter`.

A 2-layer MiniLM student learns from them in these ways (response: forward KL at T = 2, plus the labels):
each teacher alone; the averaged target (probabilities averaged, `combine: average`); the per-example
choice of the teacher giving the true label the highest probability (`combine: choose`); one term per
teacher with equal fixed weights (`combine: pairs`); and the actor-critic selector over the (teacher,
term) pairs, soft and hard. Every variant of a seed starts from the same student initialisation and sees
the same batches; the test split is scored once per run with the checkpoint best on validation
(macro-F1 and MCC), and the selector's weight of each pair is kept per logged step.

    python benchmarks/multi_teacher/bench.py --quick        # 96 tokens, 120 steps of 16, 3 seeds (2 CPUs: see below)
    python benchmarks/multi_teacher/bench.py                # 256 tokens, 600 steps of 32

Budget of --quick on 2 CPU cores (estimated from step times, not yet measured end to end): the MiniLM teacher's
training, when the cache does not hold it yet (300 steps at 256 tokens, shared with the selection benchmark's
BBC News teacher), about 25 min; both stores about 2 min; 21 student runs of about 1.4 min each.

Writes benchmarks/results/multi_teacher.json, benchmarks/multi_teacher/results/multi_teacher.md and weights.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))  # benchmarks/: the harness
from harness import grid, provenance  # noqa: E402
from harness.aggregate import aggregate_provenance, ci_nan, paired_nan  # noqa: E402
from harness.cli import Benchmark  # noqa: E402
from harness.cli import main as harness_main  # noqa: E402
from harness.cli import threads_per_worker_env  # noqa: E402
from harness.grid import Unit  # noqa: E402
from harness.report import save_figure  # noqa: E402
from harness.sittings import ran_by  # noqa: E402

TEACHER_CONFIG = ROOT / "configs" / "text" / "bbc_news_teacher.yaml"
TEACHERS = ("minilm", "tfidf")
TERMS: list[dict[str, Any]] = [
    {"type": "response", "divergence": "forward_kl", "temperature": 2.0, "weight": 1.0},
    {"type": "labels", "weight": 1.0},
]
AC = {"type": "actor_critic", "heldout_examples": 64, "student_representation": "bert.pooler"}
# variant -> (teachers it reads, combine section, selector)
VARIANTS: dict[str, tuple[tuple[str, ...], dict[str, Any] | None, dict[str, Any]]] = {
    "minilm_only": (("minilm",), None, {"type": "fixed"}),
    "tfidf_only": (("tfidf",), None, {"type": "fixed"}),
    "average": (TEACHERS, {"method": "average"}, {"type": "fixed"}),
    "choose": (TEACHERS, {"method": "choose", "by": "label"}, {"type": "fixed"}),
    "pairs_equal": (TEACHERS, {"method": "pairs", "weights": {"minilm": 0.5, "tfidf": 0.5}}, {"type": "fixed"}),
    "ac_soft": (TEACHERS, {"method": "pairs"}, {**AC, "mode": "soft"}),
    "ac_hard": (TEACHERS, {"method": "pairs"}, {**AC, "mode": "hard"}),
}
BASELINE = "minilm_only"
STUDENT = {"builder": "minilm_student", "num_layers": 2, "init": "teacher_layers"}
SIZES: dict[str, dict[str, Any]] = {
    "quick": {"max_length": 96, "train_size": None, "max_steps": 120, "batch_size": 16, "eval_every": 40,
              "lr": 1e-4, "warmup": 12, "heldout": 64},
    "full": {"max_length": 256, "train_size": None, "max_steps": 600, "batch_size": 32, "eval_every": 100,
             "lr": 1e-4, "warmup": 50, "heldout": 64},
    # the tests' end-to-end size: a few examples and steps, with a teacher trained for two steps
    "tiny": {"max_length": 32, "train_size": 48, "val_fraction": 0.02, "test_fraction": 0.02, "max_steps": 4,
             "batch_size": 8, "eval_every": 4, "lr": 1e-4, "warmup": 0, "heldout": 8, "teacher_steps": 2},
}


def data_section(size: str) -> dict[str, Any]:
    s = SIZES[size]
    data = {"name": "bbc_news", "max_length": s["max_length"], "val_fraction": s.get("val_fraction", 0.1),
            "test_fraction": s.get("test_fraction", 0.2), "split_seed": 0}
    return {**data, "train_size": s["train_size"]} if s["train_size"] is not None else data


def teacher_config(size: str, out: Path) -> Path:
    """The MiniLM teacher's run config: the committed one, or (tiny) a two-step copy on the tiny data."""
    if size != "tiny":
        return TEACHER_CONFIG
    import yaml

    cfg = yaml.safe_load(TEACHER_CONFIG.read_text())
    cfg["data"] = data_section(size)
    cfg["train"] = {**cfg["train"], "max_steps": SIZES[size]["teacher_steps"], "eval_every": 2, "batch_size": 8,
                    "checkpoint_every": 2, "eval_batch_size": 64}
    cfg["schedule"] = {"name": "constant"}
    path = out / "tiny_teacher.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_config(variant: str, seed: int, size: str, stores: dict[str, str]) -> dict[str, Any]:
    """The whole run as a config dict (the same a YAML file would hold)."""
    names, combine, selector = VARIANTS[variant]
    s = SIZES[size]
    selector = dict(selector)
    if selector["type"] == "actor_critic":
        selector["heldout_examples"] = s["heldout"]
    config: dict[str, Any] = {
        "task": "classification",
        "data": data_section(size),
        "teachers": {name: {"store": stores[name]} for name in names},
        "student": dict(STUDENT),
        "knowledge": [dict(t) for t in TERMS],
        "selector": selector,
        "optim": {"name": "adamw", "lr": s["lr"], "weight_decay": 0.01},
        "schedule": {"name": "linear", "warmup_steps": s["warmup"]},
        "train": {"max_steps": s["max_steps"], "batch_size": s["batch_size"], "eval_batch_size": 128,
                  "eval_every": s["eval_every"], "log_every": 5 if size != "tiny" else 1,
                  "checkpoint_every": s["max_steps"], "seed": seed, "group_by_length": True},
    }
    if combine is not None:
        config["combine"] = combine
    return config


# ------------------------------------------------------------------------------------------- the teachers
def texts_of(dataset: Any) -> list[str]:
    """The texts the student reads (its token ids decoded, so truncated as it sees them)."""
    from ktransfer.data.tokenized import load_tokenizer

    tok = load_tokenizer(None)
    return [tok.decode(dataset[i]["input_ids"], skip_special_tokens=True) for i in range(len(dataset))]


def labels_of(dataset: Any) -> np.ndarray:
    return np.array([int(dataset[i]["labels"]) for i in range(len(dataset))])


def prepare_teachers(size: str, out: Path) -> dict[str, Any]:
    """Both teachers' stores (built once) and their scores on the test split; recorded in `out`/teachers.json."""
    record = out / "teachers.json"
    if record.exists():
        return grid.read_unit(record)
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from ktransfer.config import RunConfig
    from ktransfer.runner import load_data
    from ktransfer.scores import classification_scores, predict_classes
    from ktransfer.store import StoreWriter, examples_digest
    from ktransfer.store.build import build_store
    from ktransfer.tasks import Task
    from ktransfer.teachers import load_cached_teacher, prepare_teacher

    config = teacher_config(size, out)
    t0 = time.perf_counter()
    teacher_dir = prepare_teacher(config)
    teacher_s = time.perf_counter() - t0
    probe = RunConfig.from_dict({"data": data_section(size), "student": dict(STUDENT)})
    data = load_data(probe)
    classes = data.info["num_classes"]
    info: dict[str, Any] = {"classes": data.info["classes"], "sizes": data.info["sizes"]}

    # the fine-tuned MiniLM: its class logits on the run's training split, by the library's store build
    t0 = time.perf_counter()
    cfg = RunConfig.from_dict({"task": "classification", "data": data_section(size), "student": dict(STUDENT),
                               "teacher": {"builder": "cached_teacher", "config": str(config)},
                               "knowledge": [dict(TERMS[0])], "train": {"eval_batch_size": 64}})
    build_store(cfg, out / "stores" / "minilm")
    model = load_cached_teacher(config, classes)
    pred, true = predict_classes(model, data.test, Task("classification"), 64, data.collate_fn)
    summary = json.loads((teacher_dir / "summary.json").read_text())
    info["minilm"] = {"test": classification_scores(pred, true, classes), "parameters": summary["student_parameters"],
                      "train_wall_s": summary["wall_time_s"], "prepare_wall_s": round(teacher_s, 2),
                      "store_wall_s": round(time.perf_counter() - t0, 2), "config": str(config.relative_to(ROOT))
                      if config.is_relative_to(ROOT) else str(config)}

    # TF-IDF + logistic regression, fitted on the training texts, written with StoreWriter
    t0 = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2 if len(data.train) > 100 else 1, sublinear_tf=True)
    x_train = vectorizer.fit_transform(texts_of(data.train))
    y_train = labels_of(data.train)
    lr = LogisticRegression(max_iter=1000, C=10.0).fit(x_train, y_train)
    log_probs = np.full((len(data.train), classes), -50.0)
    log_probs[:, lr.classes_] = np.clip(lr.predict_log_proba(x_train), -50.0, 0.0)
    import torch

    writer = StoreWriter(out / "stores" / "tfidf", kind="logits", task="classification", examples=len(data.train),
                         teacher=f"tfidf-logreg {lr.get_params()}", data=examples_digest(data.train),
                         tokenizer=data.info.get("tokenizer_sha256"), num_classes=classes,
                         settings={"classes": data.info["classes"], "model": "TfidfVectorizer(1-2 grams) + "
                                   "LogisticRegression(C=10)"})
    for i in writer.missing():
        writer.add(i, logits=torch.from_numpy(log_probs[i]).float())
    writer.close()
    test_pred = lr.predict(vectorizer.transform(texts_of(data.test)))
    info["tfidf"] = {"test": classification_scores(test_pred, labels_of(data.test), classes),
                     "features": len(vectorizer.vocabulary_), "fit_wall_s": round(time.perf_counter() - t0, 2)}
    # on the training split, where `choose` decides: how often each teacher gives the true label the higher probability
    from ktransfer.knowledge.teachers import choose_teacher
    from ktransfer.store import TeacherStore

    indices = list(range(len(data.train)))
    stored = [TeacherStore.open(out / "stores" / name).logits(indices) for name in TEACHERS]
    chosen = choose_teacher(stored, torch.from_numpy(y_train), "label")
    info["choose_share"] = {name: float((chosen == i).float().mean()) for i, name in enumerate(TEACHERS)}
    info["train_accuracy"] = {name: float((logits.argmax(-1).numpy() == y_train).mean())
                              for name, logits in zip(TEACHERS, stored, strict=True)}
    return grid.write_unit(record, info)


def store_paths(out: Path) -> dict[str, str]:
    return {name: str(out / "stores" / name) for name in TEACHERS}


# ------------------------------------------------------------------------------------------- one run
def weights_trace(metrics_file: Path) -> dict[str, list[float]]:
    """Per logged training step, the weight each term (or teacher-term pair) got."""
    trace: dict[str, list[float]] = {"step": []}
    for line in metrics_file.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("split") == "train" and "weights" in rec:
            trace["step"].append(rec["step"])
            for k, v in rec["weights"].items():
                trace.setdefault(k, []).append(float(v))
    return trace


_DATA: dict[str, Any] = {}


def run_one(variant: str, seed: int, size: str, out: Path, scratch: Path) -> dict[str, Any]:
    """Train one student, score it on val and test with its best-on-validation weights, keep only small files."""
    import torch

    from ktransfer.checkpoint import load_weights
    from ktransfer.config import RunConfig
    from ktransfer.runner import build_model, load_data, run
    from ktransfer.scores import classification_scores, predict_classes
    from ktransfer.tasks import Task

    cfg = RunConfig.from_dict(run_config(variant, seed, size, store_paths(out)))
    run_dir = scratch / variant / f"seed-{seed}"
    key = json.dumps(cfg.data, sort_keys=True)
    if key not in _DATA:  # every variant reads the same splits: tokenised once per process
        _DATA[key] = load_data(cfg)
    data = _DATA[key]
    t0 = time.perf_counter()
    result = run(cfg, run_dir, progress=False, overwrite=True, data=data)
    total_s = time.perf_counter() - t0
    model = build_model(dict(cfg.student), data.info, "student")
    load_weights(model, run_dir / "best" / "model.safetensors")
    scores = {}
    for split in ("val", "test"):
        pred, true = predict_classes(model, data.get(split), Task("classification"), 128, data.collate_fn)
        scores[split] = classification_scores(pred, true, data.info["num_classes"])
    summary = json.loads((run_dir / "summary.json").read_text())
    selector_stats = None
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("split") == "train" and "selector" in rec:
            selector_stats = rec["selector"]
    unit = {"variant": variant, "seed": seed, "size": size, "config": cfg.to_dict(), "val": scores["val"],
            "test": scores["test"], "best_step": result.train.best_step,
            "train_wall_s": round(summary["wall_time_s"], 2), "total_wall_s": round(total_s, 2),
            "steps": summary["step"], "student_parameters": summary["student_parameters"],
            "weights": weights_trace(run_dir / "metrics.jsonl"), "selector_stats": selector_stats,
            "torch_threads": torch.get_num_threads()}
    keep = out / "kept" / variant / f"seed-{seed}"
    keep.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.jsonl", "summary.json", "config.yaml", "weights.png"):
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, keep / name)
    shutil.rmtree(run_dir)  # weights and checkpoints: tens of MB a run
    return unit


# ------------------------------------------------------------------------------------------- aggregation
def aggregate(units: list[dict[str, Any]], teachers: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """Per variant: mean and 95% t-interval of the test scores, paired differences (by seed) against the MiniLM
    teacher alone and against the better single teacher per seed, cost against the MiniLM alone, mean weights."""
    by_variant: dict[str, dict[int, dict[str, Any]]] = {}
    for u in units:
        by_variant.setdefault(u["variant"], {})[u["seed"]] = u
    base = by_variant.get(BASELINE, {})
    singles = [by_variant.get("minilm_only", {}), by_variant.get("tfidf_only", {})]
    rows = []
    for variant in [v for v in VARIANTS if v in by_variant]:
        runs = by_variant[variant]
        seeds = sorted(runs)
        row: dict[str, Any] = {"variant": variant, "n": len(seeds), "seeds": seeds}
        for key in ("accuracy", "macro_f1", "mcc"):
            row[key] = ci_nan([runs[s]["test"][key] for s in seeds])
            row[f"{key}_minus_minilm"] = paired_nan({s: runs[s]["test"][key] for s in seeds},
                                                    {s: b["test"][key] for s, b in base.items()})
            best_single = {s: max(single[s]["test"][key] for single in singles)
                           for s in seeds if all(s in single for single in singles)}
            row[f"{key}_minus_best_single"] = paired_nan({s: runs[s]["test"][key] for s in best_single}, best_single)
        row["train_wall_s"] = ci_nan([runs[s]["train_wall_s"] for s in seeds])
        ratios = [runs[s]["train_wall_s"] / base[s]["train_wall_s"] for s in seeds if s in base]
        row["cost_vs_minilm"] = ci_nan(ratios) if ratios else (float("nan"), float("nan"))
        row["mean_weights"] = {k: float(np.mean([np.mean(runs[s]["weights"][k]) for s in seeds]))
                               for k in runs[seeds[0]]["weights"] if k != "step"}
        stats = [runs[s]["selector_stats"] for s in seeds if runs[s].get("selector_stats")]
        if stats:
            row["selector_stats"] = {k: float(np.mean([st[k] for st in stats])) for k in stats[0]}
        rows.append(row)
    return {"meta": meta, "teachers": teachers, "rows": rows, "units": units}


def _fmt(ci: tuple[float, float]) -> str:
    m, h = ci
    return f"{m * 100:.1f} ± {h * 100:.1f}" if not math.isnan(h) else f"{m * 100:.1f}"


def _fmt_diff(ci: tuple[float, float]) -> str:
    m, h = ci
    if math.isnan(m):
        return "—"
    mark = "" if math.isnan(h) or abs(m) <= h else " *"
    return f"{m * 100:+.1f} ± {h * 100:.1f}{mark}" if not math.isnan(h) else f"{m * 100:+.1f}"


def markdown(result: dict[str, Any]) -> str:
    meta, teachers = result["meta"], result["teachers"]
    lines = [f"{ran_by(meta.get('sittings', []), meta['command'])}; {meta['machine']}; torch {meta['torch']}, Python {meta['python']}; "
             f"{provenance.code_line(meta.get('provenance'))}; seeds {meta['seeds']}; {meta['steps']} steps of batch "
             f"{meta['batch_size']}; benchmark wall time {meta['wall_time_min']:.0f} min over "
             f"{len(meta.get('sittings', []))} sitting(s). Test scores in %, mean ± 95% t-interval over seeds, with "
             "the checkpoint best on validation; Δ are paired by seed (* = the interval excludes 0): against the "
             "MiniLM teacher alone, and against the better of the two single-teacher students of the same seed; "
             "cost = training wall time / MiniLM alone's.", ""]
    for name in TEACHERS:
        t = teachers.get(name, {}).get("test")
        if t:
            lines.append(f"Teacher `{name}`: test accuracy {t['accuracy'] * 100:.1f}, macro-F1 "
                         f"{t['macro_f1'] * 100:.1f}, MCC {t['mcc'] * 100:.1f}.")
    lines += ["", "| variant | accuracy | macro-F1 | MCC | Δ macro-F1 vs MiniLM | Δ MCC vs MiniLM | Δ macro-F1 vs "
              "best single | Δ MCC vs best single | cost | mean weights |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        weights = ", ".join(f"{k} {v:.2f}" for k, v in r["mean_weights"].items())
        cost = f"{r['cost_vs_minilm'][0]:.2f}" if not math.isnan(r["cost_vs_minilm"][0]) else "—"
        lines.append(f"| {r['variant']} | {_fmt(r['accuracy'])} | {_fmt(r['macro_f1'])} | {_fmt(r['mcc'])} | "
                     f"{_fmt_diff(r['macro_f1_minus_minilm'])} | {_fmt_diff(r['mcc_minus_minilm'])} | "
                     f"{_fmt_diff(r['macro_f1_minus_best_single'])} | {_fmt_diff(r['mcc_minus_best_single'])} | "
                     f"{cost} | {weights} |")
    return "\n".join(lines) + "\n"


def plot_weights(result: dict[str, Any], path: Path) -> None:
    """The actor-critic variants: the weight of each (teacher, term) pair over training, mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [v for v in ("ac_soft", "ac_hard") if any(u["variant"] == v for u in result["units"])]
    if not shown:
        return
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.0), squeeze=False, sharey=True)
    for j, variant in enumerate(shown):
        ax = axes[0][j]
        units = [u for u in result["units"] if u["variant"] == variant]
        steps = np.asarray(units[0]["weights"]["step"])
        for k in [k for k in units[0]["weights"] if k != "step"]:
            ax.plot(steps, np.mean([u["weights"][k] for u in units], axis=0), label=k)
        ax.set_title(f"{variant} ({len(units)} seeds)", fontsize=9)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("step", fontsize=8)
    axes[0][0].set_ylabel("weight chosen")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


class MultiTeacher(Benchmark):
    """The several-teachers benchmark on the harness: one unit per variant and seed, `<variant>-s<seed>.json`
    under OUT/<size>/units/; the teachers' stores and scores under OUT/<size>/ (built once, by `prepare`)."""

    script = Path(__file__)
    description = globals()["__doc__"].splitlines()[0]
    context_keys = ("command", "machine", "torch", "python", "provenance", "sittings", "wall_time_min")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--quick", action="store_true", help="96 tokens, 120 steps of 16 (about 60 min on 2 CPUs)")
        p.add_argument("--size", default=None, choices=list(SIZES), help="overrides --quick (tiny: the tests' size)")
        p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
        p.add_argument("--out", default=str(HERE / "runs"), help="per-run JSONs (resumable), stores, kept small files")
        p.add_argument("--report-dir", default=None, help="write the JSON, table and plot here instead")

    def setup(self, args: argparse.Namespace) -> None:
        args.size = args.size or ("quick" if args.quick else "full")
        args.out_size = Path(args.out) / args.size
        self.results(args).mkdir(parents=True, exist_ok=True)

    def results(self, args: argparse.Namespace) -> Path:
        return args.out_size / "units"

    def state(self, args: argparse.Namespace) -> Path:
        return args.out_size

    def prepare(self, args: argparse.Namespace) -> None:
        prepare_teachers(args.size, args.out_size)  # before any worker starts: built once

    def units(self, args: argparse.Namespace) -> list[Unit]:
        return [Unit(f"{c['variant']}-s{c['seed']}", c) for c in grid.product(seed=range(args.seeds),
                                                                                variant=args.variants)]

    def run_unit(self, unit: Unit, args: argparse.Namespace) -> dict[str, Any]:
        result = run_one(unit.key["variant"], unit.key["seed"], args.size, args.out_size, args.out_size / "scratch")
        print(f"{unit.name}: test macro-F1 {result['test']['macro_f1']:.3f} MCC {result['test']['mcc']:.3f} "
              f"({result['train_wall_s']:.0f}s)", flush=True)
        return result

    def worker_env(self, args: argparse.Namespace) -> dict[str, str]:
        return threads_per_worker_env(args)

    def context(self, args: argparse.Namespace) -> dict[str, Any]:
        import torch

        from harness.sittings import read_sittings

        sittings = read_sittings(args.out_size / "sittings.jsonl")
        made_by = provenance.record()
        return {"command": made_by["command"], "provenance": made_by,
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"
                           + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""),
                "torch": torch.__version__, "python": platform.python_version(), "sittings": sittings,
                "wall_time_min": sum(x["wall_time_min"] for x in sittings)}

    def aggregate(self, args: argparse.Namespace, context: dict[str, Any]) -> dict[str, Any] | None:
        teachers = prepare_teachers(args.size, args.out_size)
        wanted = {u.name for u in self.units(args)}
        units = [grid.read_unit(q) for q in sorted(self.results(args).glob("*.json"))]
        units = [u for u in units if f"{u['variant']}-s{u['seed']}" in wanted]
        if not units:
            return None
        s = SIZES[args.size]
        meta = {**context, "provenance": aggregate_provenance([*units, teachers], context),
                "size": args.size, "seeds": list(range(args.seeds)), "steps": s["max_steps"],
                "batch_size": s["batch_size"], "run_time_total_min": sum(u["train_wall_s"] for u in units) / 60,
                "variants": {k: {"teachers": list(v[0]), "combine": v[1], "selector": v[2]}
                             for k, v in VARIANTS.items()},
                "terms": TERMS, "student": STUDENT, "complete": len(units) == len(wanted)}
        return aggregate(units, teachers, meta)

    def outputs(self, result: dict[str, Any], args: argparse.Namespace) -> dict[Path, Any]:
        suffix = "" if args.size == "quick" else f"-{args.size}"
        json_dir = Path(args.report_dir) if args.report_dir else ROOT / "benchmarks" / "results"
        table_dir = Path(args.report_dir) if args.report_dir else HERE / "results"
        return {json_dir / f"multi_teacher{suffix}.json": result, table_dir / f"multi_teacher{suffix}.md":
                markdown(result), table_dir / f"weights{suffix}.png": lambda path: plot_weights(result, path)}

    def summary(self, result: dict[str, Any]) -> str:
        return markdown(result)


def main(argv: list[str] | None = None) -> int:
    return harness_main(MultiTeacher(), argv)


if __name__ == "__main__":
    sys.exit(main())
