"""A chain's report: the records of its models, the reference rows, what each method decided, warnings.

`report.md` says in words what `report.json` holds in fields: each hop's probes (and which
were kept), ProfWeight's and SRatio's fallbacks, the points a reweighting method dropped, a
loaded teacher's source, every chain the planner scored, and warnings when the chosen chain or
the 1-hop transfer does worse than the simple model alone on validation, or when every chain
the planner tried scored the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ktransfer.io import atomic_path
from ktransfer.hops.models import spec_label
from ktransfer.hops.planner import Trial

Spec = dict[str, Any]


@dataclass
class HopRecord:
    """One trained model of a chain and its scores."""

    index: int
    spec: Spec
    complexity: int
    method: str
    teachers: list[str]
    val: float
    test: float
    details: dict[str, Any] = field(default_factory=dict)
    key: str = ""
    path: str = ""
    wall_time_s: float = 0.0

    @property
    def label(self) -> str:
        return spec_label(self.spec)

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "model": self.label, "spec": self.spec, "complexity": self.complexity,
                "method": self.method, "teachers": self.teachers, "val": self.val, "test": self.test,
                "details": self.details, "key": self.key, "path": self.path, "wall_time_s": self.wall_time_s}


def _probes(d: dict[str, Any]) -> str:
    """'probes (validation accuracy; * kept: above the simple model's 0.7800 + margin 0.0): a 0.81*, b 0.70'."""
    accs = d.get("probe_val_accuracy", [])
    names = d.get("probe_names") or [f"probe {i + 1}" for i in range(len(accs))]
    kept = set(d.get("kept_probes", []))
    listed = ", ".join(f"{n} {a:.4f}{'*' if i in kept else ''}" for i, (n, a) in enumerate(zip(names, accs)))
    bar = f"the simple model's {d['simple_val']:.4f} + margin {d.get('margin', 0.0)}" if "simple_val" in d else "?"
    output = "on" if d.get("output_probe") else "off"
    return (f"probes (validation accuracy; * = kept: above {bar}): {listed or 'none'}; {len(kept)} of "
            f"{len(accs)} kept; teacher output as a probe: {output}")


def describe_hop(record: HopRecord) -> list[str]:
    """What the hop's method decided, in words (empty for a hop with nothing to say)."""
    d = record.details
    parts: list[str] = []
    if "loaded_from" in d:
        sha = ", ".join(h[:12] for h in d.get("sha256", []))
        seen = "yes" if d.get("saw_train_split", True) else "no"
        parts.append(f"loaded from {d['loaded_from']} (sha256 {sha}); trained on the chain's training split: {seen}")
    if "temperature" in d:
        parts.append(f"temperature {d['temperature']}, alpha {d.get('alpha')}, selector {d.get('selector')}")
    if "confidences" in d:
        parts.append(f"teacher confidences: {d['confidences']}")
    if "probe_val_accuracy" in d:
        parts.append(_probes(d))
    if "threshold" in d:
        tried = ", ".join(f"quantile {t['quantile']}: val {t['val_accuracy']:.4f}" for t in d.get("thresholds_tried", []))
        parts.append(f"SRatio source {d.get('source')}, ratio threshold {d['threshold']:.4g} (best on validation of: "
                     f"{tried})")
    if "kept" in d and "dropped" in d:
        total = d["kept"] + d["dropped"]
        parts.append(f"points dropped (weight 0): {d['dropped']} of {total}; weights mean {d['weight_mean']:.4f}, "
                     f"min {d['weight_min']:.4f}, max {d['weight_max']:.4f}")
    if "fallback" in d:
        parts.append(f"**fallback**: {d['fallback']}")
    return parts


