"""Chains of runs: distilling a teacher straight into a small student, or through intermediates cut from it.

MiniLM part. The teacher, MiniLM (6 layers) fine-tuned on BBC News topics, is trained once (hop 0 of every
chain, the unit `teacher`). Students of 1 and 2 layers are then distilled from it directly, or
through intermediates of 4 and then 3 layers (`--full` also through 4 alone and through 3 alone; the size's
`chains`), each hop an ordinary run whose student is cut from
the previous hop's trained model (`hf_cut` with `teacher: previous`, its first layers, weights
copied) and taught by it. Two ways to distil every hop: vanilla KD (soft targets and labels,
fixed weights) and the learned selector (an actor-critic policy weighting soft targets, hidden
states, attention maps and labels). Chains of one method and seed share their hops (a chain
through 4 and 3 layers reuses the 4-layer hop of the chain through 4), so each hop trains once.

Reported per student, method and chain: test macro-F1 and accuracy of the final student (its
final weights, the ones the next hop would learn from), the paired difference to the direct
hop (same seed), and wall time (the chain's hops after the teacher, summed, and the final hop).

SmolLM2 part (`smollm2_chain.py`, --full only). The pretrained SmolLM2-135M-Instruct (30 layers, the chain's
teacher as it is, untrained) into 8 layers: directly (30 -> 8, every 4th layer) or via 15 (30 -> 15 -> 8, every
2nd layer twice; both 8-layer students start from the same teacher layers 1, 5, ..., 29). Every hop is
word-level forward KL per token with the live teacher, the recipe of configs/real_teacher/word_kd.yaml at the
real-teacher benchmark's --full size (BBC News continuations, 4,800 training blocks, 600 steps of 8 x 64 tokens
a hop). Units `smollm2-8L-direct-s{seed}` and `smollm2-8L-via15-s{seed}`; each final student is scored as the
real-teacher benchmark scores its students (its functions): held-out loss and KL(SmolLM2 || student), chrF,
SmolLM2's log-probability per token and the repetition rate of its greedy continuations, s/step. A separate table.

    python benchmarks/chains/choose_lr.py 1e-4 5e-4 2e-3   # the students' lr on validation (the teacher and 3 hops)
    python benchmarks/chains/bench.py --quick --jobs 2   # MiniLM: 3 seeds, direct and via 4 then 3, 100 steps a
                                                         # hop, 64 tokens, one thread per worker
    python benchmarks/chains/bench.py --full      # MiniLM: 3 seeds, 300 steps a hop, 256 tokens (GPU, or several
                                                  # sittings); and the SmolLM2 part, 3 seeds
    python benchmarks/chains/bench.py --full --parts smollm2 --jobs 2    # the SmolLM2 part alone

Budget of the SmolLM2 part (`smollm2_chain.unit_seconds`, an estimate from the real-teacher study's step times
on the 2-core machine, one process of one thread: teacher forward 2.1 s and a 10-layer cut student's KD step
5.6 s on 8 x 64 tokens, each pass's cost scaled by the parameters of the model that makes it): a KD step takes
about 5.2 s for 30 -> 8, 6.6 s for 30 -> 15 and 4.4 s for 15 -> 8, so a seed's direct chain about 55 min and its
chain via 15 about 113 min, scoring included: about 8.4 h of work for 3 seeds. Two workers side by side make each
step about 1.02 times slower (`harness.budget.SIDE_BY_SIDE`, with little else running), so with --jobs 2 (the
chains share no hop) a seed's via-15 chain takes about 2 h and the part about 4.8 h of wall time
(`smollm2_chain.expected_budget`), over sittings.

Prepare the data first: `ktransfer data prepare minilm && ktransfer data prepare bbc-news` (and for the
SmolLM2 part `ktransfer data prepare smollm2`).
Each unit's result is written at once and skipped when the benchmark starts again, and each
hop is resumable, so a killed benchmark continues where it stopped. Writes
benchmarks/results/chains[-full].json and .md.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))  # benchmarks/: the harness
sys.path.insert(0, str(HERE))  # this study's causal-LM part
from harness import grid, provenance  # noqa: E402
from harness.aggregate import aggregate_provenance, ci_nan, paired_nan  # noqa: E402
from harness.cli import Benchmark  # noqa: E402
from harness.cli import main as harness_main  # noqa: E402
from harness.cli import threads_per_worker_env  # noqa: E402
from harness.grid import Unit  # noqa: E402
from harness.sittings import ran_by, read_sittings, wall_minutes  # noqa: E402
import smollm2_chain  # noqa: E402

METHODS: dict[str, dict[str, Any]] = {
    "vanilla_kd": {"knowledge": [{"type": "response", "divergence": "forward_kl", "temperature": 2.0, "weight": 0.5},
                                 {"type": "labels", "weight": 0.5}],
                   "selector": {"type": "fixed"}},
    "learned": {"knowledge": [{"type": "response", "divergence": "forward_kl", "temperature": 2.0, "weight": 1.0},
                              {"type": "feature", "layer_map": "uniform", "loss": "mse", "weight": 1.0},
                              {"type": "attention", "layer_map": "uniform", "path": "attention.self", "weight": 1.0},
                              {"type": "labels", "weight": 1.0}],
                "selector": {"type": "actor_critic", "mode": "soft", "phase_steps": 10, "heldout_examples": 64,
                             "student_representation": "bert.pooler", "teacher_representation": "bert.pooler"}},
}
# The benchmark's parts: the MiniLM chains on BBC News topics, and the SmolLM2 chain (smollm2_chain.py).
PARTS = ("minilm", "smollm2")
# The students' lr (5e-4) was chosen on validation by choose_lr.py among 1e-4, 5e-4 and 2e-3 (benchmarks/results/
# chains/quick-lr/); the teacher's (5e-5) is a usual fine-tuning rate, not searched.
SIZES: dict[str, dict[str, Any]] = {
    "quick": {"seeds": 3, "steps": 100, "teacher_steps": 150, "batch_size": 16, "eval_every": 50, "lr": 5e-4,
              "teacher_lr": 5e-5, "warmup": 10, "threads": 1, "heldout_examples": 64, "students": [1, 2], "intermediates": [4, 3],
              "chains": ["direct", "via4_3"],
              "data": {"name": "bbc_news", "max_length": 64, "val_fraction": 0.1, "test_fraction": 0.2,
                       "split_seed": 0},
              "teacher_model": {"builder": "minilm"}, "parts": ["minilm"], "smollm2": None},
    "full": {"seeds": 3, "steps": 300, "teacher_steps": 300, "batch_size": 16, "eval_every": 50, "lr": 5e-4,
             "teacher_lr": 5e-5, "warmup": 30, "threads": 0, "heldout_examples": 64, "students": [1, 2], "intermediates": [4, 3],
             "chains": None,
             "data": {"name": "bbc_news", "max_length": 256, "val_fraction": 0.1, "test_fraction": 0.2,
                      "split_seed": 0},
             "teacher_model": {"builder": "minilm"}, "parts": ["minilm", "smollm2"],
             "smollm2": copy.deepcopy(smollm2_chain.FULL)},
}


def method_sections(method: str, size: dict[str, Any]) -> dict[str, Any]:
    """The knowledge terms and selector of a method (the learned selector sets `heldout_examples` aside)."""
    sections = copy.deepcopy(METHODS[method])
    if sections["selector"]["type"] == "actor_critic":
        sections["selector"]["heldout_examples"] = size["heldout_examples"]
    return sections


def chains(intermediates: list[int]) -> dict[str, list[int]]:
    """The chains compared: direct, through each intermediate, through all of them (largest first)."""
    out: dict[str, list[int]] = {"direct": []}
    for n in intermediates:
        out[f"via{n}"] = [n]
    if len(intermediates) > 1:
        out["via" + "_".join(map(str, intermediates))] = list(intermediates)
    return out


def size_chains(size: dict[str, Any]) -> dict[str, list[int]]:
    """The chains a size runs: those it names in `chains` (null: every chain of `chains(intermediates)`)."""
    every = chains(size["intermediates"])
    names = size.get("chains")
    if names is None:
        return every
    unknown = [n for n in names if n not in every]
    if unknown:
        raise ValueError(f"chains {unknown}: not chains of the intermediates {size['intermediates']}; valid: "
                         f"{', '.join(every)}")
    return {n: every[n] for n in names}


def cut(layers: int) -> dict[str, Any]:
    return {"builder": "hf_cut", "teacher": "previous", "first": layers}


def train_section(size: dict[str, Any], steps: int, seed: int) -> dict[str, Any]:
    return {"max_steps": steps, "batch_size": size["batch_size"], "eval_batch_size": 64,
            "eval_every": min(size["eval_every"], steps), "log_every": 5, "checkpoint_every": size["eval_every"],
            "seed": seed}


def teacher_fragment(size: dict[str, Any]) -> dict[str, Any]:
    """Hop 0: the teacher fine-tuned on the labels (seed 0, shared by every chain)."""
    return {"student": dict(size["teacher_model"]), "knowledge": [{"type": "labels"}],
            "optim": {"name": "adamw", "lr": size["teacher_lr"], "weight_decay": 0.01},
            "schedule": {"name": "linear", "warmup_steps": size["warmup"]},
            "train": train_section(size, size["teacher_steps"], 0)}


def chain_config(size: dict[str, Any], student: int, chain: list[int], method: str, seed: int) -> dict[str, Any]:
    """The chain of runs as a config dict (what a chain YAML file would hold)."""
    return {
        "task": "classification",
        "data": copy.deepcopy(size["data"]),
        "teacher": teacher_fragment(size),
        "defaults": {**method_sections(method, size),
                     "optim": {"name": "adamw", "lr": size["lr"], "weight_decay": 0.01},
                     "schedule": {"name": "linear", "warmup_steps": size["warmup"]},
                     "train": train_section(size, size["steps"], seed)},
        "student": {"student": cut(student)},
        "plan": {"strategy": "fixed", "intermediates": [{"student": cut(n)} for n in chain],
                 "max_hops": len(chain) + 1},
        "compare_one_hop": False,
    }


def grid_units(size: dict[str, Any], seeds: int, methods: list[str], parts: list[str] | None = None) -> list[Unit]:
    """The MiniLM part: the teacher, then one unit per student, chain, method and seed (the units of one method and
    seed run in one worker, in order: they share hops); the SmolLM2 part: one unit per chain and seed. `parts`
    defaults to the size's."""
    parts = size["parts"] if parts is None else parts
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown parts {unknown}; valid: {', '.join(PARTS)}")
    units = []
    if "minilm" in parts:
        names = list(size_chains(size))  # validated once, before any unit
        units.append(Unit("teacher", {"kind": "teacher"}))
        for seed in range(seeds):
            for method in methods:
                for student in size["students"]:
                    for name in names:
                        units.append(Unit(f"{method}-{student}L-{name}-s{seed}",
                                          {"kind": "chain", "method": method, "student": student, "chain": name,
                                           "seed": seed}, needs=("teacher",), group=f"{method}-s{seed}"))
    if "smollm2" in parts:
        if not size.get("smollm2"):
            raise ValueError("the smollm2 part has no settings at this size: it is part of --full (or give "
                             "--set smollm2='{...}')")
        units += smollm2_chain.units(size["smollm2"], seeds)
    return units


