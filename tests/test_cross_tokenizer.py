"""Distillation across tokenizers: offsets alignment, the vocabulary mapping, the span and ULD losses,
the `cross_tokenizer` term, data with a second tokenization, and runs from YAML.

Alignments are checked on real tokenizers (SmolLM2's byte-level BPE, MiniLM's WordPiece, both
prepared offline) and on small SentencePiece-style and WordPiece tokenizers built here, against
alignments worked out by hand. Losses are checked against float64 references written
independently of the code, and their gradients with gradcheck.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from _hub import lay_out, offline_hub  # noqa: E402,F401  (offline_hub is a fixture)

from ktransfer.cross_tokenizer import CrossTokenizerTerm, align_offsets, identity_mapping, uld_distance, vocab_mapping
from ktransfer.cross_tokenizer.align import AlignmentError
from ktransfer.cross_tokenizer.span import binary_log_probs, project_log_probs, span_loss
from ktransfer.cross_tokenizer.vocab import marker_convention, token_text
from ktransfer.divergences import forward_kl, get_divergence
from ktransfer.knowledge.base import StepView
from ktransfer.tasks import ForwardResult


# ------------------------------------------------------------------------------------------- tokenizers
def _smollm2() -> Any:
    from ktransfer.pretrained import smollm2_tokenizer

    try:
        return smollm2_tokenizer()
    except Exception as e:  # not prepared on this machine
        pytest.skip(f"SmolLM2 is not prepared: {e}")


def _minilm() -> Any:
    from transformers import AutoTokenizer

    from ktransfer.pretrained import minilm_dir

    try:
        return AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)
    except Exception as e:
        pytest.skip(f"MiniLM is not prepared: {e}")


def sentencepiece_tokenizer(folder: Path) -> Any:
    """A SentencePiece-style BPE ('▁' for spaces, byte fallback <0xNN>) over a few words, as a fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    pieces = ["<unk>", "</s>", *[f"<0x{b:02X}>" for b in range(256)], "▁", "▁h", "▁he", "▁hel", "▁hell", "▁hello",
              "▁w", "▁wo", "▁wor", "▁worl", "▁world", "h", "e", "l", "o", "w", "r", "d", "你", "x", "▁x"]
    vocab = {p: i for i, p in enumerate(pieces)}
    merges = [("▁", "h"), ("▁h", "e"), ("▁he", "l"), ("▁hel", "l"), ("▁hell", "o"), ("▁", "w"), ("▁w", "o"),
              ("▁wo", "r"), ("▁wor", "l"), ("▁worl", "d"), ("▁", "x")]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    path = folder / "sp.json"
    tok.save(str(path))
    fast = PreTrainedTokenizerFast(tokenizer_file=str(path), eos_token="</s>", unk_token="<unk>")
    return fast


def encode(tok: Any, text: str) -> tuple[list[str], list[tuple[int, int]]]:
    e = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    return tok.convert_ids_to_tokens(e["input_ids"]), [tuple(o) for o in e["offset_mapping"]]


def spans_text(text: str, student: tuple[list[str], list[tuple[int, int]]],
               teacher: tuple[list[str], list[tuple[int, int]]]) -> list[tuple[str, list[str], list[str]]]:
    a = align_offsets(student[1], teacher[1])
    return [(text[s.char_start:s.char_end], student[0][s.student_start:s.student_stop],
             teacher[0][s.teacher_start:s.teacher_stop]) for s in a.spans]


# ------------------------------------------------------------------------------------------- alignment
def test_alignment_of_wordpiece_and_byte_level_bpe_with_cjk_emoji_and_runs_of_spaces() -> None:
    text = "Hello   world 你好 🙂 x"
    student, teacher = encode(_minilm(), text), encode(_smollm2(), text)
    assert spans_text(text, student, teacher) == [
        ("Hello", ["hello"], ["Hello"]),
        (" world", ["world"], ["Ġworld"]),          # WordPiece skips the spaces, the BPE token holds one
        ("你", ["[UNK]"], ["ä½", "ł"]),              # one CJK character: two byte tokens, one unit
        ("好", ["[UNK]"], ["å¥", "½"]),
        (" 🙂", ["[UNK]"], ["ĠðŁĻĤ"]),
        (" x", ["x"], ["Ġx"]),
    ]
    a = align_offsets(student[1], teacher[1])
    assert (a.student_unaligned, a.teacher_unaligned) == (0, 2)  # 'ĠĠ' and 'Ġ': spaces only the BPE covers


def test_alignment_merges_tokens_until_both_sides_have_a_boundary() -> None:
    text = "unbelievable things"
    student, teacher = encode(_minilm(), text), encode(_smollm2(), text)
    got = spans_text(text, student, teacher)
    assert [g[0] for g in got] == ["unbelievable", " things"]
    assert "".join(t.lstrip("#") for t in got[0][1]) == "unbelievable"
    assert "".join(got[0][2]) == "unbelievable"


def test_alignment_of_sentencepiece_byte_fallback(tmp_path: Path) -> None:
    sp = sentencepiece_tokenizer(tmp_path)
    text = "hello 🙂 world"
    teacher = encode(sp, text)
    assert teacher[0] == ["▁hello", "▁", "<0xF0>", "<0x9F>", "<0x99>", "<0x82>", "▁world"]
    student = encode(_smollm2(), text)
    assert spans_text(text, student, teacher) == [
        ("hello", ["hello"], ["▁hello"]),
        (" 🙂", ["ĠðŁĻĤ"], ["▁", "<0xF0>", "<0x9F>", "<0x99>", "<0x82>"]),   # four byte tokens, one character
        (" world", ["Ġworld"], ["▁world"]),
    ]


