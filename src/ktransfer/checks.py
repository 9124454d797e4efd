"""Every check of a run config that needs no training (`preflight`): sources exist, the data fits the
task, and the models are built and run once on a few examples, with outputs that fit the labels
and each other, and with the layers the knowledge terms capture.
"""

from __future__ import annotations

import glob

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ktransfer.building import build_model, build_teachers, load_data
from ktransfer.capture import Capture, parse_spec
from ktransfer.config import RunConfig
from ktransfer.cross_tokenizer import CROSS_TOKENIZER_TERMS, AlignmentError, align_offsets
from ktransfer.data import DATASETS, DataSplits
from ktransfer.data.base import describe_examples, example_warnings
from ktransfer.engine.batches import split_batch
from ktransfer.knowledge import ResponseTerm
from ktransfer.models import MODELS, count_parameters
from ktransfer.registry import ConfigError
from ktransfer.sequence.vocab import check_data_tokenizer
from ktransfer.store import StoreError, TeacherStore, open_for_run
from ktransfer.store.outline import outline_module
from ktransfer.tasks import TASK_SPECS, ForwardResult, Task
from ktransfer.knowledge.teachers import teacher_names_of
from ktransfer.terms import bind_terms, build_terms


@dataclass
class Preflight:
    """What `preflight` found: the loaded data (reusable by the run), one line per check passed, and
    warnings that do not stop a run (e.g. much of the training data dropped)."""

    data: DataSplits
    checked: list[str]
    warnings: list[str] = field(default_factory=list)


def check_sources(cfg: RunConfig) -> None:
    """The runs, weights and other files a config reads from exist (a teacher run must have its `which` weights)."""
    data = dict(cfg.data)
    for key in DATASETS.path_keys(str(data.get("name"))):
        if isinstance(data.get(key), str) and data[key] and not Path(data[key]).exists() \
                and not glob.has_magic(data[key]):
            raise FileNotFoundError(f"data.{key}: not found: {data[key]}")
    roles = [("teacher" if cfg.teachers is None else f"teachers.{name}", spec)
             for name, spec in cfg.teacher_specs.items()]
    for role, spec in roles:
        if "store" in spec and not Path(spec["store"]).is_dir():
            raise FileNotFoundError(f"{role}.store: no teacher output store at {spec['store']}; build it with `ktransfer "
                                    "teacher-outputs build CONFIG --out DIR` (CONFIG naming the teacher model)")
    for role, spec in [*((r, s) for r, s in roles if "store" not in s), ("student", cfg.student)]:
        for key in MODELS.path_keys(str(spec.get("builder"))):
            if spec.get(key) and not Path(spec[key]).exists():
                raise FileNotFoundError(f"{role}.{key}: not found: {spec[key]}")
        if "from_run" in spec:
            run_dir = Path(spec["from_run"])
            which = spec.get("which", "best")
            if not (run_dir / "config.yaml").is_file():
                raise FileNotFoundError(
                    f"{role}.from_run: no run found at {run_dir} (missing config.yaml); train it first "
                    f"(ktransfer run CONFIG --run-dir {run_dir}) or correct the path"
                )
            if not (run_dir / which / "model.safetensors").is_file():
                raise FileNotFoundError(
                    f"{role}.from_run: the run at {run_dir} has no '{which}' weights yet (missing "
                    f"{which}/model.safetensors): finish it with `ktransfer resume {run_dir}`"
                )
        elif spec.get("weights") and not Path(spec["weights"]).is_file():
            raise FileNotFoundError(f"{role}.weights: weights file not found: {spec['weights']}")


def _describe_data(cfg: RunConfig, info: dict[str, Any]) -> str:
    """e.g. "dataset 'digits' (image data; batch keys: inputs)", for messages."""
    facts = [f"{info['kind']} data"] if "kind" in info else []
    if "input_keys" in info:
        facts.append(f"batch keys: {', '.join(info['input_keys'])}")
    return f"dataset '{info.get('name', cfg.data['name'])}'" + (f" ({'; '.join(facts)})" if facts else "")