def run_teacher(size: dict[str, Any], runs: Path) -> dict[str, Any]:
    from ktransfer.hops.run_chain import RunChain
    from ktransfer.hops.run_config import RunChainConfig

    cfg = RunChainConfig.from_dict(chain_config(size, size["students"][0], [], "vanilla_kd", 0))
    chain = RunChain(cfg, runs / "chains")
    t0 = time.perf_counter()
    teacher = chain.first_teacher()
    from ktransfer.runner import evaluate_run

    test = evaluate_run(teacher.run_dir or "", "test", "final")
    return {"kind": "teacher", "run_dir": teacher.run_dir, "macro_f1": test["macro_f1"], "accuracy": test["accuracy"],
            "wall_s": time.perf_counter() - t0}


def run_chain_unit(key: dict[str, Any], size: dict[str, Any], runs: Path) -> dict[str, Any]:
    from ktransfer.hops.run_chain import run_run_chain
    from ktransfer.hops.run_config import RunChainConfig

    layers = size_chains(size)[key["chain"]]
    cfg = RunChainConfig.from_dict(chain_config(size, key["student"], layers, key["method"], key["seed"]))
    report = run_run_chain(cfg, runs / "chains")
    hops = report.hops[1:]  # after the teacher
    final = report.student
    return {**key, "macro_f1": final.test["macro_f1"], "accuracy": final.test["accuracy"], "val": final.val,
            "metric": final.metric, "wall_s": sum(h.wall_time_s for h in hops), "final_hop_wall_s": final.wall_time_s,
            "parameters": final.parameters, "hops": [h.label for h in hops], "run_dir": final.run_dir}


