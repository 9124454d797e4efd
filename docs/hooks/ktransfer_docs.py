"""MkDocs hook: pages that are generated from the code and the committed result files.

A page names what it needs in an HTML comment, which the hook replaces before the page is rendered:

- `<!-- reference: NAME -->`: generated from the code, so that it cannot drift from it: `sections`
  (every config section described by a dataclass), a `ktransfer list` category (`divergences`,
  `knowledge`, `selectors`, `builders`, `datasets`, ...), `methods` and `model_kinds` (chains), or `cli`
  (every command's help);
- `<!-- include: PATH -->`: a committed file (repository-relative), e.g. a benchmark's table;
  `PATH#NAME` takes only the lines between `<!-- NAME:start -->` and `<!-- NAME:end -->`;
- `<!-- figure: PATH | ALT -->`: a committed image, served from the repository under `repo/PATH`.

A directive that names a missing file, region or section stops the build with the page and line.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FIGURE_ROOT = "repo"  # site folder that serves committed images under their repository path
DIRECTIVE = re.compile(r"^<!--\s*(reference|include|figure):\s*(.*?)\s*-->[ \t]*$", flags=re.M)  # alone on its line


class DirectiveError(ValueError):
    """A page's directive names something that does not exist."""


# ------------------------------------------------------------------------------------- reference
# Where each registry lives, for the full docstrings of its members ("module:attribute").
REGISTRIES: dict[str, str] = {
    "divergences": "ktransfer.divergences:DIVERGENCES",
    "knowledge": "ktransfer.terms:TERMS",
    "selectors": "ktransfer.selection:SELECTORS",
    "builders": "ktransfer.models:MODELS",
    "datasets": "ktransfer.data:DATASETS",
}

# Config sections described by a dataclass: (title, YAML key, "module:class", keys to show or None for all).
SECTIONS: list[tuple[str, str, str, tuple[str, ...] | None]] = [
    ("Run config", "(top level)", "ktransfer.config:RunConfig", None),
    ("optim", "optim", "ktransfer.train:OptimConfig", None),
    ("schedule", "schedule", "ktransfer.train:ScheduleConfig", None),
    ("train", "train", "ktransfer.train:TrainConfig", None),
    ("combine", "combine", "ktransfer.knowledge:CombineConfig", None),
    ("targets", "targets", "ktransfer.sequence.targets:TargetsStage", "ktransfer.sequence.targets:CONFIG_KEYS"),
    ("targets.generation", "targets: {generation: ...}", "ktransfer.sequence.targets:GenerationConfig", None),
    ("Chain config", "(top level of a chain)", "ktransfer.hops.config:ChainConfig", None),
    ("plan", "plan (chains)", "ktransfer.hops.planner:PlanConfig", None),
    ("train (chains)", "train (chains)", "ktransfer.hops.fitting:TorchFitConfig", None),
    ("Chain of runs", "(top level of a chain whose hops are runs)", "ktransfer.hops.run_config:RunChainConfig", None),
    ("plan (chains of runs)", "plan (chains of runs)", "ktransfer.hops.run_config:RunPlanConfig", None),
]


def _load(spec: str) -> Any:
    module, _, attribute = spec.partition(":")
    return getattr(importlib.import_module(module), attribute)


def _cell(text: str) -> str:
    """Text as a table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _code(text: str) -> str:
    """Text as a code span in a table cell (pipes inside a code span do not split the cell)."""
    text = " ".join(str(text).split()).replace("`", "'")
    return f"`{text}`" if text else ""


def field_comments(cls: type) -> dict[str, str]:
    """The comment lines written just above each field of a dataclass (its documentation in the source)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    pending: list[str] = []
    for line in source.splitlines():
        comment = re.match(r"    #\s?(.*)", line)
        field = re.match(r"    (\w+)\s*:", line)
        if comment:
            pending.append(comment.group(1).strip())
        elif field and pending:
            out[field.group(1)] = " ".join(pending)
            pending = []
        else:
            pending = []
    return out


def _docstring(obj: Any) -> str:
    """The docstring as markdown: Sphinx roles (`:func:`x``) become plain code spans."""
    doc = inspect.getdoc(getattr(obj, "func", obj)) or ""
    return re.sub(r":(?:func|class|meth|mod|attr|data):`", "`", doc)


def _params_table(params: Iterable[Any], notes: dict[str, str] | None = None) -> list[str]:
    from ktransfer.catalog import Param

    rows = list(params)
    if not rows:
        return ["*(no parameters)*", ""]
    lines = ["| key | type | default | note |", "|---|---|---|---|"]
    for p in rows:
        assert isinstance(p, Param)
        if p.from_dataset is not None:
            default = f"the dataset's `{p.from_dataset}`"
        elif p.required:
            default = "**required**"
        elif dataclasses.is_dataclass(p.default):
            default = f"the `{p.name}` section's defaults"
        else:
            default = _code(repr(p.default))
        lines.append(f"| `{p.name}` | {_code(p.type)} | {default} | {_cell((notes or {}).get(p.name, ''))} |")
    return lines + [""]


def _categories() -> list[tuple[str, str, Callable[[], list[Any]]]]:
    """Every `ktransfer list` category (components of run configs, and chains' methods and model kinds)."""
    from ktransfer.catalog import CATEGORIES

    return [(c.name, c.where, c.members) for c in CATEGORIES.values()]


