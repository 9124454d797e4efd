"""Reading users' data files strictly: bad bytes and odd cells are errors naming the file, line and column.

A file that is not valid UTF-8 would otherwise load with U+FFFD in place of the bad bytes and
train on them without a word; a cell holding `nan` or nothing would reach the model as a NaN or
an empty class. Lines are counted from 1 as a text editor shows them (a CSV's header is line 1).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

# Cells that spreadsheets and pandas write for a missing value.
MISSING_MARKERS = frozenset({"nan", "na", "n/a", "null", "none", "#n/a"})


def read_utf8(file: Path) -> str:
    """The text of `file` (a leading byte-order mark removed); invalid UTF-8 is a ValueError naming
    the file, line and column of the first bad byte, and the bytes there."""
    data = file.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = len(data[data.rfind(b"\n", 0, e.start) + 1:e.start].decode("utf-8")) + 1
        bad = data[e.start:e.end].hex(" ")
        raise ValueError(f"{file} line {line}, column {column}: not valid UTF-8 (bytes {bad}: {e.reason}); "
                         "save the file as UTF-8") from None
    return text[1:] if text.startswith("\ufeff") else text


def read_csv_rows(file: Path, delimiter: str = ",", quoting: int = csv.QUOTE_MINIMAL,
                  ) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """(columns, [(line, row), ...]) of a CSV / TSV with a header row; `line` is where the row starts.

    An empty file, or one with a header and no rows, is a ValueError saying so; so is a row with
    more cells than the header has columns.
    """
    text = read_utf8(file)
    if not text.strip():
        raise ValueError(f"{file}: the file is empty; expected a header row naming the columns, then one row per "
                         "example")
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    columns = list(reader.fieldnames or [])
    rows: list[tuple[int, dict[str, Any]]] = []
    start = reader.line_num + 1
    for row in reader:
        if None in row:
            raise ValueError(f"{file} line {start}: {len(columns) + len(row[None])} cells but the header has "
                             f"{len(columns)} columns ({', '.join(columns)})")
        rows.append((start, row))
        start = reader.line_num + 1
    if not rows:
        raise ValueError(f"{file}: no rows after the header (line 1: {', '.join(columns)})")
    return columns, rows


def cell_problem(value: Any) -> str | None:
    """What is wrong with a cell meant to hold a value (None when nothing is): missing, blank, a
    missing-value marker such as `nan`, or a float NaN / infinity (JSON)."""
    if value is None:
        return "no value (the cell is missing)"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value!r} is not a finite number"
    text = str(value).strip()
    if not text:
        return "an empty cell"
    if text.lower() in MISSING_MARKERS:
        return f"'{text}', a missing-value marker"
    return None


def read_json_rows(file: Path, allow_empty: bool = False) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    """([(line, object), ...], every key any object has, in first-seen order) of a JSON-lines file.

    Blank lines are skipped; a file that is not UTF-8, a line that is not JSON or not an object, and
    a file without any object (unless `allow_empty`) are errors naming the file and line.
    """
    rows: list[tuple[int, dict[str, Any]]] = []
    for n, line in enumerate(read_utf8(file).split("\n"), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{file} line {n}: not JSON: {e}") from None
            if not isinstance(row, dict):
                raise ValueError(f"{file} line {n}: expected an object, got {type(row).__name__}")
            rows.append((n, row))
    if not rows and not allow_empty:
        raise ValueError(f"{file}: the file is empty (no JSON object on any line); expected one object per line")
    return rows, list(dict.fromkeys(k for _, r in rows for k in r))


def read_json_lines(file: Path, allow_empty: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
    """The objects of a JSON-lines file and every key any of them has (see `read_json_rows`)."""
    rows, keys = read_json_rows(file, allow_empty)
    return [row for _, row in rows], keys
