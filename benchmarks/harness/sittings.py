"""The sittings log of a benchmark: one JSON line per invocation that ran units, with its wall time and command;
their minutes add up to the benchmark's wall time, counted per command. A sitting that failed (a worker's error,
a full disk) is logged too, marked `failed`: its minutes were spent, and its finished units are kept."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def record_sitting(log: str | Path, minutes: float, command: str | None = None, failed: bool = False) -> None:
    """Append one invocation's wall time (and, if given, its command; `failed` when it ended in an error) to
    `log`."""
    entry: dict[str, object] = {"ended": time.strftime("%Y-%m-%dT%H:%M:%S"), "wall_time_min": minutes}
    if command is not None:
        entry["command"] = command
    if failed:
        entry["failed"] = True
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        f.write(json.dumps(entry) + "\n")


def read_sittings(log: str | Path) -> list[dict[str, Any]]:
    """Every sitting recorded in `log` (none when it does not exist); a line that is not JSON is an error naming
    the file and line."""
    log = Path(log)
    if not log.is_file():
        return []
    out = []
    for n, line in enumerate(log.read_text().splitlines(), 1):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{log}:{n}: not a JSON sitting record ({e.msg}, column {e.colno})") from None
    return out


def wall_minutes(sittings: Sequence[Mapping[str, Any]], default_command: str) -> dict[str, float]:
    """Minutes per command over the sittings (a sitting recorded without its command ran `default_command`)."""
    out: dict[str, float] = {}
    for sitting in sittings:
        command = str(sitting.get("command", default_command))
        out[command] = out.get(command, 0.0) + float(sitting["wall_time_min"])
    return out


def ran_by(sittings: Sequence[Mapping[str, Any]], command: str) -> str:
    """The commands whose sittings ran a study's units, with their minutes, for a table's first line; `command`
    (the aggregating one) only when no sitting is logged: an aggregation alone runs no unit, so it is not what
    made the table."""
    ran = wall_minutes(sittings, command)
    if not ran:
        return f"Command: `{command}`"
    failed = sum(bool(s.get("failed")) for s in sittings)
    note = f", {failed} of the {len(sittings)} sittings ending in an error" if failed else ""
    return "Ran by " + ", ".join(f"`{c}` ({minutes:.0f} min)" for c, minutes in ran.items()) + note
