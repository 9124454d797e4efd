"""The documentation site: every code block runs or is checked, the strict build passes, generated pages match the code.

Code blocks of docs/**/*.md and README.md:
- `python` blocks are executed, each in a scratch directory holding a copy of configs/;
- `bash` blocks: every `ktransfer` command is parsed by the CLI's own parser, every script it
  runs (`python path.py`) exists and knows each option given; in an unmarked block the config of
  `run`, `hops`, `check` and `modules` is checked with `ktransfer check` (a command followed by
  `|| ...` must fail), `list` runs, `data prepare NAME` must name a known preparer (CI prepares the
  data in .ci/run), and `python examples/...` lines are the ones tests/test_examples.py runs;
- `yaml` blocks load; a block introduced as `From `configs/X.yaml`` equals that file (full-line
  comments aside); a block holding a whole run or chain config is validated as one.
A block that cannot run in CI is preceded by `<!-- no-run: REASON -->`; its commands are still
parsed and its scripts and options must exist. Blocks whose data package is not prepared skip,
naming the command that prepares it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted(p for p in (ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
LANGUAGES = ("python", "bash", "yaml", "text")
MARKER = re.compile(r"<!--\s*no-run:(.*?)-->")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.S | re.M)
NOT_PREPARED = "is not prepared"


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page: where it is, its language and code, and its no-run reason if marked."""

    page: Path
    line: int
    language: str
    code: str
    no_run: str | None
    intro: str  # the paragraph just before the block (a marker aside)

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks_of(page: Path) -> list[Block]:
    """Every fenced block of a page, with the marker and paragraph that precede it."""
    text = page.read_text(encoding="utf-8")
    out = []
    for match in FENCE.finditer(text):
        before = text[:match.start()].rstrip("\n").split("\n")
        marker = MARKER.fullmatch(before[-1].strip()) if before else None
        if marker:
            before = before[:-1]
        paragraph: list[str] = []
        for line in reversed(before):
            if not line.strip():
                if paragraph:
                    break
                continue
            paragraph.insert(0, line)
        out.append(Block(page, text.count("\n", 0, match.start()) + 1, match.group(1), match.group(2),
                         marker.group(1).strip() if marker else None, " ".join(paragraph)))
    return out


BLOCKS = [b for page in PAGES for b in blocks_of(page)]


def of(language: str, runnable: bool | None = None) -> list[Block]:
    return [b for b in BLOCKS if b.language == language and (runnable is None or (b.no_run is None) == runnable)]


def ids(block: Block) -> str:
    return block.where


# ------------------------------------------------------------------------------------------- the blocks
def test_the_site_has_code_blocks_of_each_kind() -> None:
    assert len(of("python", runnable=True)) >= 10 and len(of("bash", runnable=True)) >= 8 and len(of("yaml")) >= 8
    assert of("bash", runnable=False), "the set-up commands at least are marked"


def test_every_block_names_a_known_language_and_every_marker_a_reason() -> None:
    bad = [f"{b.where}: language '{b.language}' (use one of {', '.join(LANGUAGES)})"
           for b in BLOCKS if b.language not in LANGUAGES]
    bad += [f"{b.where}: <!-- no-run: --> gives no reason" for b in BLOCKS if b.no_run == ""]
    for page in PAGES:  # a marker that is not right above a block marks nothing
        lines = page.read_text(encoding="utf-8").split("\n")
        for n, line in enumerate(lines):
            if "no-run:" in line and MARKER.fullmatch(line.strip()) and not lines[n + 1].startswith("```"):
                bad.append(f"{page.relative_to(ROOT)}:{n + 1}: a no-run marker not directly above a code block")
    assert not bad, "\n".join(bad)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch project: a copy of configs/ and a quickly trained runs/digits_teacher (what the digits configs read)."""
    from ktransfer.config import RunConfig
    from ktransfer.runner import run

    root = tmp_path_factory.mktemp("docs")
    shutil.copytree(ROOT / "configs", root / "configs")
    teacher = RunConfig.from_yaml(root / "configs" / "digits_teacher.yaml",
                                  ["train.max_steps=20", "train.eval_every=10", "train.checkpoint_every=0"])
    run(teacher, root / "runs" / "digits_teacher", progress=False)
    return root


@pytest.fixture()
def in_sandbox(sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(sandbox)
    saved = dict(os.environ)
    yield sandbox
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.parametrize("block", of("python", runnable=True), ids=ids)
def test_python_block_runs(block: Block, in_sandbox: Path) -> None:
    try:
        exec(compile(block.code, block.where, "exec"), {"__name__": "__docs__"})
    except FileNotFoundError as e:
        if NOT_PREPARED in str(e):
            pytest.skip(str(e))
        raise


# ------------------------------------------------------------------------------------------- bash
def commands(code: str) -> list[tuple[list[str], bool]]:
    """The block's commands as argument lists, each with whether it is expected to fail (`cmd || ...`)."""
    out = []
    for line in code.replace("\\\n", " ").split("\n"):
        words = shlex.split(line, comments=True)
        for part in " ".join(shlex.quote(w) if w not in ("&&", "||") else w for w in words).split(" && "):
            failing, _, _ = part.partition(" || ")
            argv = shlex.split(failing)
            while argv and re.fullmatch(r"\w+=\S*", argv[0]):  # leading VAR=value assignments
                argv = argv[1:]
            if argv:
                out.append((argv, " || " in part))
    return out


