"""The causal-LM part of the chains benchmark: SmolLM2-135M-Instruct (30 layers) into 8 layers, directly or via 15.

The teacher is the pretrained model taken as it is (the chain's teacher `{builder: hf_pretrained, model: ...}`,
no hop 0 trained). Every hop is word-level forward KL(teacher || student) per token with the live teacher, the
recipe of configs/real_teacher/word_kd.yaml (its knowledge, optimiser, schedule and training sections, on its
BBC News prompts and continuations), with a student cut from the hop's teacher (`hf_cut`, `teacher: previous`,
every k-th layer counted from the top, weights copied):

  direct   30 -> 8 (every 4th: teacher layers 1, 5, ..., 29)
  via15    30 -> 15 (every 2nd: layers 1, 3, ..., 29) -> 8 (every 2nd of those: the same teacher layers 1, 5, ..., 29)

so both 8-layer students start from the same copied weights and differ only by the path of their training.
Each final student is scored as benchmarks/real_teacher scores its students (its functions, loaded with
`harness.reproduce.load_study`): held-out loss and KL(teacher || student) against SmolLM2 itself, chrF, the
teacher's log-probability per token and the repetition rate of its greedy continuations of the test prompts.

The data, steps a hop and evaluation sizes are a size of the real-teacher benchmark (`size`, changed by `set`);
each hop makes that size's `steps` optimizer steps.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from harness import budget
from harness.grid import Unit
from harness.reproduce import load_study

RT = load_study("real_teacher/bench.py")

# The part's settings in the chains benchmark's --full size: the real-teacher size it takes its data, steps and
# evaluation from, and the cuts of each chain's hops (hf_cut arguments, from the teacher's 30 layers).
FULL: dict[str, Any] = {
    "size": "full", "set": {}, "teacher": None, "teacher_layers": 30, "student_layers": 8,
    "chains": {"direct": [{"every": 4}], "via15": [{"every": 2}, {"every": 2}]},
}
SCORES = {"test_loss": ("test", "loss"), "teacher_kl": ("test", "teacher_kl"), "chrf": ("generation", "chrf"),
          "teacher_logprob": ("generation", "teacher_logprob"),
          "repetition_rate": ("generation", "repetition_rate")}

# Parameters of a SmolLM2 cut of L layers: embeddings (tied with the head) plus L layers, from the real-teacher
# study's counts of the 30-layer teacher and its 10-layer cut; the cost of a pass is taken proportional to them.
LAYER_PARAMETERS = (RT.TEACHER_PARAMETERS - RT.STUDENT_PARAMETERS) / (30 - 10)
BASE_PARAMETERS = RT.TEACHER_PARAMETERS - 30 * LAYER_PARAMETERS


def parameters(layers: int) -> float:
    return BASE_PARAMETERS + layers * LAYER_PARAMETERS


def real_teacher_size(part: dict[str, Any]) -> dict[str, Any]:
    """The real-teacher size the part runs at: its named size with the part's `set` on top."""
    if part["size"] not in RT.SIZES:
        raise ValueError(f"smollm2.size: {part['size']!r} is not a size of the real-teacher benchmark; "
                         f"valid: {', '.join(RT.SIZES)}")
    return {**RT.SIZES[part["size"]], **part["set"]}


def teacher_dir(part: dict[str, Any]) -> str:
    """The teacher's model folder: the part's `teacher`, else the prepared SmolLM2."""
    if part.get("teacher"):
        return str(part["teacher"])
    from ktransfer.pretrained import smollm2_dir

    return str(smollm2_dir())


def hop_depths(part: dict[str, Any], chain: str) -> list[int]:
    """The number of layers of each hop's student, cut by cut from the teacher's depth (a cut naming layers its
    teacher lacks raises ValueError)."""
    from ktransfer.models.cut import choose_layers

    depths, depth = [], part["teacher_layers"]
    for i, cut in enumerate(part["chains"][chain]):
        try:
            depth = len(choose_layers(depth, **cut))
        except ValueError as e:
            raise ValueError(f"smollm2.chains.{chain}[{i}]: {e} (its teacher has {depth} layers)") from e
        depths.append(depth)
    return depths