def check_data_fits_task(cfg: RunConfig, info: dict[str, Any]) -> None:
    """The dataset provides what the task needs (`TaskSpec` against the dataset's `info`); unknown facts pass."""
    spec = TASK_SPECS[cfg.task]
    kind = info.get("kind")
    if kind is not None and kind not in spec.data_kinds:
        fitting = [name for name, other in TASK_SPECS.items() if kind in other.data_kinds]
        keys = f" (batch keys: {', '.join(info['input_keys'])})" if "input_keys" in info else ""
        raise ConfigError(
            f"task: '{cfg.task}' trains on {' or '.join(spec.data_kinds)} data, but dataset "
            f"'{info.get('name', cfg.data['name'])}' holds {kind} data{keys}; tasks for {kind} data: "
            f"{', '.join(fitting) or '(none)'}"
        )
    keys = info.get("input_keys")
    missing = [key for key in spec.input_keys if keys is not None and key not in keys]
    if missing:
        raise ConfigError(f"task: '{cfg.task}' needs the batch key {missing[0]}, which {_describe_data(cfg, info)} lacks")


def _probe_batch(data: DataSplits, size: int = 2) -> dict[str, Any]:
    """A couple of validation examples (training ones if there is no validation data, or when only the training
    data is tokenised for the teacher too) as one batch."""
    own = data.info.get("teacher_tokenizer") is not None
    source = data.val if len(data.val) and not own else data.train  # type: ignore[arg-type]
    n = min(size, len(source))  # type: ignore[arg-type]
    if n == 0:
        raise ConfigError("data: the dataset has no examples")
    return data.collate_fn([source[i] for i in range(n)])


@torch.no_grad()
def _probe(model: nn.Module, batch: dict[str, Any], task: Task, role: str, describe: str) -> ForwardResult:
    """One forward pass in eval mode; a failure becomes a message naming the model and the data."""
    was_training = model.training
    model.eval()
    try:
        return task.forward(model, batch)
    except Exception as e:  # whatever the model raises: report it with what was fed to it
        raise ConfigError(
            f"{role}: does not run on {describe} for task '{task.kind}': one forward pass on "
            f"{len(next(iter(batch.values())))} examples failed with {type(e).__name__}: {e}"
        ) from e
    finally:
        model.train(was_training)


def _classes_hint(spec: dict[str, Any], role: str, num_classes: int) -> str:
    if "from_run" in spec:
        return f"use a {role} run trained on this dataset"
    if "num_classes" in MODELS.keys(str(spec["builder"])):
        return f"set {role}.num_classes: {num_classes}, or leave it out to take the dataset's"
    return f"give the {role} {num_classes} outputs"


def check_models(cfg: RunConfig, data: DataSplits, student: nn.Module,
                 teacher: nn.Module | dict[str, nn.Module] | None, store: TeacherStore | None = None) -> list[str]:
    """The built models run on a few examples and their outputs fit the labels and each other; nothing trains.

    `teacher` is the run's teacher, or with a `teachers` section its live teachers by name (`check_teachers`).
    `store`: the run's teacher output store, when it has no teacher model; the terms then resolve their
    teacher layers against the store's outline of the teacher. Returns one line per model saying what was checked.
    """
    if cfg.teachers is not None:
        assert not isinstance(teacher, nn.Module)
        return check_teachers(cfg, data, student, dict(teacher or {}))
    assert not isinstance(teacher, dict)
    task, info = Task(cfg.task), data.info
    if task.kind in ("causal_lm", "seq2seq"):
        check_data_tokenizer(info, teacher)  # different tokenizers: an error naming both, before anything runs
        check_teacher_run_tokenizer(cfg.teacher_model, info)
    describe = _describe_data(cfg, info)
    student_batch, teacher_batch = split_batch(_probe_batch(data))
    outputs = {"student": _probe(student, student_batch, task, "student", describe)}
    if teacher is not None and cfg.teacher_model is not None:
        outputs["teacher"] = _probe(teacher, teacher_batch, task, "teacher", describe)
    sizes = {role: out.logits.shape[-1] for role, out in outputs.items()}
    num_classes = info.get("num_classes")
    if task.kind == "classification" and isinstance(num_classes, int):
        for role, size in sizes.items():
            spec = cfg.student if role == "student" else cfg.teacher_model
            assert spec is not None
            if size < num_classes:
                raise ConfigError(
                    f"{role}: predicts {size} classes, but {describe} has {num_classes} (labels 0 to "
                    f"{num_classes - 1}); {_classes_hint(spec, role, num_classes)}"
                )
    if "teacher" in outputs and sizes["teacher"] != sizes["student"]:
        compared = [(i, term) for i, term in enumerate(build_terms(cfg.knowledge))  # response, on_policy, reinforce
                    if (isinstance(term, ResponseTerm) or (term.requires_teacher and hasattr(term, "vocab_size")))
                    and term.vocab_size is None and not isinstance(term, CROSS_TOKENIZER_TERMS)]
        if compared and task.kind == "classification":
            raise ConfigError(
                f"teacher predicts {sizes['teacher']} classes and the student {sizes['student']}: knowledge"
                f"[{compared[0][0]}] ({compared[0][1].name}) compares their outputs, so both must predict the same "
                "classes; build them for the same dataset"
            )
        if compared:
            raise ConfigError(
                f"teacher has vocabulary {sizes['teacher']} and the student {sizes['student']}: if they share a "
                f"tokenizer and one embedding matrix is padded, set knowledge[{compared[0][0]}].vocab_size to the "
                "real vocabulary size"
            )
    if any(isinstance(t, CROSS_TOKENIZER_TERMS) for t in build_terms(cfg.knowledge)):
        checked_cross = check_cross_tokenizer(cfg, data)
    else:
        checked_cross = []
    unit = "classes" if task.kind == "classification" else "vocabulary"
    lines = [f"{role}: {count_parameters(model):,} parameters, {sizes[role]} {unit}, ran on {describe}"
             for role, model in (("student", student), ("teacher", teacher)) if role in sizes and model is not None]
    return lines + checked_cross + check_term_layers(cfg, student, teacher, student_batch, teacher_batch, task,
                                                     store=store)