def aggregate(units: list[dict[str, Any]], meta: dict[str, Any],
              smollm2_units: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Per student, method and chain: means with 95% intervals over seeds, and the paired difference to direct;
    the SmolLM2 chains' rows apart (`smollm2_rows`)."""
    rows = []
    cells = sorted({(u["student"], u["method"], u["chain"]) for u in units})
    for student, method, chain in cells:
        mine = {u["seed"]: u for u in units if (u["student"], u["method"], u["chain"]) == (student, method, chain)}
        direct = {u["seed"]: u for u in units if (u["student"], u["method"], u["chain"]) == (student, method, "direct")}
        rows.append({
            "student": student, "method": method, "chain": chain, "seeds": sorted(mine),
            "macro_f1": ci_nan([u["macro_f1"] for u in mine.values()]),
            "accuracy": ci_nan([u["accuracy"] for u in mine.values()]),
            "vs_direct": paired_nan({s: u["macro_f1"] for s, u in mine.items()},
                                    {s: u["macro_f1"] for s, u in direct.items()}),
            "wall_s": ci_nan([u["wall_s"] for u in mine.values()]),
            "final_hop_wall_s": ci_nan([u["final_hop_wall_s"] for u in mine.values()]),
        })
    out = {**meta, "rows": rows}
    if smollm2_units:
        out["smollm2_rows"] = smollm2_chain.aggregate(smollm2_units)
    return out


def _fmt(interval: Any, digits: int = 3, signed: bool = False) -> str:
    mean, half = interval
    if mean != mean:  # nan
        return "-"
    text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    return text if half != half else f"{text} ± {half:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Chains of runs ({result['size_name']})"]
    if result["rows"]:
        teacher = result.get("teacher") or {}
        lines = [f"{lines[0]}: BBC News, MiniLM teacher (test macro-F1 {teacher.get('macro_f1', float('nan')):.3f})",
                 "", "| student | method | chain | seeds | test macro-F1 | accuracy | vs direct (paired) | wall s (hops) | "
                 "final hop s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['student']}L | {r['method']} | {r['chain']} | {len(r['seeds'])} | {_fmt(r['macro_f1'])} | "
                     f"{_fmt(r['accuracy'])} | {'-' if r['chain'] == 'direct' else _fmt(r['vs_direct'], signed=True)} "
                     f"| {_fmt(r['wall_s'], 0)} | {_fmt(r['final_hop_wall_s'], 0)} |")
    if result.get("smollm2_rows"):
        lines += ["", *smollm2_chain.markdown(result["smollm2_rows"], result["size"]["smollm2"], _fmt)]
    wall = result.get("wall_time_min")
    lines += ["", f"{ran_by(result.get('sittings', []), result['command'])}; "
                  f"{provenance.code_line(result.get('provenance'))}; seeds {result['seeds']}; "
              + (f"wall time of the benchmark: {wall:.1f} min." if wall is not None
                 else "no sitting has finished yet: the wall time of each unit's hops is in the table.")]
    return "\n".join(lines) + "\n"


