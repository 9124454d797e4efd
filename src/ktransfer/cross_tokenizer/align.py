"""Alignment of two tokenizations of one text through character offsets, never by position.

Each side gives one (start, end) character range per token, in token order; a special token
(end of sequence, padding, [CLS]) has start < 0 and covers no characters. Tokenizers map
offsets differently: byte-level BPE (GPT-2, SmolLM2) splits a character of several UTF-8 bytes
into tokens that each report the whole character; SentencePiece's byte fallback does the same
with its <0xNN> tokens; WordPiece skips spaces (its tokens never cover them) and gives [UNK]
the range of a whole word; a run of spaces may be a token of its own on one side and nothing
on the other. The alignment copes with all of these the same way:

1. Tokens of one side whose ranges overlap (bytes of one character), and tokens that cover no
   character, are merged with their neighbour into one *unit*: units of a side never overlap.
2. A character position p is a *boundary* of a side when none of its units covers characters
   on both sides of p (start < p < end). Positions no token covers (skipped spaces) are
   boundaries of that side.
3. The *cuts* are the unit edges that are boundaries of both sides. Between two consecutive
   cuts, the units of each side form a contiguous group of tokens covering the same characters
   (up to characters one side leaves uncovered). Where both groups are non-empty they form a
   `Span`; where only one side has tokens (a teacher token of spaces only), those tokens stay
   unaligned. A group holding a special token is not a span either.
4. Ends of sequence. An end-of-sequence token has the offsets (-2, c) (`tasks.END_OF_SEQUENCE_OFFSET`):
   it covers no character and follows the text that ends at character c. A student end of
   sequence and a teacher end of sequence at the same c form one more span, of no width
   (`Span.end_of_sequence`: student tokens [i, i + 1), teacher tokens [k, k + 1), characters
   [c, c)): both sides predict it after the same text, so "the text ends here" is compared like
   any span. Several at one c pair up in order; one without a partner on the other side (a
   teacher without an end-of-sequence token) is in no span. Other special tokens and padding,
   (-1, -1), never pair. The datasets (`ktransfer.data.corpus`) and `retokenize` write the
   marker where the student's token is its end of sequence and the teacher's end of sequence
   where the student's is, at a document boundary inside a block as at its end.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from ktransfer.tasks import END_OF_SEQUENCE_OFFSET


class AlignmentError(ValueError):
    """Character offsets that cannot be aligned (out of order, negative length, beyond the text)."""


@dataclass(frozen=True)
class Span:
    """Teacher tokens [teacher_start, teacher_stop) and student tokens [student_start, student_stop) covering
    the characters [char_start, char_end) of the same text."""

    student_start: int
    student_stop: int
    teacher_start: int
    teacher_stop: int
    char_start: int
    char_end: int
    end_of_sequence: bool = False  # the two ends of sequence after the text [.., char_end): one token each side


@dataclass(frozen=True)
class Alignment:
    """The spans of two tokenizations (ends of sequence included), and how many non-special tokens of each side
    no span holds."""

    spans: list[Span]
    student_unaligned: int
    teacher_unaligned: int

    @property
    def end_of_sequence_spans(self) -> int:
        """How many of the spans pair two ends of sequence."""
        return sum(1 for s in self.spans if s.end_of_sequence)


@dataclass
class _Unit:
    start: int
    end: int
    first: int  # token indices [first, stop)
    stop: int


def _units(offsets: Sequence[tuple[int, int]], side: str) -> list[_Unit]:
    """The non-overlapping units of one side (see the module docstring), in text order."""
    units: list[_Unit] = []
    leading: list[int] = []  # zero-width tokens before the first unit: they join the next one
    last_start = -1
    for i, (start, end) in enumerate(offsets):
        start, end = int(start), int(end)
        if start == END_OF_SEQUENCE_OFFSET:
            if end < 0 or (units and end < units[-1].end):
                raise AlignmentError(f"{side} token {i} is an end of sequence after character {end}, before the end "
                                     "of the text before it: the offsets are not in text order")
            last_start = max(last_start, end)  # the text after it starts at its character or later
            continue
        if start < 0:
            continue  # special token: no characters
        if end < start:
            raise AlignmentError(f"{side} token {i} has offsets ({start}, {end}): its end lies before its start")
        if start < last_start:
            raise AlignmentError(f"{side} token {i} starts at character {start}, before the token before it "
                                 f"({last_start}): the offsets are not in text order")
        last_start = start
        if units and (start < units[-1].end or start == end):
            # bytes of one character (overlap), or a token covering nothing: part of the unit before it
            units[-1].end = max(units[-1].end, end)
            units[-1].stop = i + 1
        elif start == end:
            leading.append(i)
        else:
            first = leading[0] if leading else i
            leading = []
            units.append(_Unit(start, end, first, i + 1))
    return units


def _is_boundary(p: int, starts: list[int], units: list[_Unit]) -> bool:
    """No unit of this side covers characters on both sides of position p."""
    k = bisect.bisect_left(starts, p) - 1  # the last unit starting before p
    return k < 0 or units[k].end <= p


def _ends_of_sequence(offsets: Sequence[tuple[int, int]]) -> dict[int, list[int]]:
    """The end-of-sequence tokens of one side by the character they follow: c -> token indices, in order."""
    ends: dict[int, list[int]] = {}
    for i, (start, end) in enumerate(offsets):
        if int(start) == END_OF_SEQUENCE_OFFSET:
            ends.setdefault(int(end), []).append(i)
    return ends


def align_offsets(student_offsets: Sequence[tuple[int, int]], teacher_offsets: Sequence[tuple[int, int]],
                  end_of_sequence: bool = True) -> Alignment:
    """The spans where the student's and the teacher's tokenizations of the same text share their boundaries.

    Offsets are character ranges of the same text, one per token; start < 0 marks a special token,
    (-2, c) an end of sequence after character c. `end_of_sequence`: pair the two sides' ends of
    sequence at the same character into spans (module docstring, 4.); False leaves them out.
    """
    sides = {"student": _units(student_offsets, "student"), "teacher": _units(teacher_offsets, "teacher")}
    starts = {k: [u.start for u in v] for k, v in sides.items()}
    edges = sorted({p for units in sides.values() for u in units for p in (u.start, u.end)})
    cuts = [p for p in edges if all(_is_boundary(p, starts[k], sides[k]) for k in sides)]
    specials = {k: {i for i, (s, _) in enumerate(o) if int(s) < 0}
                for k, o in (("student", student_offsets), ("teacher", teacher_offsets))}
    cursor = {"student": 0, "teacher": 0}
    spans: list[Span] = []
    aligned = {"student": 0, "teacher": 0}
    for a, b in zip(cuts, cuts[1:]):
        groups: dict[str, list[_Unit]] = {}
        for k, units in sides.items():
            j = cursor[k]
            group = []
            while j < len(units) and units[j].end <= b:
                group.append(units[j])
                j += 1
            cursor[k] = j
            groups[k] = group
        if not groups["student"] or not groups["teacher"]:
            continue
        rng = {k: (g[0].first, g[-1].stop) for k, g in groups.items()}
        if any(specials[k] & set(range(*rng[k])) for k in rng):
            continue
        spans.append(Span(*rng["student"], *rng["teacher"], a, b))
        for k in rng:
            aligned[k] += rng[k][1] - rng[k][0]
    if end_of_sequence:
        s_ends, t_ends = _ends_of_sequence(student_offsets), _ends_of_sequence(teacher_offsets)
        for c, s_list in s_ends.items():
            spans += [Span(i, i + 1, k, k + 1, c, c, end_of_sequence=True) for i, k in zip(s_list, t_ends.get(c, []))]
        spans.sort(key=lambda s: (s.student_start, s.teacher_start))
    counts = {k: sum(1 for s, _ in o if int(s) >= 0) - aligned[k]
              for k, o in (("student", student_offsets), ("teacher", teacher_offsets))}
    return Alignment(spans, counts["student"], counts["teacher"])


def append_span_positions(rows: dict[str, list[int]], b: int, span: Span, n: int,
                          student: tuple[str, str, str] = ("s_b", "s_pos", "s_span"),
                          teacher: tuple[str, str, str] = ("t_b", "t_pos", "t_span")) -> None:
    """Append to `rows` the positions whose predictions spell span `n` of example `b` on each side (position t-1
    predicts token t), under the keys (example, position, span number) given for the student and the teacher."""
    for (key_b, key_pos, key_span), (start, stop) in ((student, (span.student_start, span.student_stop)),
                                                      (teacher, (span.teacher_start, span.teacher_stop))):
        for j in range(start - 1, stop - 1):
            rows[key_b].append(b)
            rows[key_pos].append(j)
            rows[key_span].append(n)


__all__ = ["Alignment", "AlignmentError", "Span", "align_offsets", "append_span_positions"]
