"""The teacher output store on disk: a folder any script can write and the engine reads.

A store holds, for every training example (by its 0-based index in the training split), what the
teacher predicted, so that a run trains with no teacher in memory. Layout of a store folder::

    manifest.json             written last on every change (atomically), see below
    shard-00000.safetensors   examples [0, shard_size)
    shard-00001.safetensors   examples [shard_size, 2 * shard_size) ...

``manifest.json`` keys:

``format``
    ``"ktransfer-teacher-outputs"``; ``version``: 1, 2 for a ``fit`` store (``values`` below), or 3 for a
    store on the teacher's own tokens (``teacher_tokens`` below, with any ``values``), so that a reader
    that cannot decode it refuses it by its version.
``kind``
    ``"topk"`` (sequences: per target position the teacher's k most probable token ids, their
    log-probabilities at temperature 1 and the log of the mass it did not keep) or ``"logits"``
    (classification: every class logit of each example).
``task``
    ``classification`` | ``causal_lm`` | ``seq2seq``: the run task the store is for.
``examples``, ``shard_size``
    number of training examples; examples per shard (the last shard may hold fewer).
``k``, ``vocab_size``
    kept tokens per position and the teacher's vocabulary (``topk``); ``num_classes`` (``logits``).
``values``
    how the values are encoded: ``"float32"`` or ``"float16"``, the dtype of ``logprobs`` / ``logits``
    in the shards; or ``"fit"`` (``topk`` only), each position's log-probabilities stored as the
    coefficients of a polynomial in the rank (below), with ``fit_degree`` its degree.
``keys``
    what the store was made from, compared with a run before it trains: ``teacher`` (a digest of the
    teacher's weights, or any string naming a served teacher), ``data`` (a digest of the training
    examples' content, :func:`examples_digest`), ``tokenizer`` (the data's vocabulary digest, or null);
    a ``teacher_tokens`` store also records ``teacher_tokenizer`` (the vocabulary digest of the data's
    ``teacher_tokenizer``) and ``teacher_tokenization`` (:func:`teacher_tokens_digest`: the teacher's
    token ids, labels and character offsets of every training example).
``teacher_tokens`` (optional, ``true``)
    the teacher read its own tokens of each text (a dataset with ``teacher_tokenizer``: batch keys
    ``teacher_input_ids``, ``teacher_attention_mask``, ``teacher_labels``, ``teacher_token_offsets``),
    so the rows are the *teacher's* target positions (position t predicts teacher token t+1 and counts
    where ``teacher_labels[t+1] != -100``), ``vocab_size`` is the teacher's, and each row also holds the
    teacher's log-probability of its actual next token (``next_logprobs`` below), which the
    ``cross_tokenizer`` term's span likelihood needs. ``task`` is ``causal_lm``; no captures.
``settings``
    free-form description (the teacher's config section, the build command's options); ``classes``, when
    given (a list of class names in the order of the logits), is compared with the run's other teachers.
``captures`` (optional)
    named teacher internals stored per example (hidden states, attention maps), their dtype and the
    teacher's module outline: see :mod:`ktransfer.store.captures`.
``shards``
    one entry per *finished* shard: ``{"name", "first", "count", "sha256", "bytes"}``. A shard not
    listed is not finished; the store is complete when the shards cover every example.

Tensors of a ``topk`` shard (P = number of target positions of the shard's examples, in example
order; an example's positions are the positions where it has a target, in order: for a causal LM,
position t predicts token t+1 and counts where ``labels[t+1] != -100``; for seq2seq where
``labels[t] != -100``)::

    offsets   int64 (count + 1,)   example i of the shard owns rows offsets[i]:offsets[i+1]
    ids       uint16 (P, k) when vocab_size <= 65536, else int32
    logprobs  float32 | float16 (P, k), log-probabilities (<= 0), -inf allowed
    tail      float32 (P,), log(1 - sum exp(logprobs)) (-inf when the top-k holds all the mass)

A ``teacher_tokens`` store adds::

    next_logprobs  float32 | float16 (P,), log-probability (temperature 1) of the token that follows,
                   teacher_input_ids[t+1], whether or not it is in the top-k (float16 with ``fit``)

With ``values: "fit"`` a shard holds ``offsets``, ``ids`` sorted from the most probable token down,
``tail`` as float16 and, instead of ``logprobs``::

    coefficients  float16 (P, fit_degree + 1), Legendre coefficients of the log-probability as a
                  function of x(r) = 2 log(1 + r) / log(k) - 1 at rank r = 0..k-1, fitted by least
                  squares weighted by sqrt(p); tokens of probability 0 (-inf) cannot be encoded

and the reader decodes the log-probabilities as the polynomial's values at the k ranks, shifted by
one constant per position so that their mass is exactly ``1 - exp(tail)`` (:mod:`ktransfer.store.fit`).
At k = 64 that is 128 bytes of ids, 2 of tail and 2 (degree + 1) of coefficients per position
(144 at degree 6, the default, against 260 with float16 and 388 with float32 values).

Tensors of a ``logits`` shard: ``logits`` float32 | float16 (count, num_classes).

A store with ``captures`` also holds ``captures.<n>.values`` / ``offsets`` / ``shapes`` in every
shard (:mod:`ktransfer.store.captures`).

:class:`StoreWriter` writes this layout (shards atomically, each with its SHA-256 in the manifest), so
a script holding a served teacher's top-k log-probabilities or a scikit-learn model's class
probabilities can write a store without running ktransfer's build. :class:`TeacherStore` reads it
and verifies every shard's checksum before use.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from ktransfer.io import atomic_path, file_digest, write_json_atomic
from ktransfer.sparse_divergences import SparseTeacher, default_mass_tolerance, narrow_topk
import ktransfer.store.captures as cap
from ktransfer.store.fit import DEFAULT_DEGREE, check_degree, decode_logprobs, fit_logprobs, rank_basis

FORMAT = "ktransfer-teacher-outputs"
VERSION = 1
FIT_VERSION = 2  # a store with values "fit": readers of version 1 cannot decode it
TEACHER_TOKENS_VERSION = 3  # a store on the teacher's own tokens: earlier readers would take its rows for the student's
VERSIONS = (VERSION, FIT_VERSION, TEACHER_TOKENS_VERSION)
MANIFEST_NAME = "manifest.json"
KINDS = ("topk", "logits")
VALUE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
FIT = "fit"
VALUE_ENCODINGS = (*VALUE_DTYPES, FIT)
KEY_NAMES = ("teacher", "data", "tokenizer")
TEACHER_KEY_NAMES = ("teacher_tokenizer", "teacher_tokenization")  # the keys of a teacher_tokens store
TEACHER_TOKEN_KEYS = ("teacher_input_ids", "teacher_labels", "teacher_token_offsets")
StoreKind = Literal["topk", "logits"]


class StoreError(ValueError):
    """A store that is damaged, incomplete, or does not belong to the run reading it."""


def shard_name(number: int) -> str:
    """The file name of shard `number`."""
    return f"shard-{number:05d}.safetensors"


def examples_digest(dataset: Any) -> str:
    """SHA-256 of every example of `dataset` (dict rows of tensors), in order: the store's data key.

    It covers what the teacher saw and what the student learns on (token ids, labels, pixels), so an
    edited file, another tokenizer or another split gives another digest, whatever the paths.
    """
    h = hashlib.sha256()
    h.update(str(len(dataset)).encode())
    for i in range(len(dataset)):
        row = dataset[i]
        for key in sorted(row):
            t = torch.as_tensor(row[key]).detach().cpu().contiguous()
            h.update(f"{key}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def teacher_tokens_digest(dataset: Any) -> str:
    """SHA-256 of the teacher's tokenization of every example (its ids, labels and character offsets), in order.

    The key ``teacher_tokenization`` of a store on the teacher's tokens: another teacher tokenizer or other
    texts give another digest, so a run can name that as what differs.
    """
    h = hashlib.sha256()
    h.update(str(len(dataset)).encode())
    for i in range(len(dataset)):
        row = dataset[i]
        for key in TEACHER_TOKEN_KEYS:
            if key not in row:
                raise ValueError(f"example {i} has no '{key}': a store on the teacher's tokens needs a dataset with "
                                 "teacher_tokenizer")
            t = torch.as_tensor(row[key]).detach().cpu().to(torch.int64).contiguous()
            h.update(f"{key}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).numpy().tobytes())
    return h.hexdigest()


def _ids_dtype(vocab_size: int) -> torch.dtype:
    return torch.uint16 if vocab_size <= 65536 else torch.int32


class StoreWriter:
    """Writes a store folder example by example: `add(index, ...)`, then `close()`.

    Sequences (``kind="topk"``): ``add(i, ids=(P_i, k), logprobs=(P_i, k), tail=(P_i,))`` with ``tail``
    optional (derived from the log-probabilities when left out); with ``values="fit"`` each position is
    sorted by log-probability and fitted with a polynomial of degree ``fit_degree``. Classification (``kind="logits"``):
    ``add(i, logits=(num_classes,))``. A shard is written (atomically, then listed in the manifest
    with its SHA-256) as soon as all its examples are added, so a killed build keeps its finished
    shards: opening the same folder again with the same header resumes, and `missing()` lists the
    examples still to compute. Opening it with another header (teacher, data, k, ...) is refused,
    naming what differs. With `captures` (``{"values", "items", "outline"}``, see
    :mod:`ktransfer.store.captures`) every ``add`` also takes ``captures={key: tensor}``, one per item.
    With `teacher_tokenizer` and `teacher_tokenization` (the keys of a store on the teacher's own tokens,
    see the module docstring) every ``add`` / ``add_rows`` also takes ``next_logprobs`` (P_i,).
    """

    def __init__(
        self, directory: str | Path, *, kind: StoreKind, task: str, examples: int,
        teacher: str, data: str, tokenizer: str | None = None, k: int | None = None,
        vocab_size: int | None = None, num_classes: int | None = None, values: str = "float32",
        fit_degree: int = DEFAULT_DEGREE, shard_size: int = 1024, settings: dict[str, Any] | None = None,
        captures: dict[str, Any] | None = None, teacher_tokenizer: str | None = None,
        teacher_tokenization: str | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if values not in VALUE_ENCODINGS:
            raise ValueError(f"values must be one of {', '.join(VALUE_ENCODINGS)}, got {values!r}")
        if isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
            raise ValueError(f"examples must be a positive int, got {examples!r}")
        if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
            raise ValueError(f"shard_size must be a positive int, got {shard_size!r}")
        if kind == "topk":
            if not (isinstance(k, int) and isinstance(vocab_size, int) and 1 <= k <= vocab_size):
                raise ValueError(f"a topk store needs ints 1 <= k <= vocab_size, got k={k!r}, vocab_size={vocab_size!r}")
        elif not (isinstance(num_classes, int) and num_classes >= 1):
            raise ValueError(f"a logits store needs num_classes >= 1, got {num_classes!r}")
        if values == FIT:
            if kind != "topk":
                raise ValueError("values 'fit' encodes top-k log-probabilities; a logits store takes float32 or float16")
            check_degree(fit_degree, k)  # type: ignore[arg-type]
        own_tokens = teacher_tokenizer is not None or teacher_tokenization is not None
        if own_tokens:
            if teacher_tokenizer is None or teacher_tokenization is None:
                raise ValueError("a store on the teacher's own tokens needs both teacher_tokenizer (its vocabulary "
                                 "digest) and teacher_tokenization (teacher_tokens_digest of the training examples)")
            if kind != "topk" or task != "causal_lm" or captures is not None:
                raise ValueError("a store on the teacher's own tokens holds top-k outputs of a causal LM without "
                                 f"captures; got kind {kind!r}, task {task!r}"
                                 + (", captures" if captures is not None else ""))
        self.directory = Path(directory)
        version = TEACHER_TOKENS_VERSION if own_tokens else FIT_VERSION if values == FIT else VERSION
        self.header: dict[str, Any] = {
            "format": FORMAT, "version": version, "kind": kind, "task": task, "examples": examples,
            "shard_size": shard_size, "values": values,
            "keys": {"teacher": str(teacher), "data": str(data), "tokenizer": tokenizer,
                     **({"teacher_tokenizer": str(teacher_tokenizer), "teacher_tokenization": str(teacher_tokenization)}
                        if own_tokens else {})},
            **({"k": k, "vocab_size": vocab_size} if kind == "topk" else {"num_classes": num_classes}),
            **({"fit_degree": fit_degree} if values == FIT else {}),
            **({"teacher_tokens": True} if own_tokens else {}),
        }
        self.teacher_tokens = own_tokens
        self.capture_items: list[cap.CaptureItem] = []
        if captures is not None:
            if captures.get("values") not in cap.CAPTURE_VALUE_DTYPES:
                raise ValueError(f"captures.values must be one of {', '.join(cap.CAPTURE_VALUE_DTYPES)}, "
                                 f"got {captures.get('values')!r}")
            self.capture_items = [i if isinstance(i, cap.CaptureItem) else cap.CaptureItem(**i)
                                  for i in captures.get("items", [])]
            if not self.capture_items:
                raise ValueError("captures: no items; leave captures out for a store of outputs only")
            self.header["captures"] = {"values": captures["values"],
                                       "items": [i.as_dict() for i in self.capture_items],
                                       "outline": captures.get("outline") or {}}
        self.settings = dict(settings or {})
        self.shards: dict[int, dict[str, Any]] = {}
        self._pending: dict[int, dict[int, dict[str, Tensor]]] = {}
        self._resume()

    # ------------------------------------------------------------------ resuming
    def _resume(self) -> None:
        path = self.directory / MANIFEST_NAME
        if not path.is_file():
            self._write_manifest()
            return
        old = _read_json(path)
        differs = [key for key in self.header if key != "keys" and old.get(key) != self.header[key]]
        differs += [f"keys.{key}" for key in (*KEY_NAMES, *TEACHER_KEY_NAMES)
                    if old.get("keys", {}).get(key) != self.header["keys"].get(key)]
        if differs:
            detail = "; ".join(f"{d}: store {_lookup(old, d)!r}, now {_lookup(self.header, d)!r}" for d in differs)
            raise StoreError(f"{self.directory} holds a store made from something else ({detail}); "
                             "write to another folder or delete this one")
        for entry in old.get("shards", []):
            shard = self.directory / entry["name"]
            if shard.is_file() and file_digest(shard) == entry["sha256"]:
                self.shards[int(entry["first"]) // self.header["shard_size"]] = entry
        self._write_manifest()

    def missing(self) -> list[int]:
        """Indices of the examples no finished shard holds yet (in order)."""
        size, n = self.header["shard_size"], self.header["examples"]
        out: list[int] = []
        for number in range(math.ceil(n / size)):
            if number not in self.shards:
                added = self._pending.get(number, {})
                out.extend(i for i in range(number * size, min(n, (number + 1) * size)) if i not in added)
        return out

    # ------------------------------------------------------------------ adding
    def add(self, index: int, *, ids: Tensor | None = None, logprobs: Tensor | None = None,
            tail: Tensor | None = None, logits: Tensor | None = None,
            captures: dict[str, Tensor] | None = None, next_logprobs: Tensor | None = None) -> None:
        """Add example `index`; its shard is written once all of the shard's examples are in."""
        if self._finished(index):
            return
        entry = self._entry(f"example {index}", ids, logprobs, tail, logits, next_logprobs)
        entry.update(self._captures(index, captures))
        self._put(index, entry)

    def add_rows(self, indices: list[int], counts: list[int], *, ids: Tensor, logprobs: Tensor,
                 tail: Tensor | None = None, captures: list[dict[str, Tensor]] | None = None,
                 next_logprobs: Tensor | None = None) -> None:
        """Add several examples of a topk store at once: ``counts[i]`` rows of ``ids`` / ``logprobs`` /
        ``tail`` (and ``next_logprobs`` in a store on the teacher's tokens), in order, for example
        ``indices[i]``, e.g. a batch's target positions; ``captures[i]`` its stored teacher internals, in a
        store that holds captures.

        The rows are checked together (one check instead of one per example); an error still names
        the example it is in.
        """
        if self.header["kind"] != "topk":
            raise ValueError("add_rows adds top-k rows; a logits store takes add(index, logits=...)")
        if len(indices) != len(counts) or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in counts):
            raise ValueError(f"add_rows needs one count >= 0 per index, got {len(indices)} indices and counts {counts!r}")
        ids = torch.as_tensor(ids)
        rows = int(ids.shape[0]) if ids.dim() else -1
        if sum(counts) != rows:
            raise ValueError(f"add_rows: the counts add up to {sum(counts)} rows, but ids has {rows}")
        wanted = [not self._finished(index) for index in indices]
        if not any(wanted):
            return
        try:
            checked = self._entry(f"examples {indices[0]}..{indices[-1]}", ids, logprobs, tail, None, next_logprobs)
        except ValueError:
            start = 0
            for index, count in zip(indices, counts, strict=True):  # name the example the error is in
                rows = slice(start, start + count)
                self._entry(f"example {index}", ids[rows], logprobs[rows], None if tail is None else tail[rows], None,
                            None if next_logprobs is None else torch.as_tensor(next_logprobs)[rows])
                start += count
            raise
        start = 0
        if captures is not None and len(captures) != len(indices):
            raise ValueError(f"add_rows: {len(captures)} captures for {len(indices)} examples")
        for i, (index, count, want) in enumerate(zip(indices, counts, wanted, strict=True)):
            if want:
                entry = {key: value[start:start + count] for key, value in checked.items()}
                entry.update(self._captures(index, captures[i] if captures is not None else None))
                self._put(index, entry)
            start += count

    def _finished(self, index: int) -> bool:
        """Whether example `index` (checked) is in a shard an earlier build finished."""
        n = self.header["examples"]
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
            raise ValueError(f"example index must be an int in [0, {n}), got {index!r}")
        return index // self.header["shard_size"] in self.shards

    def _put(self, index: int, entry: dict[str, Tensor]) -> None:
        n, size = self.header["examples"], self.header["shard_size"]
        number = index // size
        self._pending.setdefault(number, {})[index] = entry
        if len(self._pending[number]) == min(size, n - number * size):
            self._write_shard(number)

    def _entry(self, where: str, ids: Tensor | None, logprobs: Tensor | None, tail: Tensor | None,
               logits: Tensor | None, next_logprobs: Tensor | None = None) -> dict[str, Tensor]:
        fit = self.header["values"] == FIT
        values = torch.float32 if fit else VALUE_DTYPES[self.header["values"]]
        if (next_logprobs is not None) != self.teacher_tokens:
            wanted = ("a store on the teacher's own tokens takes next_logprobs (the teacher's log-probability of its "
                      "next token) with every row" if self.teacher_tokens else
                      "next_logprobs belong to a store on the teacher's own tokens (StoreWriter(..., "
                      "teacher_tokenizer=..., teacher_tokenization=...))")
            raise ValueError(f"{where}: {wanted}")
        if self.header["kind"] == "logits":
            if logits is None or ids is not None or logprobs is not None:
                raise ValueError(f"{where}: a logits store takes add(index, logits=...) only")
            logits = torch.as_tensor(logits).detach().cpu()
            if logits.shape != (self.header["num_classes"],) or not logits.is_floating_point():
                raise ValueError(f"{where}: logits must be floating point of shape "
                                 f"({self.header['num_classes']},), got {tuple(logits.shape)} {logits.dtype}")
            if not bool(torch.isfinite(logits).all()):
                raise ValueError(f"{where}: logits must be finite")
            return {"logits": logits.to(values)}
        if ids is None or logprobs is None or logits is not None:
            raise ValueError(f"{where}: a topk store takes add(index, ids=..., logprobs=..., tail=...)")
        ids = torch.as_tensor(ids).detach().cpu()
        logprobs = torch.as_tensor(logprobs).detach().cpu()
        k, vocab = self.header["k"], self.header["vocab_size"]
        if ids.dim() != 2 or ids.shape[1] != k or logprobs.shape != ids.shape:
            raise ValueError(f"{where}: ids and logprobs must both have shape (positions, k={k}), got "
                             f"{tuple(ids.shape)} and {tuple(logprobs.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise ValueError(f"{where}: token ids must lie in [0, {vocab}), got {int(ids.min())}..{int(ids.max())}")
        logprobs = logprobs.to(values)
        # the check and the tail use what will be stored, so the reader sees a valid distribution
        try:
            if tail is None:
                teacher = SparseTeacher.from_topk(ids.long(), logprobs.float(),
                                                  mass_tolerance=default_mass_tolerance(values))
            else:
                teacher = SparseTeacher(ids.long(), logprobs.float(), torch.as_tensor(tail).detach().cpu().float(),
                                        mass_tolerance=default_mass_tolerance(values))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from e
        extra = {} if next_logprobs is None else {
            "next_logprobs": self._next_logprobs(where, next_logprobs, ids.shape[0], torch.float16 if fit else values)}
        if fit:  # ranks from the most probable token down, then the polynomial's coefficients
            order = logprobs.argsort(dim=-1, descending=True, stable=True)
            try:
                coefficients = fit_logprobs(logprobs.gather(-1, order), self.header["fit_degree"])
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from e
            return {"ids": ids.gather(-1, order).to(torch.int64).to(_ids_dtype(vocab)), "coefficients": coefficients,
                    "tail": teacher.tail_logprob.to(torch.float16), **extra}
        return {"ids": ids.to(torch.int64).to(_ids_dtype(vocab)), "logprobs": logprobs,
                "tail": teacher.tail_logprob.float(), **extra}

    @staticmethod
    def _next_logprobs(where: str, given: Tensor, rows: int, dtype: torch.dtype) -> Tensor:
        """The next-token log-probabilities of `rows` positions, checked (one per row, <= 0, no NaN), as `dtype`."""
        values = torch.as_tensor(given).detach().cpu()
        if values.shape != (rows,) or not values.is_floating_point():
            raise ValueError(f"{where}: next_logprobs must be floating point of shape ({rows},) (one per row), got "
                             f"{tuple(values.shape)} {values.dtype}")
        values = values.to(dtype)
        bad = torch.isnan(values) | (values.float() > default_mass_tolerance(dtype))
        if bool(bad.any()):
            row = int(bad.nonzero()[0])
            raise ValueError(f"{where}: next_logprobs at row {row} is {float(values[row])!r}: log-probabilities must "
                             "be <= 0 and not NaN (-inf is probability 0)")
        return values.clamp(max=0.0)

    def _captures(self, index: int, captures: dict[str, Tensor] | None) -> dict[str, Tensor]:
        wanted = [i.key for i in self.capture_items]
        given = sorted(captures or {})
        if sorted(wanted) != given:
            raise ValueError(f"example {index}: captures must hold exactly {sorted(wanted)}, got {given}")
        values = self.header["captures"]["values"] if wanted else "float32"
        return {f"capture:{k}": cap.check_value(torch.as_tensor(captures[k]).detach().cpu(), values,  # type: ignore[index]
                                                f"example {index}, capture '{k}'") for k in wanted}

    def _write_shard(self, number: int) -> None:
        from safetensors.torch import save_file

        entries = self._pending.pop(number)
        first = number * self.header["shard_size"]
        rows = [entries[i] for i in range(first, first + len(entries))]
        if self.header["kind"] == "logits":
            tensors = {"logits": torch.stack([r["logits"] for r in rows])}
        else:
            counts = torch.tensor([0] + [r["ids"].shape[0] for r in rows], dtype=torch.int64)
            tensors = {"offsets": counts.cumsum(0),
                       **{key: torch.cat([r[key] for r in rows]) for key in rows[0] if not key.startswith("capture:")}}
        if self.capture_items:
            tensors.update(cap.pack(self.capture_items, [{k[len("capture:"):]: v for k, v in r.items()
                                                          if k.startswith("capture:")} for r in rows]))
        name = shard_name(number)
        path = self.directory / name
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        self.shards[number] = {"name": name, "first": first, "count": len(rows), "sha256": file_digest(path),
                               "bytes": path.stat().st_size}
        self._write_manifest()

    def _write_manifest(self) -> None:
        shards = [self.shards[n] for n in sorted(self.shards)]
        write_json_atomic(self.directory / MANIFEST_NAME, {**self.header, "settings": self.settings, "shards": shards})

    def close(self) -> None:
        """Finish: every example must have been added (a partial store stays resumable, but this is an error)."""
        missing = self.missing()
        if missing:
            raise StoreError(f"{self.directory}: {len(missing)} example(s) were never added (first: {missing[:5]}); "
                             "the finished shards are kept, add the rest and close again")


def _lookup(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        data = data.get(part) if isinstance(data, dict) else None  # type: ignore[assignment]
    return data


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise StoreError(f"{path}: unreadable store manifest ({e})") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise StoreError(f"{path}: not a teacher output store (format is not {FORMAT!r})")
    if data.get("version") not in VERSIONS:
        raise StoreError(f"{path}: store version {data.get('version')!r}; this ktransfer reads versions "
                         f"{', '.join(map(str, VERSIONS))}")
    return data


class TeacherStore:
    """A finished store, read for training: `open(directory)` verifies it, `topk(indices)` / `logits(indices)` read it."""

    def __init__(self, directory: Path, manifest: dict[str, Any]) -> None:
        self.directory = directory
        self.manifest = manifest
        self._by_number = {int(s["first"]) // manifest["shard_size"]: s for s in manifest["shards"]}
        self._loaded: dict[int, dict[str, Tensor]] = {}
        self._basis: Tensor | None = None
        if manifest.get("values") not in VALUE_ENCODINGS:
            raise StoreError(f"{directory}: unknown value encoding {manifest.get('values')!r} in the manifest; "
                             f"this ktransfer reads {', '.join(VALUE_ENCODINGS)}")
        if manifest["values"] == FIT:
            try:
                degree = check_degree(manifest.get("fit_degree"), int(manifest["k"]))
            except ValueError as e:
                raise StoreError(f"{directory}: manifest of a 'fit' store: {e}") from e
            self._basis = rank_basis(int(manifest["k"]), degree)
        self._values: dict[int, Any] = {}  # per shard: an open (memory-mapped) file the captures' values are sliced from
        self._read_k: int | None = None  # `narrowed`: the top-k read, below the stored k

    @classmethod
    def open(cls, directory: str | Path, *, verify: bool = True) -> TeacherStore:
        """Read the manifest; refuse an incomplete store, and (with `verify`) any shard failing its checksum."""
        directory = Path(directory)
        path = directory / MANIFEST_NAME
        if not path.is_file():
            raise StoreError(f"{directory}: no {MANIFEST_NAME}; not a teacher output store "
                             "(build one with `ktransfer teacher-outputs build CONFIG --out DIR`)")
        store = cls(directory, _read_json(path))
        missing = store.missing_examples()
        if missing:
            raise StoreError(f"{directory}: the store is incomplete: {len(missing)} of {store.examples} examples have no "
                             f"finished shard (first: {missing[:5]}); run the build again to finish it")
        if verify:
            store.verify()
        return store

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def k(self) -> int:
        """The top-k that `topk` reads: the stored k, or fewer (`narrowed`)."""
        if self.kind != "topk":
            raise StoreError(f"{self.directory} holds class logits (kind logits), not top-k outputs")
        return self._read_k if self._read_k is not None else int(self.manifest["k"])

    def narrowed(self, k: int | None, where: str = "k") -> TeacherStore:
        """This store read at top-`k` (None: as stored): each position's k largest entries, the others folded into
        its tail (`ktransfer.sparse_divergences.narrow_topk`), so that one store built at a large k serves the
        smaller ones without another teacher pass. Returns the store itself."""
        if k is None:
            self._read_k = None
            return self
        if self.kind != "topk":
            raise StoreError(f"{where}: the store at {self.directory} holds all class logits (kind logits); reading "
                             "a top-k applies to stores of top-k outputs")
        stored = int(self.manifest["k"])
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= stored:
            raise StoreError(f"{where}: the store at {self.directory} holds the top {stored} per position, so it can "
                             f"be read at k from 1 to {stored}; got {k!r} (a larger k needs a store built with it)")
        self._read_k = None if k == stored else k
        return self

    @property
    def examples(self) -> int:
        return int(self.manifest["examples"])

    @property
    def keys(self) -> dict[str, Any]:
        return dict(self.manifest["keys"])

    def missing_examples(self) -> list[int]:
        """Examples no shard of the manifest holds."""
        size, n = self.manifest["shard_size"], self.examples
        return [i for i in range(n) if i // size not in self._by_number]

    def verify(self) -> None:
        """Every shard present with its checksum; a damaged or missing shard is refused by name."""
        for entry in self.manifest["shards"]:
            path = self.directory / entry["name"]
            if not path.is_file():
                raise StoreError(f"{path}: shard missing from the store (the manifest lists it); rebuild the store")
            if file_digest(path) != entry["sha256"]:
                raise StoreError(f"{path}: shard damaged (its SHA-256 differs from the manifest's); "
                                 "delete it and run the build again, which recomputes only that shard")

    def _shard(self, number: int) -> dict[str, Tensor]:
        if number not in self._loaded:
            entry = self._by_number[number]
            try:
                self._loaded[number] = self._load(number)
            except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
                raise StoreError(f"{self.directory / entry['name']}: unreadable shard ({e})") from e
        return self._loaded[number]

    def _load(self, number: int) -> dict[str, Tensor]:
        """A shard's tensors, but its captures' values (the bulk of a store with attention maps) stay on disk,
        memory-mapped, and are read per example (`capture`)."""
        from safetensors import safe_open

        handle = safe_open(str(self.directory / self._by_number[number]["name"]), framework="pt")
        self._values[number] = handle
        return {k: handle.get_tensor(k) for k in handle.keys() if not cap.is_values_key(k)}

    def _locate(self, index: int) -> tuple[dict[str, Tensor], int]:
        if not 0 <= index < self.examples:
            raise StoreError(f"{self.directory}: example {index} is not in the store, which holds examples "
                             f"0..{self.examples - 1}; the run's data differs from the store's")
        number = index // self.manifest["shard_size"]
        return self._shard(number), index - number * self.manifest["shard_size"]

    def logits(self, indices: list[int]) -> Tensor:
        """Class logits (len(indices), num_classes), float32."""
        if self.kind != "logits":
            raise StoreError(f"{self.directory} holds top-k outputs (kind topk), not class logits")
        rows = []
        for i in indices:
            shard, j = self._locate(int(i))
            rows.append(shard["logits"][j])
        return torch.stack(rows).float()

    @property
    def teacher_tokens(self) -> bool:
        """Whether the rows are the teacher's target positions on its own tokens (a ``teacher_tokens`` store)."""
        return bool(self.manifest.get("teacher_tokens", False))

    def next_logprobs(self, index: int) -> Tensor:
        """Example `index`'s teacher log-probabilities of its next tokens, float32 (P,): a ``teacher_tokens`` store."""
        if not self.teacher_tokens:
            raise StoreError(f"{self.directory} holds outputs on the student's tokens, without the teacher's "
                             "next-token log-probabilities (a store on the teacher's own tokens has them)")
        shard, j = self._locate(int(index))
        start, stop = int(shard["offsets"][j]), int(shard["offsets"][j + 1])
        return shard["next_logprobs"][start:stop].float()

    def topk(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        """Example `index`'s (ids int64 (P, k), logprobs float32 (P, k), tail float32 (P,)), at the read k (`k`)."""
        if self.kind != "topk":
            raise StoreError(f"{self.directory} holds class logits (kind logits), not top-k outputs")
        shard, j = self._locate(int(index))
        start, stop = int(shard["offsets"][j]), int(shard["offsets"][j + 1])
        tail = shard["tail"][start:stop].float()
        if self._basis is not None:
            logprobs = decode_logprobs(shard["coefficients"][start:stop], tail, self._basis)
        else:
            logprobs = shard["logprobs"][start:stop].float()
        ids = shard["ids"][start:stop].to(torch.int64)
        if self._read_k is not None:
            return narrow_topk(ids, logprobs, tail, self._read_k)
        return ids, logprobs, tail

    @property
    def capture_items(self) -> list[cap.CaptureItem]:
        """The named teacher internals the store holds per example (none for a store of outputs only)."""
        return [cap.CaptureItem(**i) for i in self.manifest.get("captures", {}).get("items", [])]

    def capture(self, index: int, n: int) -> Tensor:
        """Example `index`'s capture `n` (its position in `capture_items`), float32."""
        shard, j = self._locate(int(index))
        return cap.unpack(shard, n, j, self._values[int(index) // self.manifest["shard_size"]])

    def mass_tolerance(self) -> float:
        """How far a stored position's total mass may be from 1: rounding of the stored value dtype.

        A ``fit`` store's decoded positions are normalised in float32."""
        return default_mass_tolerance(VALUE_DTYPES.get(self.manifest["values"], torch.float32))

    @property
    def positions(self) -> int:
        """Target positions stored over all examples (top-k); for class logits, the examples."""
        if self.kind == "logits":
            return self.examples
        return sum(int(self._shard(n)["offsets"][-1]) for n in self._by_number)

    @property
    def bytes(self) -> int:
        """The store's size: its shards' bytes, as the manifest records them (the manifest itself aside)."""
        return sum(int(s["bytes"]) for s in self.manifest["shards"])

    def bytes_per_position(self) -> float:
        """Shard bytes per stored position (top-k) or per example (logits)."""
        return self.bytes / max(self.positions, 1)