def ktransfer_args(argv: list[str]) -> list[str] | None:
    """The `ktransfer` arguments of a command that runs the CLI (directly, by `python -m` or a launcher)."""
    if argv[0] == "ktransfer":
        return argv[1:]
    if "-m" in argv and argv[0] in ("python", "python3", "torchrun", "accelerate"):
        i = argv.index("-m")
        if i + 1 < len(argv) and argv[i + 1] == "ktransfer.cli":
            return argv[i + 2:]
    return None


def script_problems(argv: list[str]) -> list[str]:
    """A `python path.py ...` command: the script exists and defines every option given."""
    script = ROOT / argv[1]
    if not script.is_file():
        return [f"{argv[1]}: no such script"]
    source = script.read_text(encoding="utf-8")
    if "from harness" in source or "import harness" in source:  # the harness's shared flags (--jobs, --seeds, ...)
        source += (ROOT / "benchmarks" / "harness" / "cli.py").read_text(encoding="utf-8")
    return [f"{argv[1]}: no option {w}" for w in argv[2:] if w.startswith("--") and f'"{w}"' not in source]


def cli_parses(args: list[str]) -> str | None:
    """None if the CLI's parser accepts the arguments, else why not."""
    from ktransfer.cli import _parser

    try:
        _parser().parse_args(args)
    except SystemExit:
        return f"ktransfer {shlex.join(args)}: the command line does not parse"
    return None


