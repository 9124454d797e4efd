"""Which teacher internals a run reads: the modules to capture into a store so that the run trains from it.

Feature and relation terms read hidden states, attention terms attention maps, and a selector with a
`teacher_representation` reads that module's output. The terms resolve their layers against the
models exactly as the engine does (`setup`), so the names are those the run will ask the store for.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ktransfer.capture import parse_spec
from ktransfer.knowledge.attention import AttentionTerm
from ktransfer.selection import SELECTORS
from ktransfer.terms import build_terms


def captures_read_by(knowledge: list[dict[str, Any]], selector: dict[str, Any] | None, student: nn.Module,
                     teacher: nn.Module) -> tuple[list[str], list[str]]:
    """`(hidden, attentions)`: the teacher modules whose hidden states / attention maps a run with these
    knowledge terms and selector reads, in order, each once."""
    hidden: dict[str, None] = {}
    attentions: dict[str, None] = {}
    for term in build_terms(knowledge):
        setup = getattr(term, "setup", None)
        if callable(setup):
            setup(student, teacher)
        target = attentions if isinstance(term, AttentionTerm) else hidden
        for spec in getattr(term, "teacher_modules", ()):
            target[spec] = None
    if selector:
        spec = dict(selector)
        built = SELECTORS.build(spec.pop("type"), spec, "selector")
        for name in getattr(built, "teacher_modules", ()):
            hidden[name] = None
    keys = {parse_spec(a).key for a in attentions}
    return [h for h in hidden if parse_spec(h).key not in keys], list(attentions)