def store_outline(store: TeacherStore | None) -> nn.Module | None:
    """The module tree of a store's teacher (when the store holds teacher internals), for the terms' layer checks."""
    outline = store.manifest.get("captures", {}).get("outline") if store is not None else None
    return outline_module(outline) if outline else None


def check_cross_tokenizer(cfg: RunConfig, data: DataSplits, blocks: int = 256) -> list[str]:
    """The cross-tokenizer terms can work: their vocabulary mapping builds from the two tokenizers (span), and
    the two tokenizations of the first `blocks` training blocks align into spans. One line each saying how much."""
    terms = [(i, t) for i, t in enumerate(build_terms(cfg.knowledge)) if isinstance(t, CROSS_TOKENIZER_TERMS)]
    bind_terms([t for _, t in terms], data.info)
    lines: list[str] = []
    for i, term in terms:
        if getattr(term, "method", None) == "span":
            try:
                mapping = term.mapping()
            except (OSError, ValueError) as e:
                raise ConfigError(f"knowledge[{i}] ({term.name}): cannot map the two vocabularies: {e}") from e
            lines.append(f"{term.name}: vocabulary mapping of {mapping.shared_texts:,} token texts both tokenizers "
                         "hold, " + ("their ends of sequence, " if mapping.end_of_sequence else "")
                         + "plus one rest bucket" + (" (the same tokenizer: identity)" if mapping.identity else ""))
    n = min(blocks, len(data.train))  # type: ignore[arg-type]
    student = teacher = s_aligned = t_aligned = spans = 0
    for k in range(n):
        row = data.train[k]
        if "token_offsets" not in row or "teacher_token_offsets" not in row:
            raise ConfigError(f"knowledge[{terms[0][0]}] ({terms[0][1].name}): the training examples hold no character "
                              "offsets of the two tokenizations (token_offsets, teacher_token_offsets); set "
                              "data.teacher_tokenizer")
        try:
            a = align_offsets(row["token_offsets"].tolist(), row["teacher_token_offsets"].tolist())
        except AlignmentError as e:
            raise ConfigError(f"data: training example {k}: the character offsets of its two tokenizations cannot be "
                              f"aligned: {e}") from e
        s_count = int((row["token_offsets"][:, 0] >= 0).sum())
        t_count = int((row["teacher_token_offsets"][:, 0] >= 0).sum())
        student, teacher, spans = student + s_count, teacher + t_count, spans + len(a.spans)
        s_aligned, t_aligned = s_aligned + s_count - a.student_unaligned, t_aligned + t_count - a.teacher_unaligned
    if spans == 0:
        raise ConfigError(f"data: no span of the first {n} training blocks aligns the student's tokens with the "
                          "teacher's (no character position where both tokenizations have a boundary): the "
                          "character offsets of one tokenizer cannot be recovered; check that both tokenizers "
                          "give offsets into the text (fast tokenizers with a tokenizer.json)")
    lines.append(f"cross-tokenizer alignment on {n} training blocks: {spans:,} spans hold "
                 f"{s_aligned / max(student, 1):.1%} of the student's tokens and {t_aligned / max(teacher, 1):.1%} "
                 "of the teacher's (the rest: spaces one tokenizer covers alone, special tokens)")
    return lines