def config_problems(args: list[str]) -> list[str]:
    """A config a `ktransfer` command names loads with its `--set` overrides (keys and values; nothing is built)."""
    from ktransfer.config import RunConfig
    from ktransfer.hops.config import is_chain_file, load_chain_config
    from ktransfer.registry import ConfigError

    if args[0] in ("run", "check", "modules", "hops", "analyze") and len(args) > 1 and args[1].endswith(".yaml"):
        path, overrides = args[1], [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    elif args[:2] == ["data", "prepare"] and "--config" in args:
        path, overrides = args[args.index("--config") + 1], []
    else:
        return []
    if re.fullmatch(r"[A-Z_]+\.yaml", path):  # a placeholder such as CONFIG.yaml
        return []
    if not (ROOT / path).is_file():
        return [f"{path}: no such config"]
    try:
        if is_chain_file(ROOT / path):  # of fitted models or of runs
            load_chain_config(ROOT / path, overrides)
        else:
            RunConfig.from_yaml(ROOT / path, overrides)
    except (ConfigError, ValueError) as e:
        return [f"{path}: {e}"]
    return []


def static_problems(block: Block) -> list[str]:
    found = []
    for argv, _ in commands(block.code):
        args = ktransfer_args(argv)
        if args is not None:
            parse = cli_parses(args)
            found += [parse] if parse else config_problems(args)
        elif argv[0] in ("python", "python3") and len(argv) > 1 and argv[1].endswith(".py"):
            found += script_problems(argv)
    return [f"{block.where}: {p}" for p in found]


@pytest.mark.parametrize("block", of("bash"), ids=ids)
def test_bash_block_commands_parse_and_name_existing_scripts_options_and_configs(block: Block) -> None:
    problems = static_problems(block)
    assert not problems, "\n".join(problems)


def example_commands() -> set[str]:
    """The `python examples/...` command lines that tests/test_examples.py runs (the first block of docs/examples.md)."""
    first = next(b for b in blocks_of(ROOT / "docs" / "examples.md") if b.language == "bash")
    return {shlex.join(argv) for argv, _ in commands(first.code)}


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from ktransfer.cli import main

    code = main(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("block", of("bash", runnable=True), ids=ids)
def test_bash_block_runs_or_is_checked(block: Block, in_sandbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, must_fail in commands(block.code):
        where = f"{block.where}: {shlex.join(argv)}"
        args = ktransfer_args(argv)
        if args is None:
            if argv[:2] == ["python", argv[1]] and argv[1].startswith("examples/"):
                assert shlex.join(argv) in example_commands(), f"{where}: not among the commands tests/test_examples.py runs"
                continue
            pytest.fail(f"{where}: neither run nor checked in CI; mark the block <!-- no-run: REASON -->")
        command = args[0]
        if command in ("run", "hops", "check", "modules", "list"):
            checked = ["check", *args[1:]] if command in ("run", "hops") else list(args)
            checked = [a for a in checked if a not in ("--overwrite", "--no-progress")]
            if command in ("run", "hops"):  # check takes the config and --set overrides only
                keep, skip_next = [], False
                for a in checked:
                    if skip_next:
                        skip_next = False
                    elif a in ("--run-dir", "--stop-after", "--stop-after-hops"):
                        skip_next = True
                    else:
                        keep.append(a)
                checked = keep
            code, err = run_cli(checked, capsys)
            if code != 0 and NOT_PREPARED in err:
                pytest.skip(err.strip())
            assert (code != 0) == must_fail, f"{where}: exit code {code}\n{err[-2000:]}"
        elif command == "data":
            from ktransfer.config import RunConfig
            from ktransfer.data import find_preparer

            find_preparer(args[2])
            if "--config" in args:
                RunConfig.from_yaml(args[args.index("--config") + 1])
        else:  # demo, resume, eval, analyze: they need a trained run or take minutes; tests/test_cli.py runs them
            assert not must_fail, f"{where}: a failing {command} is not checked"


# ------------------------------------------------------------------------------------------- yaml
CONFIG_FILE = re.compile(r"From `(configs/[\w./-]+\.yaml)`")


def uncommented(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not line.lstrip().startswith("#"))


@pytest.mark.parametrize("block", of("yaml"), ids=ids)
def test_yaml_block_loads_and_whole_configs_are_valid(block: Block, in_sandbox: Path) -> None:
    from ktransfer.config import RunConfig
    from ktransfer.hops.config import CHAIN_MARKERS, ChainConfig
    from ktransfer.hops.run_config import RunChainConfig, is_run_chain

    data = yaml.safe_load(block.code)
    assert isinstance(data, dict), f"{block.where}: not a mapping"
    shown = CONFIG_FILE.search(block.intro)
    if shown:
        assert uncommented(block.code) == uncommented((ROOT / shown.group(1)).read_text(encoding="utf-8")), \
            f"{block.where}: the copy of {shown.group(1)} differs from the file"
    if is_run_chain(data):
        RunChainConfig.from_dict(data)
    elif any(k in data for k in CHAIN_MARKERS) and "teacher" in data:
        ChainConfig.from_dict(data)
    elif "student" in data:
        RunConfig.from_dict(data)


def test_config_files_shown_on_the_site_are_checked() -> None:
    shown = {m.group(1) for b in of("yaml") for m in [CONFIG_FILE.search(b.intro)] if m}
    assert {"configs/digits_distill.yaml", "configs/digits_select.yaml", "configs/hops/digits_greedy.yaml"} <= shown


def test_the_commands_the_checks_rely_on() -> None:
    """The splitter sees `&&`, `||`, comments, continuations and leading assignments as a shell does."""
    code = ("OMP_NUM_THREADS=1 ktransfer run a.yaml --set 'x=[1, 2]'  # note\n"
            "ktransfer data prepare x && ktransfer check b.yaml || echo failed\n"
            "python bench.py \\\n  --quick\n")
    assert commands(code) == [(["ktransfer", "run", "a.yaml", "--set", "x=[1, 2]"], False),
                              (["ktransfer", "data", "prepare", "x"], False),
                              (["ktransfer", "check", "b.yaml"], True),
                              (["python", "bench.py", "--quick"], False)]
    assert ktransfer_args(["torchrun", "--nproc_per_node", "2", "-m", "ktransfer.cli", "run", "c.yaml"]) == ["run", "c.yaml"]
    assert cli_parses(["run", "c.yaml", "--no-such-option"]) is not None
    assert script_problems(["python", "benchmarks/selection/bench.py", "--quick", "--no-such-option"]) == [
        "benchmarks/selection/bench.py: no option --no-such-option"]
    assert "unknown key" in config_problems(["run", "configs/digits_distill.yaml", "--set", "train.max_step=5"])[0]
    assert config_problems(["hops", "configs/hops/fixed_tree.yaml", "--set", "folds=5"]) == []
    assert config_problems(["run", "configs/nowhere.yaml"]) == ["configs/nowhere.yaml: no such config"]


# ------------------------------------------------------------------------------------------- the hook
def load_hook() -> Any:
    spec = importlib.util.spec_from_file_location("ktransfer_docs_hook", ROOT / "docs" / "hooks" / "ktransfer_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_configuration_reference_lists_every_registered_component_with_its_keys() -> None:
    from ktransfer.catalog import CATEGORIES
    from ktransfer.data import DATASETS
    from ktransfer.divergences import DIVERGENCES
    from ktransfer.hops.methods import TRANSFER_METHODS
    from ktransfer.terms import TERMS
    from ktransfer.models import MODELS
    from ktransfer.selection import SELECTORS

    hook = load_hook()
    expected = {"divergences": sorted(DIVERGENCES), "knowledge": TERMS.names(), "selectors": SELECTORS.names(),
                "builders": MODELS.names(), "datasets": DATASETS.names(), "methods": TRANSFER_METHODS.names()}
    assert set(CATEGORIES) <= set(hook.category_names())
    for category, names in expected.items():
        text = hook.reference(category)
        assert re.findall(r"^### `(\w+)`$", text, flags=re.M) == names, category
    for category in CATEGORIES.values():  # every key of every component, with its type and default
        text = hook.reference(category.name)
        for component in category.members():
            section = text.split(f"### `{component.name}`\n", 1)[1].split("\n### ", 1)[0]
            for p in component.params:
                row = next((r for r in section.splitlines() if r.startswith(f"| `{p.name}` |")), None)
                assert row is not None, f"{category.name}.{component.name}: no row for {p.name}"
                assert (f"`{p.type}`" if p.type else "") in row
                if not p.required and p.from_dataset is None:
                    assert f"`{p.default!r}`" in row or "section's defaults" in row, row
    jsd = hook.reference("divergences").split("### `jsd`", 1)[1]
    assert "M = beta * P + (1 - beta) * Q" in jsd and ":func:" not in jsd  # the full docstring, roles made plain


def test_the_section_reference_has_every_field_of_every_config_dataclass() -> None:
    from dataclasses import fields

    from ktransfer.hops.config import ChainConfig
    from ktransfer.sequence.targets import CONFIG_KEYS, GenerationConfig
    from ktransfer.train import OptimConfig, ScheduleConfig, TrainConfig

    text = load_hook().reference("sections")
    from ktransfer.hops.run_config import RunChainConfig, RunPlanConfig

    for cls in (OptimConfig, ScheduleConfig, TrainConfig, GenerationConfig, ChainConfig, RunChainConfig, RunPlanConfig):
        for f in fields(cls):
            assert f"| `{f.name}` |" in text, f"{cls.__name__}.{f.name}"
    targets = text.split("### targets\n", 1)[1].split("\n### ", 1)[0]
    assert re.findall(r"^\| `(\w+)` \|", targets, flags=re.M) == list(CONFIG_KEYS)
    assert "`Literal['max', 'min'] | None`" in text  # pipes of a type stay inside its code span
    assert "takes it from the metric" in text  # the comment written above TrainConfig.mode


def test_field_comments_are_the_lines_just_above_each_field() -> None:
    from dataclasses import dataclass as dc

    @dc
    class Example:
        plain: int = 0
        # first line
        # second line
        documented: int = 1

        # a comment not above a field
        def method(self) -> None:
            pass

    assert load_hook().field_comments(Example) == {"documented": "first line second line"}


def test_directives_include_committed_files_regions_and_figures(tmp_path: Path) -> None:
    hook = load_hook()
    table = hook.include("benchmarks/causal/README.md#table")
    assert table.startswith("Command:") and "table:start" not in table and "table:end" not in table
    assert hook.include("benchmarks/results/translation.md") == (
        ROOT / "benchmarks/results/translation.md").read_text(encoding="utf-8").strip("\n")
    assert hook.figure("benchmarks/multihop/results/multihop.png | gain", "benchmarks/multihop.md") == (
        "![gain](../repo/benchmarks/multihop/results/multihop.png)")
    page = "# t\n\ntext `<!-- include: nowhere.md -->` stays\n\n<!-- include: benchmarks/no_such.md -->\n"
    with pytest.raises(hook.DirectiveError, match=r"docs/x\.md:5: include: no file benchmarks/no_such\.md"):
        hook.expand(page, "x.md")
    with pytest.raises(hook.DirectiveError, match="has no region 'nothing'"):
        hook.include("benchmarks/causal/README.md#nothing")
    with pytest.raises(hook.DirectiveError, match="unknown reference 'nope'; valid: builders, cli"):
        hook.reference("nope")
    assert "`<!-- include: nowhere.md -->`" in hook.expand("a `<!-- include: nowhere.md -->` b\n", "x.md")


def test_every_page_is_in_the_navigation_and_the_benchmark_pages_include_their_result_files() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    listed: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, str):
            listed.append(node)
        elif isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)

    walk(config["nav"])
    pages = sorted(str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md") if "hooks" not in p.parts)
    assert sorted(listed) == pages
    included = "".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "docs" / "benchmarks").glob("*.md")))
    results = [str(p.relative_to(ROOT)) for p in (ROOT / "benchmarks").rglob("*.md")
               if "results" in p.parts and "runs" not in p.parts]
    missing = [r for r in results if f"<!-- include: {r} -->" not in included]
    assert not missing, f"committed result tables no benchmark page includes: {missing}"


