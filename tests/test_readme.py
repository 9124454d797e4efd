"""The README is the site's short front page: at most ~200 lines, the two set-up commands, links that resolve.

Its code blocks run with every page's in tests/test_docs.py (README.md is one of the pages checked there)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
INSTALL = 'python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 -e ".[dev]" && ktransfer demo'
TESTS = ". .venv/bin/activate && python -m pytest -q"


def test_the_readme_is_a_short_front_page() -> None:
    assert len(README.splitlines()) <= 200
    assert README.startswith("# ktransfer\n")


def test_the_two_set_up_commands_are_the_same_in_the_readme_and_the_docs() -> None:
    for page in (README, (ROOT / "docs" / "index.md").read_text(encoding="utf-8"),
                 (ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8")):
        assert f"```bash\n{INSTALL}\n```" in page and f"```bash\n{TESTS}\n```" in page
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "python -m pytest -q" in ci and "pip install --quiet torch==2.13.0 -e" in ci


def test_every_link_of_the_readme_resolves_to_a_file_of_the_repository() -> None:
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    assert sum(link.startswith("docs/") for link in links) >= 20
    missing = [link for link in links if not link.startswith("http") and not (ROOT / link).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"


def test_the_readme_links_every_guide_data_page_and_benchmark_page() -> None:
    pages = [p.relative_to(ROOT).as_posix() for sub in ("guides", "data", "benchmarks")
             for p in sorted((ROOT / "docs" / sub).glob("*.md")) if p.name != "index.md"]
    unlinked = [p for p in pages if f"]({p})" not in README]
    assert not unlinked, f"pages the README does not link: {unlinked}"