def check_teacher_store(cfg: RunConfig, data: DataSplits) -> TeacherStore:
    """The run's teacher output store, verified and matched with the run's task, data, tokenizer (and teacher)."""
    assert cfg.teacher is not None and cfg.teacher_store is not None
    try:
        return open_for_run(cfg.teacher_store, task=cfg.task, train=data.train, info=data.info,
                            teacher_sha256=cfg.teacher.get("sha256"), k=cfg.teacher.get("k"))
    except StoreError as e:
        raise ConfigError(str(e)) from e


def check_teacher_run_tokenizer(spec: dict[str, Any] | None, info: dict[str, Any], where: str = "teacher") -> None:
    """A teacher from a run read tokens of the same tokenizer as this data: its `summary.json` records the
    vocabulary's digest, and another digest means its ids stand for other strings."""
    if not spec or "from_run" not in spec or not info.get("tokenizer_sha256"):
        return
    summary = Path(spec["from_run"]) / "summary.json"
    try:
        recorded = json.loads(summary.read_text(encoding="utf-8")).get("tokenizer_sha256")
    except (OSError, ValueError):
        recorded = None
    if info.get("teacher_tokenizer") is not None:  # the teacher reads its own tokens: compare with those
        info = {**info, "tokenizer": info["teacher_tokenizer"], "tokenizer_sha256": info.get("teacher_tokenizer_sha256")}
    if recorded and recorded != info["tokenizer_sha256"]:
        raise ConfigError(
            f"{where}.from_run: the run at {spec['from_run']} was trained on the tokens of another tokenizer "
            f"(vocabulary sha256 {recorded[:12]}) than this data's ({info['tokenizer_sha256'][:12]}, "
            f"{info.get('tokenizer')}): its token ids stand for other strings. Train the teacher again on this data")


def check_teachers(cfg: RunConfig, data: DataSplits, student: nn.Module, live: dict[str, nn.Module]) -> list[str]:
    """A `teachers` section: the student and every live teacher run on a few examples; every teacher (live or
    stored) predicts the student's classes, in the same order where teachers record them (a run's summary,
    a store's `settings.classes`); each term's layers exist in the teacher it reads."""
    task, info = Task(cfg.task), data.info
    assert cfg.teachers is not None
    describe = _describe_data(cfg, info)
    if task.kind in ("causal_lm", "seq2seq"):
        for name, model in live.items():
            check_data_tokenizer(info, model)
            check_teacher_run_tokenizer(cfg.teachers[name], info, f"teachers.{name}")
    student_batch, teacher_batch = split_batch(_probe_batch(data))
    student_size = _probe(student, student_batch, task, "student", describe).logits.shape[-1]
    sizes: dict[str, int] = {}
    for name, model in live.items():
        sizes[name] = _probe(model, teacher_batch, task, f"teachers.{name}", describe).logits.shape[-1]
    stores = {name: check_named_store(cfg, name, data) for name, spec in cfg.teachers.items() if "store" in spec}
    for name, store in stores.items():
        if store.kind == "logits":
            sizes[name] = int(store.manifest["num_classes"])
    unit = "classes" if task.kind == "classification" else "vocabulary"
    if task.kind == "classification":
        num_classes = info.get("num_classes")
        if isinstance(num_classes, int) and student_size < num_classes:
            raise ConfigError(f"student: predicts {student_size} classes, but {describe} has {num_classes} (labels 0 "
                              f"to {num_classes - 1}); {_classes_hint(cfg.student, 'student', num_classes)}")
        for name, size in sizes.items():
            if size != student_size:
                others = ", ".join(f"{n}: {v}" for n, v in sizes.items())
                raise ConfigError(f"teachers.{name}: predicts {size} classes and the student {student_size} (teachers: "
                                  f"{others}); every teacher must predict the same classes in the same order")
        check_class_orders(cfg, info, stores)
    elif len(set(sizes.values())) > 1 and any(len(teacher_names_of(t)) > 1 for t in cfg.arranged_terms()):
        raise ConfigError(f"teachers: their vocabularies differ ({', '.join(f'{n}: {v}' for n, v in sizes.items())}); "
                          "averaging or choosing between teachers needs one vocabulary")
    lines = [f"student: {count_parameters(student):,} parameters, {student_size} {unit}, ran on {describe}"]
    lines += [f"teachers.{name}: {count_parameters(model):,} parameters, {sizes[name]} {unit}, ran on {describe}"
              for name, model in live.items()]
    lines += [f"teachers.{name}: store {store.directory}, teacher {str(store.keys.get('teacher'))[:12]}, all "
              f"{store.examples} training examples, shards verified" for name, store in stores.items()]
    terms = cfg.arranged_terms()
    for name, model in live.items():
        reading = [t for t in terms if teacher_names_of(t) == (name,)]
        lines += check_term_layers(cfg, student, model, student_batch, teacher_batch, task, terms=reading,
                                   teacher_role=f"teachers.{name}")
    return lines


