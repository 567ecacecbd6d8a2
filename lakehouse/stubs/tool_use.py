"""When the stub's "model" calls a tool, and with what.

The rule, the same in every dialect: offered tools (and a tool choice that
is not "none") and a conversation whose last turn is not a tool result →
the model calls the named tool, else the first one, with arguments that
fit its schema and carry the user's words; after a tool result it answers
in text, echoing the result.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lakehouse.stubs.replies import json_content, tokens


@dataclass(frozen=True)
class Call:
    name: str
    arguments: dict[str, Any]

    @property
    def text(self) -> str:
        return json.dumps(self.arguments)

    @property
    def pieces(self) -> list[str]:
        """The arguments' JSON text in the fragments a stream sends."""
        text = self.text
        cut = max(1, len(text) // 3)
        return [text[i:i + cut] for i in range(0, len(text), cut)]

    @property
    def count(self) -> int:
        return max(1, len(tokens(self.text.replace(",", ", "))))


def choose(
    tools: Sequence[Mapping[str, Any]], named: str | None, user_text: str
) -> Call | None:
    """The call, given each tool as ``{name, schema}``."""
    if not tools:
        return None
    tool = next((t for t in tools if t["name"] == named), tools[0])
    schema = tool.get("schema") or {"type": "object"}
    arguments = json.loads(json_content(user_text or "hello", schema))
    return Call(tool["name"], arguments if isinstance(arguments, dict) else {})