def test_the_short_multihop_table_agrees_with_the_committed_full_table() -> None:
    """Each `1-hop / multi − 1-hop` cell of the summary is the full table's row for that setting, student and method."""
    full: dict[tuple[str, str, str], tuple[str, ...]] = {}
    for line in (ROOT / "benchmarks/multihop/results/multihop.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 10 and cells[0] not in ("setting", "---"):
            full[(cells[0], cells[1], cells[2])] = tuple(cells[3:])
    page = (ROOT / "docs" / "benchmarks" / "multihop.md").read_text(encoding="utf-8")
    rows = [line for line in page.splitlines() if re.match(r"\| \w+ \(\d+\) \|", line)]
    assert len(rows) == 8
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        setting = cells[0].split(" ")[0]
        for method, cell in zip(("kd", "confidence", "profweight", "sratio"), cells[4:], strict=True):
            teacher, simple, one_hop, _, diff, _, _ = full[(setting, cells[1], method)]
            assert cells[2] == teacher.split(" ")[0] and cells[3] == simple.split(" ")[0], row
            assert cell == f"{one_hop.split(' ')[0]} / {diff.replace(' ± ', '±').replace(' *', '*')}", (row, method)


# ------------------------------------------------------------------------------------------- the build
HAS_MKDOCS = importlib.util.find_spec("mkdocs") is not None and importlib.util.find_spec("mkdocstrings") is not None
needs_mkdocs = pytest.mark.skipif(not HAS_MKDOCS, reason='needs mkdocs-material and mkdocstrings: pip install -e ".[docs]"')


def build(root: Path, out: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)], cwd=root,
                          capture_output=True, text=True, env=env, timeout=300)