def category_names() -> list[str]:
    """The names `<!-- reference: NAME -->` accepts for components."""
    return [name for name, _, _ in _categories()]


def component_reference(category: str) -> str:
    """Every component of a category: name, full docstring, and its keys with types and defaults."""
    found = {name: (where, members) for name, where, members in _categories()}
    if category not in found:
        raise DirectiveError(f"unknown reference '{category}'; valid: {', '.join(sorted([*found, 'sections', 'cli']))}")
    where, members = found[category]
    registry = _load(REGISTRIES[category]) if category in REGISTRIES else None
    lines = [f"Named in a config as `{where}`.", ""]
    for component in members():
        lines += [f"### `{component.name}`", ""]
        factory = None
        if registry is not None:
            factory = registry.get(component.name) if hasattr(registry, "names") else registry[component.name]
        doc = _docstring(factory) if factory is not None else component.summary
        lines += [doc, ""] if doc else []
        lines += _params_table(component.params)
    return "\n".join(lines)


def section_reference(cls: type, keys: tuple[str, ...] | None = None) -> str:
    """A config dataclass: its docstring and one row per key (type, default, the comment above the field)."""
    from ktransfer.catalog import describe

    component = describe(cls.__name__, cls, keep=None if keys is None else (lambda p: p.name in keys))
    doc = _docstring(cls)
    return "\n".join(([doc, ""] if doc else []) + _params_table(component.params, field_comments(cls)))


def sections_reference() -> str:
    """Every config section described by a dataclass, each under its own heading."""
    lines = []
    for title, key, spec, keys in SECTIONS:
        lines += [f"### {title}", "", f"YAML: `{key}`; Python: `{spec.replace(':', '.')}`.", ""]
        lines += [section_reference(_load(spec), tuple(_load(keys)) if keys else None), ""]
    return "\n".join(lines)


def cli_reference() -> str:
    """Each `ktransfer` subcommand's help, as its own parser prints it."""
    import argparse
    import os

    from ktransfer.cli import _parser

    parser = _parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    lines: list[str] = []
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps help text to the terminal width
    try:
        for name, sub in actions[0].choices.items():
            lines += [f"### `ktransfer {name}`", "", "```text", sub.format_help().rstrip(), "```", ""]
            for data_name, data_sub in _subcommands(sub).items():
                lines += [f"#### `ktransfer {name} {data_name}`", "", "```text", data_sub.format_help().rstrip(),
                          "```", ""]
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous
    return "\n".join(lines)


def _subcommands(parser: Any) -> dict[str, Any]:
    import argparse

    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def reference(name: str) -> str:
    """The markdown for `<!-- reference: NAME -->`."""
    if name == "sections":
        return sections_reference()
    if name == "cli":
        return cli_reference()
    return component_reference(name)


# ------------------------------------------------------------------------------------- includes
def include(target: str) -> str:
    """A committed file's text, or the region between its `<!-- NAME:start -->` and `<!-- NAME:end -->`."""
    path_text, _, region = target.partition("#")
    path = ROOT / path_text
    if not path.is_file():
        raise DirectiveError(f"include: no file {path_text} in the repository")
    text = path.read_text(encoding="utf-8")
    if region:
        match = re.search(rf"<!--\s*{re.escape(region)}:start\s*-->\n(.*?)<!--\s*{re.escape(region)}:end\s*-->",
                          text, flags=re.S)
        if match is None:
            raise DirectiveError(f"include: {path_text} has no region '{region}' (<!-- {region}:start --> ... "
                                 f"<!-- {region}:end -->)")
        text = match.group(1)
    return text.strip("\n")


def figure(target: str, page_uri: str) -> str:
    """A markdown image of a committed file, linked relative to the page (`page_uri`: its path in docs/)."""
    path_text, _, alt = (part.strip() for part in target.partition("|"))
    if not (ROOT / path_text).is_file():
        raise DirectiveError(f"figure: no file {path_text} in the repository")
    depth = page_uri.count("/")
    return f"![{alt or path_text}]({'../' * depth}{FIGURE_ROOT}/{path_text})"


def figures() -> list[str]:
    """Committed images under benchmarks/ (run folders aside), which pages may show."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "benchmarks").rglob("*.png")
                  if "runs" not in p.relative_to(ROOT).parts)


def expand(markdown: str, page_uri: str) -> str:
    """Every directive of a page replaced by what it names; errors name the page and line."""

    def one(match: re.Match[str]) -> str:
        kind, arg = match.group(1), match.group(2)
        try:
            if kind == "reference":
                return reference(arg)
            if kind == "include":
                return include(arg)
            return figure(arg, page_uri)
        except DirectiveError as e:
            line = markdown.count("\n", 0, match.start()) + 1
            raise DirectiveError(f"docs/{page_uri}:{line}: {e}") from None

    return DIRECTIVE.sub(one, markdown)


# ------------------------------------------------------------------------------------- MkDocs events
def on_files(files: Any, config: Any) -> Any:
    """Serve the committed benchmark images under `repo/`, so pages link them without copies in docs/."""
    from mkdocs.structure.files import File

    for rel in figures():
        files.append(File.generated(config, f"{FIGURE_ROOT}/{rel}", abs_src_path=str(ROOT / rel)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    from mkdocs.exceptions import PluginError

    try:
        return expand(markdown, page.file.src_uri)
    except DirectiveError as e:
        raise PluginError(str(e)) from None

