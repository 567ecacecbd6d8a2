"""Provider health: the last probe's verdict plus recent call outcomes.

A provider is available while its last probe succeeded and it has not
failed ``failure_threshold`` calls in a row; one success clears the streak.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass
class _State:
    probe_ok: bool = True
    failures: int = 0


class Health:
    def __init__(self, names: Iterable[str], *, failure_threshold: int = 5) -> None:
        self._states = {name: _State() for name in names}
        self.failure_threshold = failure_threshold

    def available(self, name: str) -> bool:
        state = self._states.get(name)
        if state is None:
            return False
        return state.probe_ok and state.failures < self.failure_threshold

    def record(self, name: str, *, ok: bool) -> None:
        state = self._states.get(name)
        if state is None:
            return
        state.failures = 0 if ok else state.failures + 1

    def set_probe(self, name: str, ok: bool) -> None:
        state = self._states.get(name)
        if state is None:
            return
        state.probe_ok = ok
        if ok:
            state.failures = 0

    def snapshot(self) -> dict[str, bool]:
        return {name: self.available(name) for name in sorted(self._states)}
