"""The stub's "model": deterministic replies counted in whitespace-split words.

A word stands in for a token everywhere (prompt counts, budgets, stream
deltas), so tests can predict every count from the request alone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

_TOKEN = re.compile(r"\S+\s*")


def tokens(text: str) -> list[str]:
    """Words with their trailing whitespace, so the pieces join back to the text."""
    return _TOKEN.findall(text)


def part_text(content: Any) -> str:
    """Text of a message content: a string, or OpenAI content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def count_prompt(texts: Iterable[str]) -> int:
    # Real upstreams never report a zero prompt: the chat template alone costs tokens.
    return max(1, sum(len(tokens(t)) for t in texts))


def reply_text(user_text: str) -> str:
    said = " ".join(user_text.split())
    return f"Hello from the stub. You said: {said}" if said else "Hello from the stub."


def thinking_text(user_text: str) -> str:
    n = len(user_text.split())
    return f"The user wrote {n} words. A short friendly echo of them will do."


def schema_sample(schema: Any, text: str) -> Any:
    """A value that fits a (simple) JSON schema, carrying the reply text."""
    if not isinstance(schema, dict):
        return {"reply": text}
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties")
        if not isinstance(props, dict) or not props:
            return {"reply": text}
        return {name: schema_sample(sub, text) for name, sub in props.items()}
    if kind == "array":
        return [schema_sample(schema.get("items"), text)]
    if kind in ("integer", "number"):
        return 1
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return text


def json_content(text: str, schema: Any = None) -> str:
    """JSON mode: the content is a JSON document encoded as a string."""
    return json.dumps(schema_sample(schema, text) if schema is not None else {"reply": text})


@dataclass(frozen=True)
class Generation:
    thinking: list[str]
    content: list[str]
    # "stop" or "length": the budget ran out before the answer ended.
    finish: str

    @property
    def thinking_text(self) -> str:
        return "".join(self.thinking)

    @property
    def content_text(self) -> str:
        return "".join(self.content)

    @property
    def count(self) -> int:
        # Reasoning is billed as output everywhere.
        return len(self.thinking) + len(self.content)


def generate(content: str, *, thinking: str | None, budget: int | None) -> Generation:
    """Spend ``budget`` tokens on thinking first, then on the answer.

    ``budget`` None (or negative, Ollama's -1) means unlimited. A small budget
    with thinking on yields empty content and "length": the real failure
    mode of reasoning models.
    """
    think = tokens(thinking) if thinking else []
    answer = tokens(content)
    if budget is None or budget < 0:
        return Generation(think, answer, "stop")
    if budget < len(think):
        return Generation(think[:budget], [], "length")
    left = budget - len(think)
    if left < len(answer):
        return Generation(think, answer[:left], "length")
    return Generation(think, answer, "stop")


def token_logprobs(pieces: list[str], top: int = 0) -> list[dict[str, Any]]:
    """Log probabilities of generated tokens, in the shape both dialects
    use: each token with its bytes and ``top`` alternatives."""
    out = []
    for n, piece in enumerate(pieces):
        logprob = -0.25 * (n % 4 + 1)
        alternatives = [
            {"token": piece, "logprob": logprob, "bytes": list(piece.encode())},
            *(
                {"token": f"alt{k}", "logprob": logprob - k, "bytes": list(f"alt{k}".encode())}
                for k in range(1, top)
            ),
        ][:top]
        out.append(
            {
                "token": piece,
                "logprob": logprob,
                "bytes": list(piece.encode()),
                "top_logprobs": alternatives,
            }
        )
    return out
