"""Provider health: the last probe's verdict, and a circuit breaker fed by
call outcomes.

After ``failure_threshold`` failed calls in a row a provider's breaker
opens: it counts as unavailable for ``cooldown`` seconds, then lets one
trial call through (half-open). The trial's success closes the breaker;
its failure opens it for another cooldown. A failed probe makes the
provider unavailable whatever the breaker says.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass
class _State:
    probe_ok: bool = True
    failures: int = 0
    # While open: the monotonic time the cooldown ends; 0 when closed.
    open_until: float = 0.0
    trial: bool = False


class Health:
    def __init__(
        self,
        names: Iterable[str],
        *,
        failure_threshold: int = 5,
        cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._states = {name: _State() for name in names}
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self._clock = clock

    def available(self, name: str) -> bool:
        """Whether a call would be let through now (the listing's view):
        half-open counts only while its one trial is still free."""
        state = self._states.get(name)
        if state is None or not state.probe_ok:
            return False
        if state.open_until == 0.0:
            return True
        return self._clock() >= state.open_until and not state.trial

    def in_trial(self, name: str) -> bool:
        """Whether the provider's half-open trial call is out."""
        state = self._states.get(name)
        return state is not None and state.trial

    def admit(self, name: str) -> bool:
        """Whether one call may go now; in the half-open state only one trial
        call is admitted until its outcome is recorded."""
        state = self._states.get(name)
        if state is None or not state.probe_ok:
            return False
        if state.open_until == 0.0:
            return True
        if self._clock() < state.open_until or state.trial:
            return False
        state.trial = True
        return True

    def record(self, name: str, *, ok: bool) -> None:
        state = self._states.get(name)
        if state is None:
            return
        state.trial = False
        if ok:
            state.failures = 0
            state.open_until = 0.0
            return
        state.failures += 1
        if state.failures >= self.failure_threshold:
            state.open_until = self._clock() + self.cooldown

    def abandon(self, name: str) -> None:
        """A call ended without a verdict (cancelled): free the trial slot."""
        state = self._states.get(name)
        if state is not None:
            state.trial = False

    def set_probe(self, name: str, ok: bool) -> None:
        state = self._states.get(name)
        if state is not None:
            state.probe_ok = ok

    def state(self, name: str) -> str:
        """``closed``, ``open``, ``half_open`` or ``down`` (probe failed)."""
        state = self._states[name]
        if not state.probe_ok:
            return "down"
        if state.open_until == 0.0:
            return "closed"
        return "open" if self._clock() < state.open_until else "half_open"

    def snapshot(self) -> dict[str, bool]:
        return {name: self.available(name) for name in sorted(self._states)}
