"""The error a bad config raises, and the wording helpers every config check shares.

Kept apart from the registry and the dataclass schema, which both raise these errors, so that
neither has to import the other for them.
"""

from __future__ import annotations

import difflib


class ConfigError(ValueError):
    """A run configuration names an unknown key or holds an invalid value."""


def suggest(name: str, valid: list[str]) -> str:
    """A ' (did you mean ...?)' hint, or '' when nothing is close."""
    close = difflib.get_close_matches(name, valid, n=1)
    if not close and len(name) >= 3:  # an abbreviation: 'temp' for 'temperature'
        close = [v for v in sorted(valid) if v.startswith(name)][:1]
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_key(where: str, key: str, valid: list[str], scope: str = "") -> ConfigError:
    """The error for a key that is not among `valid`, with a suggestion and the valid keys."""
    listed = ", ".join(sorted(valid)) or "(none)"
    return ConfigError(f"{where}.{key}: unknown key{suggest(key, valid)}; valid keys{scope}: {listed}")
