"""Provider keys: from the environment first, then a ``.env``-style file.

And the two redactions that keep keys out of what chatd says: ``Redactor``
(every resolved key, on the way out of chatd) and ``redact_key`` (one
provider's own key, in what its upstream sent back).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TypeVar

REDACTED = "[redacted]"

Text = TypeVar("Text", str, bytes)

_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


def read_env_file(path: Path) -> dict[str, str]:
    """Parse ``KEY=value`` lines, tolerating ``export``, quotes and comments."""
    values: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        match = _LINE.match(raw)
        if match is None:
            continue
        name, value = match.groups()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        else:
            # An unquoted value ends at an inline comment.
            value = re.split(r"\s+#", value, maxsplit=1)[0].strip()
        values[name] = value
    return values


def resolve_key(
    key_env: str, key_file: str, environ: Mapping[str, str] | None = None
) -> str | None:
    """The key named ``key_env``: the environment wins, then the file.

    An empty ``key_file`` skips the file; a missing or unreadable file is the
    same as a file without the key (the provider is then not registered).
    """
    if not key_env:
        return None
    env = os.environ if environ is None else environ
    value = env.get(key_env, "").strip()
    if value:
        return value
    if not key_file:
        return None
    try:
        value = read_env_file(Path(key_file)).get(key_env, "").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return value or None


def redact_key(text: Text, key: str | None) -> Text:
    """``text`` with ``key`` replaced: upstreams sometimes quote the key
    back in their error text. On bytes, redact before any cut, so no part of
    a quoted key survives it."""
    if not key:
        return text
    if isinstance(text, bytes):
        return text.replace(key.encode(), REDACTED.encode())
    return text.replace(key, REDACTED)


class Redactor:
    """Replaces every known secret in a text; cheap when there are none."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Very short "keys" would redact ordinary words; real keys are long.
        found = sorted({s for s in secrets if len(s) >= 8}, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, found))) if found else None

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(REDACTED, text)