def test_special_tokens_are_never_aligned() -> None:
    # "ab cd" | special | "ef": both sides; the teacher splits "cd"
    student = [(0, 2), (3, 5), (-1, -1), (6, 8)]
    teacher = [(0, 2), (3, 4), (4, 5), (-1, -1), (6, 8)]
    a = align_offsets(student, teacher)
    assert [(s.student_start, s.student_stop, s.teacher_start, s.teacher_stop) for s in a.spans] == [
        (0, 1, 0, 1), (1, 2, 1, 3), (3, 4, 4, 5)]
    # a special token inside what would be one span: no span there
    a = align_offsets([(0, 4), (-1, -1), (4, 6)], [(0, 2), (2, 6)])
    assert a.spans == [] and a.student_unaligned == 2 and a.teacher_unaligned == 2


def test_ends_of_sequence_after_the_same_text_pair_into_a_span_of_no_width() -> None:
    # "ab cd" </s> "ef" </s> (documents one character apart), the teacher splits "cd", padding after the student's
    student = [(0, 2), (3, 5), (-2, 5), (6, 8), (-2, 8), (-1, -1)]
    teacher = [(0, 2), (3, 4), (4, 5), (-2, 5), (6, 8), (-2, 8)]
    a = align_offsets(student, teacher)
    assert [(s.student_start, s.student_stop, s.teacher_start, s.teacher_stop, s.char_start, s.char_end,
             s.end_of_sequence) for s in a.spans] == [
        (0, 1, 0, 1, 0, 2, False), (1, 2, 1, 3, 3, 5, False), (2, 3, 3, 4, 5, 5, True), (3, 4, 4, 5, 6, 8, False),
        (4, 5, 5, 6, 8, 8, True)]
    assert a.end_of_sequence_spans == 2 and a.student_unaligned == a.teacher_unaligned == 0
    assert align_offsets(student, teacher, end_of_sequence=False).spans == [s for s in a.spans if not s.end_of_sequence]
    # a teacher without an end of sequence after "ab cd" (none, or a plain special token): the student's stays alone
    for other in ([(0, 2), (3, 4), (4, 5), (6, 8), (-2, 8)], [(0, 2), (3, 4), (4, 5), (-1, -1), (6, 8), (-2, 8)]):
        assert [(s.student_start, s.teacher_start) for s in align_offsets(student, other).spans
                if s.end_of_sequence] == [(4, len(other) - 1)]
    # plain special tokens never pair, nor does a sample cut without its end of sequence
    assert align_offsets([(0, 2), (-1, -1)], [(0, 2), (-1, -1)]).end_of_sequence_spans == 0
    assert align_offsets([(0, 2), (3, 5), (-1, -1)], [(0, 2), (3, 5)]).end_of_sequence_spans == 0
    # an end of sequence before the end of the text before it is out of text order
    with pytest.raises(AlignmentError, match="end of sequence after character 3"):
        align_offsets([(0, 5), (-2, 3)], [(0, 5), (-2, 3)])


def test_offsets_out_of_order_are_refused() -> None:
    with pytest.raises(AlignmentError, match="not in text order"):
        align_offsets([(3, 5), (0, 2)], [(0, 5)])
    with pytest.raises(AlignmentError, match="end lies before its start"):
        align_offsets([(3, 1)], [(0, 5)])


# ------------------------------------------------------------------------------------------- vocabulary
def test_marker_conventions_and_token_texts(tmp_path: Path) -> None:
    assert marker_convention(_smollm2()) == "byte_level"
    assert marker_convention(_minilm()) == "wordpiece"
    assert marker_convention(sentencepiece_tokenizer(tmp_path)) == "sentencepiece"
    assert token_text("Ġworld", "byte_level") == b" world"
    assert token_text("ä½", "byte_level") == "你".encode()[:2]
    assert token_text("▁world", "sentencepiece") == b" world"
    assert token_text("<0xF0>", "sentencepiece") == b"\xf0"
    assert token_text("##ing", "wordpiece") == b"ing" and token_text("world", "wordpiece") == b" world"


def test_vocab_mapping_shares_texts_and_leaves_the_rest(tmp_path: Path) -> None:
    smol, sp = _smollm2(), sentencepiece_tokenizer(tmp_path)
    m = vocab_mapping(sp, smol)
    sv, tv = sp.get_vocab(), smol.get_vocab()
    same = m.student_bucket[sv["▁world"]]
    assert int(same) == int(m.teacher_bucket[tv["Ġworld"]]) and int(same) != m.rest
    assert int(m.student_bucket[sv["<0xF0>"]]) == int(m.teacher_bucket[tv["ð"]])  # the byte 0xF0 on both sides
    assert int(m.student_bucket[sv["<unk>"]]) == m.rest   # special tokens: rest
    assert int(m.teacher_bucket[tv["<|endoftext|>"]]) == m.rest
    # the two ends of sequence (SmolLM2's is <|im_end|>): one bucket of their own, after the texts
    assert sp.eos_token == "</s>" and smol.eos_token == "<|im_end|>" and m.end_of_sequence
    assert int(m.student_bucket[sv["</s>"]]) == int(m.teacher_bucket[tv["<|im_end|>"]]) == m.shared - 1
    assert m.shared_texts == m.shared - 1
    off = vocab_mapping(sp, smol, end_of_sequence=False)
    assert not off.end_of_sequence and off.shared == off.shared_texts == m.shared_texts
    assert int(off.student_bucket[sv["</s>"]]) == off.rest and int(off.teacher_bucket[tv["<|im_end|>"]]) == off.rest
    assert torch.equal(off.student_bucket[off.student_bucket < off.rest], m.student_bucket[m.student_bucket < m.rest - 1])
    assert identity_mapping(5).shared == 5 and vocab_mapping(smol, smol).identity