@needs_mkdocs
def test_the_site_builds_strictly_with_generated_pages(tmp_path: Path) -> None:
    done = build(ROOT, tmp_path / "site")
    assert done.returncode == 0, done.stderr[-3000:]
    reference = (tmp_path / "site" / "reference" / "configuration" / "index.html").read_text(encoding="utf-8")
    assert 'id="actor_critic"' in reference and 'id="profweight"' in reference and "checkpoint_minutes" in reference
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    assert "Distiller" in api and "forward_kl" in api
    selection = (tmp_path / "site" / "benchmarks" / "selection" / "index.html").read_text(encoding="utf-8")
    assert "ac_soft_multi" in selection and "../../repo/benchmarks/selection/results/weights.png" in selection
    assert (tmp_path / "site" / "repo" / "benchmarks" / "selection" / "results" / "weights.png").is_file()


@needs_mkdocs
def test_a_broken_link_or_anchor_or_a_missing_included_file_fails_the_strict_build(tmp_path: Path) -> None:
    for n, (added, expected) in enumerate((
            ("[a page](no-such-page.md) and [an anchor](getting-started.md#no-such-section)",
             ["no-such-page.md", "no-such-section"]),
            ("<!-- include: benchmarks/results/no_such.md -->", ["no file benchmarks/results/no_such.md"]))):
        copy = tmp_path / f"project{n}"
        shutil.copytree(ROOT / "docs", copy / "docs")
        shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
        for shared in ("src", "benchmarks"):
            (copy / shared).symlink_to(ROOT / shared)
        page = copy / "docs" / "development.md"
        page.write_text(page.read_text(encoding="utf-8") + f"\n\n{added}\n", encoding="utf-8")
        done = build(copy, tmp_path / f"site{n}")
        assert done.returncode != 0 and all(e in done.stderr for e in expected), (added, done.stderr[-2000:])