class Chains(Benchmark):
    """The chains-of-runs benchmark on the harness: the teacher, then one unit per student, chain, method, seed."""

    script = Path(__file__)
    description = globals()["__doc__"].splitlines()[0]

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.set_defaults(seeds=None)
        size = p.add_mutually_exclusive_group()
        size.add_argument("--quick", action="store_true", help="three seeds, 100 steps a hop (the default size)")
        size.add_argument("--full", action="store_true", help="three seeds, longer runs")
        p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                       help="the MiniLM part's methods")
        p.add_argument("--parts", nargs="+", default=None, choices=list(PARTS),
                       help="which parts to run (default: the size's: minilm for --quick, both for --full)")
        p.add_argument("--out", default=str(HERE / "runs"), help="run directories (resumable)")
        p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"), help="results folder")
        p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=JSON",
                       help="change a size setting, e.g. --set steps=4 or --set data='{...}' (recorded)")

    def setup(self, args: argparse.Namespace) -> None:
        import torch

        args.started = time.perf_counter()
        args.ran_units = False  # set by the first unit this process runs
        args.size_name = "full" if args.full else "quick"
        args.size = copy.deepcopy(SIZES[args.size_name])
        for item in args.sets:
            key, value = item.split("=", 1)
            if key not in args.size:
                raise SystemExit(f"--set {key}: unknown size setting; valid: {', '.join(args.size)}")
            args.size[key] = json.loads(value)
        if args.seeds is None:
            args.seeds = args.size["seeds"]
        if args.seeds < 1:
            raise SystemExit(f"--seeds must be at least 1, got {args.seeds}")
        args.parts = args.parts or list(args.size["parts"])
        if "smollm2" in args.parts and not args.size.get("smollm2"):
            raise SystemExit("--parts smollm2: the SmolLM2 chain is part of --full (give --full, or its settings "
                             "with --set smollm2='{...}')")
        if args.size["threads"]:
            torch.set_num_threads(args.size["threads"])
        args.runs = Path(args.out) / args.size_name
        args.runs.mkdir(parents=True, exist_ok=True)
        self.results(args).mkdir(parents=True, exist_ok=True)

    def results(self, args: argparse.Namespace) -> Path:
        return Path(args.results) / "chains" / args.size_name

    def units(self, args: argparse.Namespace) -> list[Unit]:
        return grid_units(args.size, args.seeds, args.methods, args.parts)

    def worker_env(self, args: argparse.Namespace) -> dict[str, str]:
        return threads_per_worker_env(args)  # --full leaves torch its default threads: the cores shared out

    def run_unit(self, unit: Unit, args: argparse.Namespace) -> dict[str, Any]:
        import torch

        args.ran_units = True
        if unit.key["kind"] == "teacher":
            result = run_teacher(args.size, args.runs)
        elif unit.key["kind"] == "smollm2":
            result = smollm2_chain.run_unit(dict(unit.key), args.size["smollm2"], args.runs)
        else:
            result = run_chain_unit(dict(unit.key), args.size, args.runs)
        return {**result, "threads": torch.get_num_threads()}  # what each step time in the result was measured with

    def aggregate(self, args: argparse.Namespace, context: dict[str, Any]) -> dict[str, Any] | None:
        done = grid.read_units(self.results(args), [u.name for u in self.units(args)])
        units = [u for u in done if u.get("kind") == "chain"]
        causal = [u for u in done if u.get("kind") == "smollm2"]
        if not units and not causal:
            return None
        teacher = next((u for u in done if u.get("kind") == "teacher"), None)
        meta = {**context, "provenance": aggregate_provenance(done, context), "seeds": list(range(args.seeds)),
                "size_name": args.size_name, "size": args.size, "teacher": teacher,
                "sittings": read_sittings(self.results(args) / "sittings.jsonl")}
        # every sitting that ran units; else this one so far, or None for an aggregation alone (it runs no unit)
        meta["wall_time_min"] = (sum(wall_minutes(meta["sittings"], context["command"]).values())
                                 or ((time.perf_counter() - args.started) / 60 if args.ran_units else None))
        return aggregate(units, meta, causal)

    def outputs(self, result: dict[str, Any], args: argparse.Namespace) -> dict[Path, Any]:
        suffix = "" if args.size_name == "quick" else f"-{args.size_name}"
        root = Path(args.results)
        return {root / f"chains{suffix}.json": result, root / f"chains{suffix}.md": markdown(result)}

    def summary(self, result: dict[str, Any]) -> str:
        return markdown(result)


def main(argv: list[str] | None = None) -> int:
    return harness_main(Chains(), argv)


if __name__ == "__main__":
    sys.exit(main())
