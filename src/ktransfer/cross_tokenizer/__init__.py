"""Distillation across tokenizers: a teacher whose tokenizer differs from the student's.

`align` aligns two tokenizations of one text through character offsets; `vocab` maps the two
vocabularies onto shared token texts plus a "rest" bucket; `span` and `uld` are the losses on
aligned spans; `term` is the knowledge term (`type: cross_tokenizer`) that puts them together;
`reinforce` the REINFORCE estimator of the backward KL whose span rewards reach the student's
tokens (`type: cross_tokenizer_reinforce`); `retokenize` tokenises the student's samples again
for the teacher.
"""

from __future__ import annotations

from ktransfer.cross_tokenizer.align import Alignment, AlignmentError, Span, align_offsets
from ktransfer.cross_tokenizer.reinforce import CrossTokenizerReinforceTerm
from ktransfer.cross_tokenizer.span import span_loss
from ktransfer.cross_tokenizer.term import METHODS, CrossTokenizerTerm
from ktransfer.cross_tokenizer.uld import uld_distance
from ktransfer.cross_tokenizer.vocab import VocabMapping, identity_mapping, vocab_mapping

# The knowledge terms whose teacher reads its own tokens of the text (the dataset's teacher_tokenizer).
CROSS_TOKENIZER_TERMS = (CrossTokenizerTerm, CrossTokenizerReinforceTerm)

__all__ = ["CROSS_TOKENIZER_TERMS", "METHODS", "Alignment", "AlignmentError", "CrossTokenizerReinforceTerm",
           "CrossTokenizerTerm", "Span", "VocabMapping", "align_offsets",
           "identity_mapping", "span_loss", "uld_distance", "vocab_mapping"]