def units(part: dict[str, Any], seeds: int) -> list[Unit]:
    """One unit per chain and seed (`smollm2-8L-direct-s0`, ...); the chains share no hop, so none waits."""
    return [Unit(f"smollm2-{part['student_layers']}L-{name}-s{seed}",
                 {"kind": "smollm2", "chain": name, "student": part["student_layers"], "seed": seed})
            for seed in range(seeds) for name in part["chains"]]


def chain_config(part: dict[str, Any], chain: str, seed: int, runs: Path, teacher: str) -> dict[str, Any]:
    """The chain of runs as a config dict: the word_kd run config of the real-teacher size (data, teacher,
    knowledge, optimiser, schedule, training with this seed) as the chain's data, teacher and hop defaults."""
    size = real_teacher_size(part)
    run = RT.method_config("word_kd", size, runs, seed, teacher, size.get("data")).to_dict()
    cuts = [{"student": {"builder": "hf_cut", "teacher": "previous", **cut}} for cut in part["chains"][chain]]
    return {"task": run["task"], "data": run["data"], "teacher": run["teacher"],
            "defaults": {k: run[k] for k in ("knowledge", "optim", "schedule", "train")},
            "student": cuts[-1], "plan": {"strategy": "fixed", "intermediates": cuts[:-1], "max_hops": len(cuts)},
            "compare_one_hop": False}


def run_unit(key: dict[str, Any], part: dict[str, Any], runs: Path) -> dict[str, Any]:
    """One chain trained (its hops reused or continued when there) and its final student scored."""
    from ktransfer.config import RunConfig
    from ktransfer.hops.run_chain import run_run_chain
    from ktransfer.hops.run_config import RunChainConfig

    teacher, size = teacher_dir(part), real_teacher_size(part)
    cfg = RunChainConfig.from_dict(chain_config(part, key["chain"], key["seed"], runs, teacher))
    unit: dict[str, Any] = {**key, "peak_rss_of": "unit" if RT.reset_peak_rss() else "process"}
    report = run_run_chain(cfg, runs / "smollm2-chains", evaluate_test=False)
    final = Path(report.student.run_dir)
    started = time.perf_counter()
    scores = RT.evaluate_student("word_kd", RunConfig.from_yaml(final / "config.yaml"), final, size, teacher)
    return {**unit, **scores, "eval_s": round(time.perf_counter() - started, 2),
            "hops": [h.label for h in report.hops], "layers": hop_depths(part, key["chain"]),
            "steps_per_hop": size["steps"],
            "step_s": [RT.training_step_s(Path(h.run_dir)) for h in report.hops],
            "wall_s": sum(h.wall_time_s for h in report.hops), "final_hop_wall_s": report.student.wall_time_s,
            "parameters": report.student.parameters, "run_dir": str(final),
            "peak_rss_mb": round(RT.peak_rss_mb(), 1)}


# ------------------------------------------------------------------------------------------- budget
def hop_step_s(teacher_layers: int, student_layers: int) -> float:
    """Expected seconds of a KD step (one thread, batch 8 x 64 tokens): the teacher's forward and the student's
    step, each the real-teacher study's measurement scaled by parameters."""
    return (RT.TEACHER_FORWARD_S * parameters(teacher_layers) / parameters(30)
            + RT.STUDENT_STEP_S * parameters(student_layers) / parameters(10))


def unit_seconds(part: dict[str, Any], chain: str) -> float:
    """Expected seconds of a chain's unit: every hop's steps and its validation pass at the end (teacher and
    student forward per batch), then the final student's scoring as the real-teacher study estimates it
    (held-out batches: SmolLM2 and student forward; generation: student sampling and a SmolLM2 forward)."""
    size = real_teacher_size(part)
    batch = size["batch_size"]

    def forward_s(layers: int) -> float:
        return RT.TEACHER_FORWARD_S * parameters(layers) / parameters(30)

    total, teacher = 0.0, part["teacher_layers"]
    for student in hop_depths(part, chain):
        total += size["steps"] * hop_step_s(teacher, student)
        total += math.ceil(size["val_size"] / batch) * (forward_s(teacher) + forward_s(student))
        teacher = student
    sample_s = RT.STUDENT_SAMPLE_64_S * size["new_tokens"] / 64 * parameters(teacher) / parameters(10)
    total += math.ceil(size["test_size"] / batch) * (forward_s(part["teacher_layers"]) + forward_s(teacher))
    total += math.ceil(size["generation_prompts"] / batch) * (sample_s + RT.TEACHER_FORWARD_S)
    return total