# ------------------------------------------------------------------------------------------- losses
def _reference_kl(p: list[float], q: list[float]) -> float:
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q) if a > 0)


def test_span_loss_with_one_tokenizer_equals_the_same_vocabulary_loss() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(7, 11, generator=g, dtype=torch.float64), torch.randn(7, 11, generator=g, dtype=torch.float64)
    m = identity_mapping(11)
    for name, params in (("forward_kl", {}), ("backward_kl", {}), ("jsd", {"beta": 0.3})):
        fn = get_divergence(name)
        for temperature in (1.0, 2.5):
            got = span_loss(fn, s, t, m.buckets("student", 11, s.device), m.buckets("teacher", 11, s.device),
                            m.shared + 1, temperature=temperature, likelihood_weight=0.0, params=params)
            want = fn(s, t, temperature=temperature, reduction="none", **params)
            torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_span_loss_against_a_float64_reference_with_rest_and_likelihood() -> None:
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    s_buckets, t_buckets = torch.tensor([0, 1, 2, 2, 2]), torch.tensor([1, 0, 2, 2])  # 2 shared texts + rest
    s_lp, t_lp = torch.tensor([-0.5, -2.0, -7.0], dtype=torch.float64), torch.tensor([-1.0, -0.1, -3.0], dtype=torch.float64)
    got = span_loss(forward_kl, s, t, s_buckets, t_buckets, 3, temperature=2.0, student_span_log_probs=s_lp,
                    teacher_span_log_probs=t_lp, likelihood_weight=0.5)
    for n in range(3):
        q = torch.softmax(s[n] / 2.0, -1).tolist()
        p = torch.softmax(t[n] / 2.0, -1).tolist()
        qb = [q[0], q[1], q[2] + q[3] + q[4]]
        pb = [p[1], p[0], p[2] + p[3]]
        ps, qs = math.exp(t_lp[n]), math.exp(s_lp[n])
        want = _reference_kl(pb, qb) + 0.5 * _reference_kl([ps, 1 - ps], [qs, 1 - qs])
        assert abs(float(got[n]) - want) < 1e-10


def test_projection_keeps_empty_buckets_finite() -> None:
    logp = torch.log_softmax(torch.tensor([[0.0, -math.inf, 1.0]], dtype=torch.float64, requires_grad=True), -1)
    out = project_log_probs(logp, torch.tensor([0, 1, 0]), 3)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert binary_log_probs(torch.tensor([0.0, -1e-30])).isfinite().all()


def _reference_uld(p: list[float], q: list[float]) -> float:
    p, q = sorted(p, reverse=True), sorted(q, reverse=True)
    width = max(len(p), len(q))
    p, q = p + [0.0] * (width - len(p)), q + [0.0] * (width - len(q))
    return sum(abs(a - b) for a, b in zip(p, q))


@pytest.mark.parametrize("widths", [(9, 6), (6, 9), (7, 7)], ids=["student-longer", "teacher-longer", "equal"])
def test_uld_against_a_float64_reference(widths: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(2)
    s = torch.randn(4, widths[0], generator=g, dtype=torch.float64)
    t = torch.randn(4, widths[1], generator=g, dtype=torch.float64)
    got = uld_distance(s, t, temperature=1.5)
    for n in range(4):
        want = _reference_uld(torch.softmax(t[n] / 1.5, -1).tolist(), torch.softmax(s[n] / 1.5, -1).tolist())
        assert abs(float(got[n]) - want) < 1e-12
    assert float(uld_distance(t, t).abs().max()) < 1e-15
    # a permutation of the vocabulary changes nothing: ULD sees no token identities
    torch.testing.assert_close(uld_distance(s[:, torch.randperm(widths[0], generator=g)], t), uld_distance(s, t))
    assert torch.autograd.gradcheck(lambda x: uld_distance(x, t, 1.2), (s.clone().requires_grad_(True),))


def test_gradients_of_span_and_uld_losses() -> None:
    g = torch.Generator().manual_seed(3)
    s = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 4, generator=g, dtype=torch.float64)
    lp = torch.tensor([-0.5, -2.0, -1.0], dtype=torch.float64, requires_grad=True)
    sb, tb = torch.tensor([0, 1, 2, 2, 2]), torch.tensor([1, 0, 2, 2])
    for name, params in (("forward_kl", {}), ("backward_kl", {}), ("jsd", {"beta": 0.5})):
        fn = get_divergence(name)
        assert torch.autograd.gradcheck(
            lambda x, y: span_loss(fn, x, t, sb, tb, 3, temperature=1.3, student_span_log_probs=y,
                                   teacher_span_log_probs=torch.tensor([-1.0, -0.3, -4.0], dtype=torch.float64),
                                   params=params), (s, lp))
    assert torch.autograd.gradcheck(lambda x: uld_distance(x, t, 1.2), (s,))


# ------------------------------------------------------------------------------------------- the term
def _view(s_logits: torch.Tensor, t_logits: torch.Tensor, batch: dict[str, Any]) -> StepView:
    """A causal-LM step view: logits of positions 0..T-2 predicting tokens 1..T-1."""
    s_targets = batch["labels"][:, 1:]
    t_targets = batch["teacher_labels"][:, 1:]
    return StepView(batch=batch, student=ForwardResult(s_logits, s_targets, None, "causal_lm"),
                    teacher=ForwardResult(t_logits, t_targets, None, "causal_lm"))