@dataclass
class ChainReport:
    """The chosen chain's records, the reference rows (simple model alone, 1-hop) and the planner's trials."""

    chain: list[HopRecord]
    simple: HopRecord
    one_hop: HopRecord | None
    trials: list[Trial]
    config: dict[str, Any]
    split: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"chain": [r.as_dict() for r in self.chain], "simple": self.simple.as_dict(),
                "one_hop": self.one_hop.as_dict() if self.one_hop else None,
                "trials": [t.as_dict() for t in self.trials], "config": self.config, "split": self.split,
                "warnings": self.warnings()}

    def warnings(self) -> list[str]:
        """Results a user should not take at face value: below the simple model, or a planner with no signal."""
        out = []
        student, simple = self.chain[-1], self.simple.val
        hops = len(self.chain) - 1
        if student.val < simple:
            out.append(f"the chosen chain ({hops} hop{'s' if hops > 1 else ''}) ends below the simple model alone on "
                       f"validation: {student.val:.4f} < {simple:.4f}; the student trained on labels alone is better")
        if self.one_hop is not None and hops > 1 and self.one_hop.val < simple:
            out.append(f"the 1-hop transfer is below the simple model alone on validation: {self.one_hop.val:.4f} < "
                       f"{simple:.4f}")
        if len(self.trials) > 1 and len({t.val for t in self.trials}) == 1:
            out.append(f"every chain the planner tried scored the same on validation ({self.trials[0].val:.4f}): the "
                       "choice carries no information (ties keep the shortest chain)")
        return out

    def table(self) -> str:
        """The report's table of models and its summary line, as markdown."""
        lines = ["| hop | model | complexity | method | val acc | test acc |", "|---|---|---:|---|---:|---:|"]
        for r in self.chain:
            lines.append(f"| {'teacher' if r.index == 0 else r.index} | {r.label} | {r.complexity} | {r.method} | "
                         f"{r.val:.4f} | {r.test:.4f} |")
        lines.append(f"| simple alone | {self.simple.label} | {self.simple.complexity} | labels | "
                     f"{self.simple.val:.4f} | {self.simple.test:.4f} |")
        if self.one_hop is not None:
            lines.append(f"| 1-hop | {self.one_hop.label} | {self.one_hop.complexity} | {self.one_hop.method} | "
                         f"{self.one_hop.val:.4f} | {self.one_hop.test:.4f} |")
        s = self.split
        lines.append("")
        teacher = (f"teacher loaded, its part {s['teacher_points']} points" if s.get("teacher_loaded")
                   else f"teacher on {s['teacher_points']} points")
        lines.append(f"Confidences: {s['confidence_split']} ({teacher}, students on "
                     f"{s['student_points']}; intermediates out-of-fold over {s['folds']} folds). "
                     f"Planner: {self.config['plan']['strategy']}, {len(self.trials)} chains scored on validation.")
        return "\n".join(lines)

    def markdown(self) -> str:
        """The whole report: warnings, the table, what each hop's method decided, the planner's trials."""
        lines = [f"# Chain on {self.config['data'].get('name')}", ""]
        warnings = self.warnings()
        if warnings:
            lines += ["## Warnings", "", *[f"- **warning**: {w}" for w in warnings], ""]
        lines += [self.table(), "", "## Hops", ""]
        rows = [(f"teacher {r.label}" if r.index == 0 else f"hop {r.index}, {r.label} by {r.method}", r)
                for r in self.chain]
        if self.one_hop is not None and len(self.chain) > 2:
            rows.append((f"1-hop, {self.one_hop.label} by {self.one_hop.method}", self.one_hop))
        for name, r in rows:
            parts = describe_hop(r)
            lines.append(f"- {name}" + (": " + "; ".join(parts) if parts else ""))
        if self.trials:
            chosen = [r.spec for r in self.chain[1:-1]]
            lines += ["", "## Chains the planner tried", "", "| intermediates | val acc of the student | |",
                      "|---|---:|---|"]
            for t in self.trials:
                names = ", ".join(spec_label(s) for s in t.intermediates) or "(none: 1 hop)"
                lines.append(f"| {names} | {t.val:.4f} | {'chosen' if t.intermediates == chosen else ''} |")
        return "\n".join(lines) + "\n"

    def plot(self, path: Path) -> None:
        """Accuracy against complexity along the chain, with the simple model and 1-hop marked."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [r.complexity for r in self.chain]
        for split, marker in (("val", "o"), ("test", "s")):
            ax.plot(xs, [getattr(r, split) for r in self.chain], marker=marker, label=f"chain ({split})")
        ax.scatter([self.simple.complexity], [self.simple.test], marker="x", s=80, color="k", label="simple alone (test)")
        if self.one_hop is not None:
            ax.scatter([self.one_hop.complexity], [self.one_hop.test], marker="^", s=80, color="r", label="1-hop (test)")
        for r in self.chain:
            ax.annotate(r.label, (r.complexity, r.test), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("complexity (parameters / tree nodes)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"chain on {self.config['data'].get('name')}, method {self.chain[-1].method}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        plt.close(fig)