def expected_minutes(part: dict[str, Any], seeds: int) -> float:
    """Expected work of the part (one thread, summed over its units), in minutes."""
    return seeds * sum(unit_seconds(part, name) for name in part["chains"]) / 60


def expected_budget(part: dict[str, Any], seeds: int, jobs: int) -> dict[str, float]:
    """Expected work and wall time of the part with `jobs` workers, in minutes (`harness.budget.expected_budget`)."""
    return budget.expected_budget(units(part, seeds), lambda u: unit_seconds(part, u.key["chain"]), jobs)


# ------------------------------------------------------------------------------------------- aggregate and table
def aggregate(units: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per chain: means with 95% intervals over seeds, and paired differences to the direct chain (same seed)."""
    from harness.aggregate import ci_nan, paired_nan

    rows = []
    for chain in sorted({u["chain"] for u in units}, key=lambda c: (c != "direct", c)):
        mine = {u["seed"]: u for u in units if u["chain"] == chain}
        direct = {u["seed"]: u for u in units if u["chain"] == "direct"}
        row: dict[str, Any] = {"chain": chain, "student": next(iter(mine.values()))["student"], "seeds": sorted(mine),
                               "layers": next(iter(mine.values()))["layers"]}
        for name, (where, metric) in SCORES.items():
            values = {s: float(u[where].get(metric, math.nan)) for s, u in mine.items()}
            row[name] = ci_nan(list(values.values()))
            row[f"diff_{name}"] = paired_nan(values, {s: float(u[where].get(metric, math.nan))
                                                      for s, u in direct.items()})
        row["wall_s"] = ci_nan([u["wall_s"] for u in mine.values()])
        row["final_step_s"] = ci_nan([u["step_s"][-1] for u in mine.values() if u["step_s"][-1] is not None]
                                     or [math.nan])
        row["peak_rss_mb"] = max(u["peak_rss_mb"] for u in mine.values())
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]], part: dict[str, Any], fmt: Any) -> list[str]:
    """The causal-LM chains' table (lines), `fmt` formatting an interval as the chains benchmark does."""
    size = real_teacher_size(part)
    teacher = Path(part["teacher"]).name if part.get("teacher") else "SmolLM2-135M-Instruct"
    lines = [f"## {teacher} ({part['teacher_layers']} layers) into {part['student_layers']} layers, word-level "
             "forward KL a hop", "",
             f"BBC News continuations after a {size['prompt_length']}-token prompt (the real-teacher corpus, size "
             f"{part['size']}); {size['steps']} steps of {size['batch_size']} blocks a hop. Test split: loss and "
             "KL(teacher || student) against the teacher itself; chrF, teacher log-prob/token and repetition (share of "
             f"repeated token 3-grams) of greedy continuations ({size['new_tokens']} new tokens). Δ: paired "
             "difference to the direct chain (same seed).", "",
             "| chain | layers | test loss | teacher_kl | chrF | teacher log-prob/token | repetition | Δ teacher_kl | "
             "Δ chrF | Δ log-prob | wall s (hops) | s/step (final hop) | peak RSS (MB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        diff = r["chain"] != "direct"
        lines.append(
            f"| {r['chain']} | {' -> '.join(map(str, [part['teacher_layers'], *r['layers']]))} | "
            f"{fmt(r['test_loss'])} | {fmt(r['teacher_kl'])} | {fmt(r['chrf'], 2)} | {fmt(r['teacher_logprob'])} | "
            f"{fmt(r['repetition_rate'])} | {fmt(r['diff_teacher_kl'], signed=True) if diff else '-'} | "
            f"{fmt(r['diff_chrf'], 2, signed=True) if diff else '-'} | "
            f"{fmt(r['diff_teacher_logprob'], signed=True) if diff else '-'} | {fmt(r['wall_s'], 0)} | "
            f"{fmt(r['final_step_s'], 2)} | {r['peak_rss_mb']:.0f} |")
    return lines
