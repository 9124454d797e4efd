"""Distillation across tokenizers: a teacher whose tokenizer differs from the student's.

`align` aligns two tokenizations of one text through character offsets; `vocab` maps the two
vocabularies onto shared token texts plus a "rest" bucket; `span` and `uld` are the losses on
aligned spans; `term` is the knowledge term (`type: cross_tokenizer`) that puts them together.
"""

from __future__ import annotations

from ktransfer.cross_tokenizer.align import Alignment, AlignmentError, Span, align_offsets
from ktransfer.cross_tokenizer.span import span_loss
from ktransfer.cross_tokenizer.term import METHODS, CrossTokenizerTerm
from ktransfer.cross_tokenizer.uld import uld_distance
from ktransfer.cross_tokenizer.vocab import VocabMapping, identity_mapping, vocab_mapping

__all__ = ["METHODS", "Alignment", "AlignmentError", "CrossTokenizerTerm", "Span", "VocabMapping", "align_offsets",
           "identity_mapping", "span_loss", "uld_distance", "vocab_mapping"]