def test_term_with_one_tokenizer_equals_the_response_loss() -> None:
    g = torch.Generator().manual_seed(4)
    B, T, V = 2, 6, 13
    ids = torch.randint(0, V, (B, T), generator=g)
    labels = ids.clone()
    labels[1, 4:] = -100  # padding
    offsets = torch.tensor([[(2 * i, 2 * i + 1) for i in range(T)]] * B)
    offsets[1, 4:] = -1
    batch = {"input_ids": ids, "labels": labels, "teacher_input_ids": ids, "teacher_labels": labels,
             "token_offsets": offsets, "teacher_token_offsets": offsets}
    s = torch.randn(B, T - 1, V, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(B, T - 1, V, generator=g, dtype=torch.float64)
    term = CrossTokenizerTerm(divergence="forward_kl", temperature=2.0, likelihood_weight=0.0)
    term.set_mapping(identity_mapping(V))
    got = term.loss(_view(s, t, batch))
    want = forward_kl(s, t, mask=labels[:, 1:] != -100, temperature=2.0)
    assert abs(float(got.detach()) - float(want.detach())) < 1e-10
    assert term.counts["spans_counted"] == 5 + 3


@pytest.mark.parametrize("end_of_sequence", [True, False])
def test_term_with_one_tokenizer_and_ends_of_sequence_equals_the_response_loss(end_of_sequence: bool) -> None:
    """Row 0 ends with its end of sequence, row 1 holds one at a document boundary, both (-2, c) on both sides:
    each is a span, so the term is the response loss over every target; `end_of_sequence: false` leaves
    exactly those positions out."""
    g = torch.Generator().manual_seed(5)
    B, T, V = 2, 6, 13
    ids = torch.randint(0, V - 1, (B, T), generator=g)
    offsets = torch.tensor([[(2 * i, 2 * i + 1) for i in range(T)]] * B)
    for b, i in ((0, 5), (1, 3)):
        ids[b, i] = V - 1
        offsets[b, i] = torch.tensor([-2, 2 * i - 1])
    labels = ids.clone()
    batch = {"input_ids": ids, "labels": labels, "teacher_input_ids": ids, "teacher_labels": labels,
             "token_offsets": offsets, "teacher_token_offsets": offsets}
    s = torch.randn(B, T - 1, V, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(B, T - 1, V, generator=g, dtype=torch.float64)
    term = CrossTokenizerTerm(divergence="forward_kl", likelihood_weight=0.0, end_of_sequence=end_of_sequence)
    term.set_mapping(identity_mapping(V))
    got = term.loss(_view(s, t, batch))
    mask = labels[:, 1:] != -100
    if not end_of_sequence:
        mask = mask & (ids[:, 1:] != V - 1)
    want = forward_kl(s, t, mask=mask, temperature=1.0)
    assert abs(float(got.detach()) - float(want.detach())) < 1e-10
    assert term.counts["end_of_sequence_spans_counted"] == term.counts["end_of_sequence_spans"] == \
        (2 if end_of_sequence else 0)
    assert term.counts["spans_counted"] == 2 * 5 - (0 if end_of_sequence else 2)


def test_term_validates_its_settings() -> None:
    with pytest.raises(ValueError, match="valid choices: span, uld"):
        CrossTokenizerTerm(method="dtw")
    with pytest.raises(ValueError, match="jsd' takes beta"):
        CrossTokenizerTerm(divergence="jsd", params={"alpha": 0.1})
    with pytest.raises(ValueError, match="apply to method span only"):
        CrossTokenizerTerm(method="uld", divergence="jsd")
    with pytest.raises(ValueError, match="likelihood_weight"):
        CrossTokenizerTerm(likelihood_weight=-1.0)
    with pytest.raises(ValueError, match="end_of_sequence must be true or false, got 'no'"):
        CrossTokenizerTerm(end_of_sequence="no")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- data
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.", "A journey of a thousand miles begins with one step.",
    "Distillation moves knowledge from a teacher to a student.", "Tokenizers split words into   pieces differently.",
    "Tea in Kyoto: 京都の お茶 is lovely 🍵 indeed.", "Rain fell on the quiet town all night long.",
    "She sold sea shells by the sea shore.", "Numbers like 12345 and 3.14159 are tokenised too.",
    "An unbelievable performance left everyone speechless.", "The committee postponed its decision until Monday.",
    "Hello 🙂 world, said the cheerful robot.", "Bright stars shine above the silent mountains.",
    "Markets rose sharply after the announcement.", "The library opens at nine every morning.",
    "Children played football in the park.", "Fresh bread smells wonderful in the morning.",
    "The river winds slowly through the valley.", "Engineers tested the bridge before opening it.",
    "Music filled the hall during the concert.", "Old maps show roads that no longer exist.",
]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("xtok") / "corpus.txt"
    path.write_text("\n".join(f"{s} Line {i} ends here." for i, s in enumerate(SENTENCES * 2)) + "\n", encoding="utf-8")
    return path


def _minilm_folder() -> str:
    from ktransfer.pretrained import minilm_dir

    try:
        return str(minilm_dir())
    except Exception as e:
        pytest.skip(f"MiniLM is not prepared: {e}")


@pytest.mark.parametrize("packing", ["pack", "pad"])
def test_text_corpus_tokenises_each_training_block_for_the_teacher_too(corpus_file: Path, packing: str) -> None:
    from ktransfer.data import DATASETS

    teacher_folder = _minilm_folder()
    data = DATASETS.build("text_corpus", {"path": str(corpus_file), "train_tokenizer": 300, "max_length": 24,
                                          "packing": packing, "teacher_tokenizer": teacher_folder}, "data")
    assert data.info["teacher_tokenizer"] == teacher_folder and data.info["teacher_vocab_size"] == 30522
    from ktransfer.data.corpus import load_tokenizer

    student_tok, teacher_tok = load_tokenizer(data.info["tokenizer"]), load_tokenizer(teacher_folder)
    for k in range(len(data.train)):  # type: ignore[arg-type]
        row = data.train[k]
        # the same characters: rebuild the block's text from the student's tokens and offsets, then check
        # every teacher token covers the text its own tokenizer gives it
        text = [" "] * (int(row["token_offsets"].max()) + 1)
        for tid, (a, b) in zip(row["input_ids"].tolist(), row["token_offsets"].tolist()):
            if a >= 0:
                piece = student_tok.decode([tid])
                text[a:b] = list(piece) if len(piece) == b - a else text[a:b]
        spans = align_offsets(row["token_offsets"].tolist(), row["teacher_token_offsets"].tolist()).spans
        assert spans, f"block {k} has no aligned span"
        for s in spans:  # each span: the same text on both sides (WordPiece lowercases and drops spaces)
            s_text = student_tok.decode(row["input_ids"][s.student_start:s.student_stop].tolist())
            t_text = teacher_tok.decode(row["teacher_input_ids"][s.teacher_start:s.teacher_stop].tolist())
            if "[UNK]" not in t_text:
                assert s_text.strip().lower().replace(" ", "") == t_text.replace(" ", "").replace("##", ""), (s_text, t_text)
        # the student's ends of sequence: (-2, c) after the text before them; MiniLM has no end of sequence, so
        # the teacher has none to pair with them
        eos = row["input_ids"] == data.info["eos_token_id"]
        assert bool((row["token_offsets"][eos][:, 0] == -2).all())
        assert not any(s.end_of_sequence for s in spans) and bool((row["teacher_token_offsets"][:, 0] != -2).all())
    assert len(data.val) and "teacher_input_ids" not in data.val[0]  # the student is evaluated alone
    batch = data.collate_fn([data.train[i] for i in range(3)])
    assert batch["teacher_token_offsets"].shape[:2] == batch["teacher_input_ids"].shape
    assert int(batch["teacher_labels"].min()) >= -100


def test_teacher_tokenizer_by_hub_id_from_the_cache(corpus_file: Path, offline_hub: Path) -> None:
    from ktransfer.data import DATASETS

    folder = _minilm_folder()
    lay_out(Path(folder), offline_hub, "sentence-transformers/all-MiniLM-L6-v2", link=True)
    data = DATASETS.build("text_corpus", {"path": str(corpus_file), "train_tokenizer": 300, "max_length": 24,
                                          "teacher_tokenizer": "sentence-transformers/all-MiniLM-L6-v2"}, "data")
    assert data.info["teacher_vocab_size"] == 30522 and "models--sentence-transformers" in data.info["teacher_tokenizer"]
    with pytest.raises(Exception, match="acme/absent"):
        DATASETS.build("text_corpus", {"path": str(corpus_file), "train_tokenizer": 300,
                                       "teacher_tokenizer": "acme/absent"}, "data")


def test_a_teacher_tokenizer_that_cannot_be_loaded_stops_with_the_reason(corpus_file: Path, tmp_path: Path) -> None:
    from ktransfer.data import DATASETS

    with pytest.raises(FileNotFoundError, match="teacher_tokenizer: not found"):
        DATASETS.build("text_corpus", {"path": str(corpus_file), "train_tokenizer": 300,
                                       "teacher_tokenizer": str(tmp_path / "nothing-here")}, "data")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="teacher_tokenizer: cannot load a tokenizer"):
        DATASETS.build("text_corpus", {"path": str(corpus_file), "train_tokenizer": 300,
                                       "teacher_tokenizer": str(broken)}, "data")