def teacher_classes(spec: dict[str, Any], store: TeacherStore | None) -> list[str] | None:
    """The class names, in order, that a teacher records: its run's `summary.json` `classes`, or its store's
    `settings.classes`; None where it records none."""
    found: Any = None
    if store is not None:
        found = (store.manifest.get("settings") or {}).get("classes")
    elif "from_run" in spec:
        try:
            found = json.loads((Path(spec["from_run"]) / "summary.json").read_text(encoding="utf-8")).get("classes")
        except (OSError, ValueError):
            found = None
    return [str(c) for c in found] if isinstance(found, list) else None


def class_difference(a: list[str], b: list[str]) -> str | None:
    """How two class lists differ (missing classes, or the first position where the order differs), or None."""
    if a == b:
        return None
    only_a, only_b = [c for c in a if c not in b], [c for c in b if c not in a]
    if only_a or only_b:
        return (f"classes {only_a} are only in the first and {only_b} only in the second" if only_a and only_b else
                f"classes {only_a or only_b} are only in the {'first' if only_a else 'second'}")
    i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    return f"the same classes in another order: position {i} is '{a[i]}' in the first, '{b[i]}' in the second"


def check_class_orders(cfg: RunConfig, info: dict[str, Any], stores: dict[str, TeacherStore]) -> None:
    """Teachers that record their class names agree with the data's classes and with each other, in order."""
    assert cfg.teachers is not None
    reference: tuple[str, list[str]] | None = None
    if isinstance(info.get("classes"), list):
        reference = ("the data", [str(c) for c in info["classes"]])
    for name, spec in cfg.teachers.items():
        classes = teacher_classes(spec, stores.get(name))
        if classes is None:
            continue
        if reference is None:
            reference = (f"teachers.{name}", classes)
            continue
        diff = class_difference(classes, reference[1])
        if diff:
            raise ConfigError(f"teachers.{name}: its classes {classes} differ from those of {reference[0]} "
                              f"{reference[1]}: {diff}; every teacher must predict the same classes in the same order")


def check_named_store(cfg: RunConfig, name: str, data: DataSplits) -> TeacherStore:
    """Teacher `name`'s output store, verified and matched with the run's task, data and tokenizer (and teacher)."""
    assert cfg.teachers is not None
    spec = cfg.teachers[name]
    try:
        return open_for_run(spec["store"], task=cfg.task, train=data.train, info=data.info,
                            teacher_sha256=spec.get("sha256"), where=f"teachers.{name}.store", k=spec.get("k"))
    except StoreError as e:
        raise ConfigError(str(e)) from e


