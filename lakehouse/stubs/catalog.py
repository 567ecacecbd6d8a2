"""The models one stub knows, and which of them reason."""

from __future__ import annotations

from collections.abc import Iterable

# Families that reason by default when the caller does not name a thinking set.
THINKING_FAMILIES = (
    "qwen3",
    "deepseek",
    "gpt-oss",
    "glm",
    "kimi",
    "k2",
    "k3",
    "magistral",
    "minimax",
)


def family(name: str) -> str:
    """`org/qwen3.5:9b` -> `qwen3.5`."""
    return name.rsplit("/", 1)[-1].split(":", 1)[0].lower()


def ollama_canonical(name: str) -> str:
    # Ollama names are case-insensitive and an absent tag means `latest`.
    name = name.strip().lower()
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


class Catalog:
    def __init__(
        self, names: Iterable[str], thinking: Iterable[str] | None, *, ollama_names: bool
    ) -> None:
        self._ollama = ollama_names
        self.names: tuple[str, ...] = tuple(names)
        if not self.names:
            raise ValueError("a stub needs at least one model")
        self._by_key = {self._key(n): n for n in self.names}
        if thinking is None:
            thinkers = [n for n in self.names if family(n).startswith(THINKING_FAMILIES)]
        else:
            thinkers = list(thinking)
            unknown = [n for n in thinkers if self._key(n) not in self._by_key]
            if unknown:
                raise ValueError(f"thinking models not among the stub's models: {unknown}")
        self._thinking = {self._key(n) for n in thinkers}

    def _key(self, name: str) -> str:
        return ollama_canonical(name) if self._ollama else name

    def find(self, name: str) -> str | None:
        """The listed name for a requested one, or None when unknown."""
        return self._by_key.get(self._key(name))

    def thinks(self, name: str) -> bool:
        return self._key(name) in self._thinking