# ------------------------------------------------------------------------------------------- runs
def xtok_config(corpus_file: Path, teacher_tokenizer: str, teacher: dict[str, Any], **changes: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "task": "causal_lm",
        "data": {"name": "text_corpus", "path": str(corpus_file), "train_tokenizer": 300, "max_length": 24,
                 "teacher_tokenizer": teacher_tokenizer},
        "teacher": teacher,
        "student": {"builder": "llama_student", "hidden_size": 16, "num_layers": 1, "num_heads": 2},
        "knowledge": [{"type": "cross_tokenizer", "method": "span", "divergence": "forward_kl", "weight": 0.5},
                      {"type": "labels", "weight": 0.5}],
        "optim": {"lr": 0.01},
        "train": {"max_steps": 4, "batch_size": 4, "eval_every": 4, "seed": 0, "log_every": 1},
    }
    cfg.update(changes)
    return cfg


def test_cli_run_with_a_wordpiece_teacher_for_a_bpe_student(corpus_file: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from ktransfer.cli import main

    teacher = {"builder": "llama_student", "hidden_size": 16, "num_layers": 1, "num_heads": 2}
    path = tmp_path / "xtok.yaml"
    path.write_text(yaml.safe_dump(xtok_config(corpus_file, _minilm_folder(), teacher)))
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "cross-tokenizer alignment on" in out and "vocabulary mapping of" in out
    for method in ("span", "uld"):
        run_dir = tmp_path / method
        extra = ["--set", "knowledge.0.method=uld"] if method == "uld" else []
        assert main(["run", str(path), "--run-dir", str(run_dir), "--no-progress", *extra]) == 0
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        trains = [r for r in records if r.get("split") == "train"]
        assert len(trains) == 4 and all(math.isfinite(r["terms"]["cross_tokenizer"]) and r["terms"]["cross_tokenizer"] > 0
                                        for r in trains)
        assert [r for r in records if r.get("split") == "val"][-1]["perplexity"] > 1
        counts = [r["counts"]["cross_tokenizer"] for r in trains]  # the term's running counts, logged
        assert counts[0]["spans_counted"] > 0
        assert all(a["spans"] < b["spans"] and a["student_tokens"] < b["student_tokens"]
                   for a, b in zip(counts, counts[1:]))
        assert all(c["spans_counted"] <= c["spans"] and c["student_tokens_unaligned"] <= c["student_tokens"]
                   for c in counts)
        if method == "span":  # killed after 2 steps and resumed: the same losses as the uninterrupted run
            resumed = tmp_path / "resumed"
            assert main(["run", str(path), "--run-dir", str(resumed), "--no-progress", "--stop-after", "2",
                         "--set", "train.checkpoint_every=1"]) == 0
            assert main(["resume", str(resumed), "--no-progress"]) == 0
            again = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
            assert [r["terms"] for r in again if r.get("split") == "train"] == [r["terms"] for r in trains]
            assert [r["counts"] for r in again if r.get("split") == "train"] == [r["counts"] for r in trains]


def test_the_student_learns_from_a_teacher_with_another_tokenizer(corpus_file: Path, tmp_path: Path) -> None:
    """The span term alone (next token and span likelihood) lowers the student's divergence from a teacher
    that reads other tokens."""
    from ktransfer.config import RunConfig
    from ktransfer.runner import run

    teacher = {"builder": "llama_student", "hidden_size": 16, "num_layers": 1, "num_heads": 2}
    cfg = xtok_config(corpus_file, _minilm_folder(), teacher,
                      knowledge=[{"type": "cross_tokenizer", "likelihood_weight": 1.0}],
                      train={"max_steps": 12, "batch_size": 4, "eval_every": 12, "seed": 0, "log_every": 1})
    run(RunConfig.from_dict(cfg), tmp_path / "learn", progress=False)
    records = [json.loads(line) for line in (tmp_path / "learn" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["terms"]["cross_tokenizer"] for r in records if r.get("split") == "train"]
    assert sum(losses[-3:]) < sum(losses[:3])


def test_bad_cross_tokenizer_configs_stop_before_training(corpus_file: Path, tmp_path: Path) -> None:
    from ktransfer.config import RunConfig
    from ktransfer.registry import ConfigError

    teacher = {"builder": "llama_student", "hidden_size": 16, "num_layers": 1, "num_heads": 2}
    folder = _minilm_folder()
    cfg = xtok_config(corpus_file, folder, teacher)
    del cfg["data"]["teacher_tokenizer"]
    with pytest.raises(ConfigError, match="set data.teacher_tokenizer"):
        RunConfig.from_dict(cfg)
    cfg = xtok_config(corpus_file, folder, teacher, knowledge=[{"type": "response"}])
    with pytest.raises(ConfigError, match="use a term of type cross_tokenizer"):
        RunConfig.from_dict(cfg)
    cfg = xtok_config(corpus_file, folder, teacher)
    cfg["train"]["metric"] = "teacher_kl"
    with pytest.raises(ConfigError, match="train.metric: teacher_kl"):
        RunConfig.from_dict(cfg)
    cfg = xtok_config(corpus_file, folder, teacher, data={"name": "digits"}, task="classification")
    with pytest.raises(ConfigError, match="valid: causal_lm"):
        RunConfig.from_dict(cfg)
    cfg = xtok_config(corpus_file, folder, teacher)
    cfg["knowledge"][0]["method"] = "dtw"
    with pytest.raises(ConfigError, match="valid choices: span, uld"):
        RunConfig.from_dict(cfg)
    cfg = xtok_config(corpus_file, folder, teacher, targets={"sources": {"teacher": 1.0}})
    with pytest.raises(ConfigError, match="dataset and student sources only"):
        RunConfig.from_dict(cfg)
    # a tokenizer the span method's mapping cannot load: the check stops with the reason
    from ktransfer.runner import preflight

    cfg = xtok_config(corpus_file, folder, teacher)
    cfg["knowledge"][0]["student_tokenizer"] = str(tmp_path / "no-such-tokenizer.json")
    with pytest.raises(ConfigError, match=r"knowledge\[0\] \(cross_tokenizer\): cannot map the two vocabularies"):
        preflight(RunConfig.from_dict(cfg))


def test_offsets_that_cannot_be_recovered_stop_the_check(corpus_file: Path) -> None:
    """A teacher tokenizer whose offsets cover nothing (all (0, 0)): no span aligns, and the check says so."""
    import ktransfer.data.corpus as corpus
    from ktransfer.config import RunConfig
    from ktransfer.registry import ConfigError
    from ktransfer.runner import preflight

    assert align_offsets([(0, 3), (4, 6)], [(0, 0), (0, 0), (0, 0)]).spans == []
    teacher = {"builder": "llama_student", "hidden_size": 16, "num_layers": 1, "num_heads": 2}
    cfg = RunConfig.from_dict(xtok_config(corpus_file, _minilm_folder(), teacher))
    real = corpus.encode_with_offsets

    def zero_offsets(tk: Any, texts: Any, who: str) -> Any:
        ids, offsets = real(tk, texts, who)
        return ids, [[(0, 0)] * len(o) for o in offsets] if who == "teacher's" else offsets

    mp = pytest.MonkeyPatch()
    mp.setattr(corpus, "encode_with_offsets", zero_offsets)
    try:
        with pytest.raises(ConfigError, match="no span of the first .* training blocks aligns"):
            preflight(cfg)
    finally:
        mp.undo()


@pytest.mark.slow
def test_smollm2_teaches_a_student_with_its_own_bpe(corpus_file: Path, tmp_path: Path) -> None:
    """The real SmolLM2 (byte-level BPE, 49,152 tokens) as teacher of a student with a 300-token BPE."""
    from ktransfer.config import RunConfig
    from ktransfer.runner import run

    _smollm2()
    cfg = xtok_config(corpus_file, "smollm2", {"builder": "smollm2"},
                      train={"max_steps": 2, "batch_size": 2, "eval_every": 2, "seed": 0, "log_every": 1})
    result = run(RunConfig.from_dict(cfg), tmp_path / "smol", progress=False)
    assert result.train.step == 2
    records = [json.loads(line) for line in (tmp_path / "smol" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["terms"]["cross_tokenizer"]) for r in records if r.get("split") == "train")


@pytest.fixture(scope="module")
def eos_teacher_data(corpus_file: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, str]:
    """Packed training blocks (documents end inside them) for a SentencePiece-style teacher with an end of
    sequence (</s>), and the teacher's tokenizer folder."""
    from ktransfer.data import DATASETS

    folder = tmp_path_factory.mktemp("sp_teacher")
    sentencepiece_tokenizer(folder).save_pretrained(folder / "tok")
    data = DATASETS.build("text_corpus", {"path": str(corpus_file), "train_tokenizer": 300, "max_length": 24,
                                          "packing": "pack", "teacher_tokenizer": str(folder / "tok")}, "data")
    return data, str(folder / "tok")


def test_every_end_of_sequence_of_a_block_pairs_with_the_teachers(eos_teacher_data: tuple[Any, str]) -> None:
    """Each student end of sequence of a training block (at its end or at a document boundary inside it) and
    the teacher's one after the same text carry (-2, c) and form an end-of-sequence span, in order."""
    from ktransfer.data.corpus import load_tokenizer

    data, folder = eos_teacher_data
    s_eos, t_eos = data.info["eos_token_id"], load_tokenizer(folder).eos_token_id
    assert data.info["teacher_eos_token_id"] == t_eos is not None
    inside = 0
    for k in range(len(data.train)):  # type: ignore[arg-type]
        row = data.train[k]
        s_at = (row["input_ids"] == s_eos).nonzero().flatten().tolist()
        t_at = (row["teacher_input_ids"] == t_eos).nonzero().flatten().tolist()
        pairs = [(s.student_start, s.teacher_start) for s in
                 align_offsets(row["token_offsets"].tolist(), row["teacher_token_offsets"].tolist()).spans
                 if s.end_of_sequence]
        assert pairs == list(zip(s_at, t_at, strict=True))
        for i, j in pairs:
            c = int(row["token_offsets"][i, 1])
            assert row["token_offsets"][i].tolist() == row["teacher_token_offsets"][j].tolist() == [-2, c]
            # the text before it, on both sides, ends at c; the next document starts after it
            for key, at in (("token_offsets", i), ("teacher_token_offsets", j)):
                off = row[key]
                assert all(int(e) <= c for a, e in off[:at].tolist() if a >= 0)
                assert all(int(a) > c for a, _ in off[at + 1:].tolist() if a >= 0)
        inside += sum(1 for i in s_at if 0 < i < len(row["input_ids"]) - 1)
    assert inside > 3  # packing puts document boundaries inside blocks


def test_the_span_term_compares_the_two_ends_of_sequence_in_their_own_bucket(eos_teacher_data: tuple[Any, str]) -> None:
    """A student sample "Rain fell on the town" + </s>, tokenised again for the teacher; only the end of
    sequence is a target (the rest a prompt), so the loss is its span's value alone: forward KL over
    (shared texts, the two ends of sequence, rest) at the positions that predict them plus the likelihood
    part on {eos, not eos}, worked out in float64 from the logits and the tokenizers' own ids."""
    from ktransfer.cross_tokenizer.retokenize import RetokenizedTargets
    from ktransfer.data.corpus import load_tokenizer

    data, folder = eos_teacher_data
    # the trained student tokenizer's file names no end of sequence: the dataset's id is the one
    student, teacher, s_eos = load_tokenizer(data.info["tokenizer"]), load_tokenizer(folder), data.info["eos_token_id"]
    assert student.eos_token_id is None and s_eos is not None
    ids = student("Rain fell on the town", add_special_tokens=False)["input_ids"] + [s_eos]
    labels = [-100] * len(ids)
    labels[-1] = ids[-1]
    out = RetokenizedTargets(None, student, teacher, student_eos=s_eos).retokenize(
        {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
         "labels": torch.tensor([labels])})
    t_ids = out["teacher_input_ids"][0].tolist()
    assert t_ids[-1] == teacher.eos_token_id and t_ids.count(teacher.eos_token_id) == 1
    c = len("Rain fell on the town")
    assert out["token_offsets"][0, -1].tolist() == out["teacher_token_offsets"][0, -1].tolist() == [-2, c]
    out["teacher_labels"][0, :-1] = -100
    g = torch.Generator().manual_seed(2)
    vs, vt = len(student) + 3, len(teacher)  # the student's padded embedding rows: rest
    s = torch.randn(1, len(ids) - 1, vs, generator=g, dtype=torch.float64)
    t = torch.randn(1, len(t_ids) - 1, vt, generator=g, dtype=torch.float64)
    term = CrossTokenizerTerm(divergence="forward_kl", likelihood_weight=0.5)
    term.bind_data(data.info)
    got = float(term.loss(_view(s, t, out)))
    assert term.counts["spans_counted"] == term.counts["end_of_sequence_spans_counted"] == 1

    # by hand: the buckets from the tokenizers' texts, the two ends of sequence together
    from ktransfer.cross_tokenizer.vocab import vocabulary_texts

    s_text, t_text = vocabulary_texts(student), vocabulary_texts(teacher)
    shared = set(s_text.values()) & set(t_text.values())
    q = [math.exp(v) for v in torch.log_softmax(s[0, -1], -1).tolist()]
    p = [math.exp(v) for v in torch.log_softmax(t[0, -1], -1).tolist()]
    qb: dict[Any, float] = {}
    pb: dict[Any, float] = {}
    for probs, texts, eos, out_b in ((q, s_text, s_eos, qb), (p, t_text, teacher.eos_token_id, pb)):
        for i, pr in enumerate(probs):
            key = "eos" if i == eos else (texts[i] if texts.get(i) in shared else "rest")
            out_b[key] = out_b.get(key, 0.0) + pr
    keys = sorted(set(qb) | set(pb), key=str)
    want = _reference_kl([pb.get(k, 0.0) for k in keys], [qb.get(k, 0.0) for k in keys])
    pe, qe = p[teacher.eos_token_id], q[s_eos]
    want += 0.5 * _reference_kl([pe, 1 - pe], [qe, 1 - qe])
    assert abs(got - want) < 1e-9
    # without the pairing: no span at all here
    off = CrossTokenizerTerm(divergence="forward_kl", end_of_sequence=False)
    off.bind_data(data.info)
    assert float(off.loss(_view(s, t, out))) == 0.0 and off.counts["spans_counted"] == 0


def test_a_runs_retokenizing_stage_and_span_term_take_the_datas_ends_of_sequence(
        corpus_file: Path, eos_teacher_data: tuple[Any, str]) -> None:
    """The trained student tokenizer's file names no end of sequence; a run's stage and term take the data's."""
    from ktransfer.config import RunConfig
    from ktransfer.runner import _stages

    data, folder = eos_teacher_data
    teacher = {"builder": "llama_student", "hidden_size": 16, "num_layers": 1, "num_heads": 2}
    cfg = xtok_config(corpus_file, folder, teacher, knowledge=[{"type": "cross_tokenizer", "divergence": "backward_kl"}],
                      targets={"sources": {"student": 1.0}, "generation": {"max_new_tokens": 6}})
    cfg["data"]["prompt_length"] = 4
    (stage,) = _stages(RunConfig.from_dict(cfg), data.info)
    assert stage._student_eos == data.info["eos_token_id"] is not None
    term = CrossTokenizerTerm()
    term.bind_data(data.info)
    mapping = term.mapping()
    assert mapping.end_of_sequence
    assert int(mapping.student_bucket[data.info["eos_token_id"]]) == \
        int(mapping.teacher_bucket[data.info["teacher_eos_token_id"]]) == mapping.shared - 1


# ------------------------------------------------------------------------------------------- on-policy
def test_retokenizing_dataset_rows_gives_the_datasets_teacher_tokens(corpus_file: Path) -> None:
    """A byte-level BPE student writes its text exactly, so tokenising its rows again for the teacher gives the
    teacher tokens the dataset made (one document per block)."""
    from ktransfer.cross_tokenizer.retokenize import RetokenizedTargets, _row_text
    from ktransfer.data import DATASETS
    from ktransfer.data.corpus import load_tokenizer

    folder = _minilm_folder()
    data = DATASETS.build("text_corpus", {"path": str(corpus_file), "train_tokenizer": 300, "max_length": 128,
                                          "packing": "pad", "teacher_tokenizer": folder}, "data")
    student = load_tokenizer(data.info["tokenizer"])
    stage = RetokenizedTargets(None, student, load_tokenizer(folder))
    batch = data.collate_fn([data.train[i] for i in range(4)])
    own = {k: v for k, v in batch.items() if not k.startswith("teacher_") and k != "token_offsets"}
    again = stage.retokenize(own)
    torch.testing.assert_close(again["teacher_input_ids"], batch["teacher_input_ids"])
    torch.testing.assert_close(again["teacher_token_offsets"], batch["teacher_token_offsets"])
    # an emoji the student writes as two byte tokens: the first covers no character, the second the emoji
    ids = student("a 🙂", add_special_tokens=False)["input_ids"]
    items, stretches = _row_text(ids, stage._texts)
    assert stretches == ["a 🙂"]
    assert items[-1][2:] == (1, 3) or (items[-2][2] == items[-2][3] and items[-1][3] == 3)


def test_on_policy_run_with_student_samples_read_by_a_teacher_with_another_tokenizer(corpus_file: Path,
                                                                                  tmp_path: Path) -> None:
    from ktransfer.cli import main

    teacher = {"builder": "llama_student", "hidden_size": 16, "num_layers": 1, "num_heads": 2}
    cfg = xtok_config(corpus_file, _minilm_folder(), teacher,
                      knowledge=[{"type": "cross_tokenizer", "divergence": "backward_kl"}],
                      targets={"sources": {"dataset": 0.5, "student": 0.5}, "generation": {"max_new_tokens": 6}})
    cfg["data"]["prompt_length"] = 4
    path = tmp_path / "onpolicy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--run-dir", str(tmp_path / "run"), "--no-progress"]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    trains = [r for r in records if r.get("split") == "train"]
    assert len(trains) == 4 and all(math.isfinite(r["terms"]["cross_tokenizer"]) for r in trains)
    # a teacher that generates would write the student's tokens: refused
    from ktransfer.config import RunConfig
    from ktransfer.registry import ConfigError

    cfg["targets"]["sources"] = {"teacher": 1.0}
    with pytest.raises(ConfigError, match="dataset and student sources only"):
        RunConfig.from_dict(cfg)
