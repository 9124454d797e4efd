"""A chain's report.md: what each method decided, the points it dropped, the planner's trials, warnings."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ktransfer.hops.chain import run_chain
from ktransfer.hops.config import ChainConfig
from ktransfer.hops.planner import Trial
from ktransfer.hops.report import ChainReport, HopRecord

FAST = {"max_steps": 40, "batch_size": 64, "lr": 0.01}


def test_report_md_shows_probes_fallback_and_dropped_points(tmp_path: Path) -> None:
    cfg = ChainConfig.from_dict({
        "data": {"name": "digits"}, "teacher": {"kind": "mlp", "hidden": [64]},
        "student": {"kind": "tree", "max_depth": 3}, "folds": 2, "train": FAST,
        "plan": {"strategy": "fixed", "intermediates": [{"kind": "mlp", "hidden": [16]}, {"kind": "tree", "max_depth": 8}]},
        # sratio keeps the points at or below the median ratio; profweight from a tree has no layers to probe
        "hop_methods": [{"name": "sratio", "quantiles": [0.5]}, {"name": "confidence"}, {"name": "profweight"}],
    })
    report = run_chain(cfg, tmp_path)
    md = (tmp_path / "report.md").read_text()
    lines = {line.split(":")[0]: line for line in md.splitlines() if line.startswith("- ")}
    sratio, confidence, profweight = (report.chain[i].details for i in (1, 2, 3))
    students = sratio["kept"] + sratio["dropped"]
    assert sratio["dropped"] > 0 and students == report.split["student_points"]
    assert f"points dropped (weight 0): {sratio['dropped']} of {students}" in lines["- hop 1, mlp[16] by sratio"]
    assert "ratio threshold" in lines["- hop 1, mlp[16] by sratio"]
    assert "points dropped (weight 0): 0 of" in lines["- hop 2, tree(d=8) by confidence"]
    hop3 = lines["- hop 3, tree(d=3) by profweight"]
    assert "fallback" in profweight and "**fallback**: the teacher has no intermediate representations" in hop3
    assert "0 of 0 kept; teacher output as a probe: off" in hop3
    # the 1-hop comparison (profweight from the MLP teacher): its one layer's probe, kept or not, in words
    one = report.one_hop
    assert one is not None and one.details["probe_names"] == ["teacher:mlp[64] layer 1"]
    star = "*" if one.details["kept_probes"] == [0] else ""
    one_line = lines["- 1-hop, tree(d=3) by profweight"]
    assert f"teacher:mlp[64] layer 1 {one.details['probe_val_accuracy'][0]:.4f}{star};" in one_line
    assert f"above the simple model's {one.details['simple_val']:.4f} + margin 0.0" in one_line
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["warnings"] == report.warnings()
    assert ("## Warnings" in md) == bool(report.warnings())


def _record(index: int, val: float, spec: dict[str, Any] | None = None, method: str = "kd") -> HopRecord:
    return HopRecord(index, spec or {"kind": "tree", "max_depth": 2}, 7, method, [], val, val)


def _report(student_val: float, simple_val: float, one_hop_val: float, trials: list[Trial]) -> ChainReport:
    teacher = _record(0, 0.95, {"kind": "mlp", "hidden": [64]}, "labels")
    middle = _record(1, 0.9, {"kind": "mlp", "hidden": [8]})
    chain = [teacher, middle, _record(2, student_val)] if trials and trials[-1].intermediates else \
        [teacher, _record(1, student_val)]
    split = {"confidence_split": "holdout", "teacher_points": 10, "student_points": 10, "folds": 2}
    return ChainReport(chain, _record(1, simple_val, method="labels"), _record(1, one_hop_val), trials,
                       {"data": {"name": "digits"}, "plan": {"strategy": "greedy"}}, split)


def test_report_warns_below_the_simple_model_and_when_every_chain_ties() -> None:
    mid = {"kind": "mlp", "hidden": [8]}
    fine = _report(0.8, 0.7, 0.75, [Trial([], 0.75), Trial([mid], 0.8)])
    assert fine.warnings() == [] and "Warnings" not in fine.markdown()
    md = fine.markdown()
    assert "| (none: 1 hop) | 0.7500 |  |" in md and "| mlp[8] | 0.8000 | chosen |" in md

    below = _report(0.6, 0.7, 0.65, [Trial([], 0.65), Trial([mid], 0.66)])
    warnings = below.warnings()
    assert len(warnings) == 2
    assert "chosen chain (2 hops) ends below the simple model alone on validation: 0.6000 < 0.7000" in warnings[0]
    assert "1-hop transfer is below the simple model alone on validation: 0.6500 < 0.7000" in warnings[1]
    assert re.search(r"## Warnings\n\n- \*\*warning\*\*: the chosen chain", below.markdown())

    ties = _report(0.8, 0.7, 0.8, [Trial([], 0.8), Trial([mid], 0.8)])
    ties.chain = ties.chain[:1] + ties.chain[2:]  # ties keep the shortest chain: 1 hop
    assert ties.warnings() == ["every chain the planner tried scored the same on validation (0.8000): the choice "
                               "carries no information (ties keep the shortest chain)"]
    one = _report(0.6, 0.7, 0.6, [Trial([], 0.6)])
    assert one.warnings() == ["the chosen chain (1 hop) ends below the simple model alone on validation: 0.6000 < "
                              "0.7000; the student trained on labels alone is better"]
