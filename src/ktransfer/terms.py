"""The catalogue of knowledge terms a config may name: the knowledge package's own and the sequence wing's.

`ktransfer.knowledge` holds the terms any task can use; the sequence wing (`ktransfer.sequence`)
adds on-policy and REINFORCE terms built on its target sources, and `ktransfer.cross_tokenizer` the
terms for a teacher with another tokenizer (its REINFORCE estimator builds on the sequence wing's).
The knowledge package imports neither: this module, above them, assembles them into `TERMS`, and
`build_terms` builds a config's `knowledge` list from it.
"""

from __future__ import annotations

from typing import Any

from ktransfer.cross_tokenizer import CrossTokenizerReinforceTerm, CrossTokenizerTerm
from ktransfer.knowledge import KNOWLEDGE, KnowledgeTerm
from ktransfer.knowledge import build_terms as _build_terms
from ktransfer.registry import Registry
from ktransfer.sequence.estimators import OnPolicyTerm, ReinforceTerm

TERMS: Registry[KnowledgeTerm] = Registry("knowledge term")
for _name in KNOWLEDGE.names():
    TERMS.register(_name)(KNOWLEDGE.get(_name))
TERMS.register("on_policy")(OnPolicyTerm)
TERMS.register("reinforce")(ReinforceTerm)
TERMS.register("cross_tokenizer")(CrossTokenizerTerm)
TERMS.register("cross_tokenizer_reinforce")(CrossTokenizerReinforceTerm)


def bind_terms(terms: list[KnowledgeTerm], info: dict[str, Any]) -> None:
    """Give every term with a `bind_data(info)` method the dataset's facts (e.g. the tokenizers it used)."""
    for term in terms:
        bind = getattr(term, "bind_data", None)
        if callable(bind):
            bind(info)


def build_terms(specs: list[dict[str, Any]], where: str = "knowledge") -> list[KnowledgeTerm]:
    """Build the knowledge terms of config dicts `{type: ..., **kwargs}`, any type of `TERMS`; names must be unique."""
    return _build_terms(specs, where, TERMS)


__all__ = ["TERMS", "bind_terms", "build_terms"]