def check_term_layers(cfg: RunConfig, student: nn.Module, teacher: nn.Module | None, student_batch: dict[str, Any],
                      teacher_batch: dict[str, Any], task: Task, store: TeacherStore | None = None, *,
                      terms: list[Any] | None = None, teacher_role: str = "teacher") -> list[str]:
    """The layers each knowledge term names exist in its model and run in one forward pass on a few examples.

    Terms resolve their layer names (`setup`) exactly as the engine does, then the modules they
    capture are hooked during one forward pass of each model; a name that is missing, or a module
    that the forward pass never calls, is a ConfigError naming the term and the layer. Training from a
    `store`, the teacher's layers are resolved against its outline and must be among its captures.
    """
    terms = build_terms(cfg.knowledge) if terms is None else terms
    teacher_outline = store_outline(store) if teacher is None and store is not None else None
    for i, term in enumerate(terms):
        setup = getattr(term, "setup", None)
        if callable(setup):
            if store is not None and teacher is None and teacher_outline is None and term.requires_teacher:
                raise ConfigError(f"knowledge[{i}] ({term.name}): reads the teacher's layers, which the store at "
                                  f"{store.directory} does not hold (it holds: none, a store of outputs only); build "
                                  "the store with the modules the term reads (--hidden / --attentions)")
            try:
                setup(student, teacher if teacher is not None else teacher_outline)
            except (ValueError, KeyError, AttributeError) as e:
                raise ConfigError(f"knowledge[{i}] ({term.name}): {e}") from e
    lines: list[str] = []
    if store is not None and teacher is None:
        held = {item.key for item in store.capture_items}
        for i, term in enumerate(terms):
            for spec in getattr(term, "teacher_modules", ()):
                if parse_spec(spec).key not in held:
                    raise ConfigError(f"knowledge[{i}] ({term.name}): reads the teacher's '{parse_spec(spec).key}', which "
                                      f"the store at {store.directory} does not hold (it holds: "
                                      f"{', '.join(sorted(held)) or 'none, a store of outputs only'}); build the store "
                                      "with this module (--hidden / --attentions)")
        if held and any(getattr(t, "teacher_modules", ()) for t in terms):
            lines.append(f"knowledge: the teacher internals the terms read are in the store ({', '.join(sorted(held))})")
    for role, model, batch in (("student", student, student_batch), ("teacher", teacher, teacher_batch)):
        wanted = {spec: i for i, t in enumerate(terms) for spec in getattr(t, f"{role}_modules", ())}
        if not wanted or model is None:
            continue
        for spec, i in wanted.items():
            try:
                Capture(model, [spec])
            except ValueError as e:
                raise ConfigError(f"knowledge[{i}] ({terms[i].name}): {role} layer '{spec}': {e}") from e
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), Capture(model, list(wanted), detach=True) as cap:
                task.forward(model, batch)
        finally:
            model.train(was_training)
        silent = [spec for spec in wanted if spec not in cap]
        if silent:
            i = wanted[silent[0]]
            raise ConfigError(f"knowledge[{i}] ({terms[i].name}): the {role}'s module '{silent[0]}' exists but was "
                              "not called in a forward pass, so it has nothing to capture")
        who = role if role == "student" else teacher_role
        lines.append(f"knowledge: the {who}'s {len(wanted)} captured module(s) exist and run "
                     f"({', '.join(sorted(wanted))})")
    return lines


def preflight(cfg: RunConfig, data: DataSplits | None = None) -> Preflight:
    """Every check that needs no training: sources exist, the data fits the task, and the models
    are built and run once on a few examples, with outputs that fit the labels and each other.

    `ktransfer check` and `ktransfer run` call it first, so a config that would fail after some
    steps fails at once with a ConfigError (or FileNotFoundError) naming the problem.
    """
    check_sources(cfg)
    data = data if data is not None else load_data(cfg)
    check_data_fits_task(cfg, data.info)
    store = check_teacher_store(cfg, data) if cfg.teacher_store is not None else None
    with torch.random.fork_rng(devices=[]):  # building models draws random numbers: leave the caller's RNG as it was
        teacher: Any = build_model(cfg.teacher_model, data.info, "teacher") if cfg.teacher_model is not None else None
        if cfg.teachers is not None:
            teacher = build_teachers(cfg, data.info)
        student = build_model(cfg.student, data.info, "student")
        checked = [f"data: {_describe_data(cfg, data.info)} fits task '{cfg.task}'",
                   *(f"data examples: {line}" for line in describe_examples(data.info)),
                   *check_models(cfg, data, student, teacher, store)]
    if store is not None:
        own = ", on the teacher's own tokens" if store.teacher_tokens else ""
        checked.append(f"teacher.store: {store.directory} holds the outputs of teacher "
                       f"{str(store.keys.get('teacher'))[:12]} for all {store.examples} training examples "
                       f"({store.kind}{', k=' + str(store.manifest['k']) if store.kind == 'topk' else ''}, "
                       f"{store.manifest['values']}{own}), shards verified")
    return Preflight(data=data, checked=checked, warnings=[*cfg.warnings(), *example_warnings(data.info)])
