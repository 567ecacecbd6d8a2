"""Provider health: the last probe's verdict, and a circuit breaker fed by
call outcomes.

After ``failure_threshold`` failed calls in a row a provider's breaker
opens: it counts as unavailable for ``cooldown`` seconds, then lets one
trial call through (half-open). The trial's success closes the breaker;
its failure opens it for another cooldown. A failed probe makes the
provider unavailable whatever the breaker says.

A provider going down (a failed probe, an opened breaker) or coming back
is logged once, with the reason; nothing is logged while it stays so.
"""

from __future__ import annotations

import logging
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

    @property
    def down(self) -> bool:
        return not self.probe_ok or self.open_until != 0.0


log = logging.getLogger("chatd.health")


class Health:
    def __init__(
        self,
        names: Iterable[str],
        *,
        failure_threshold: int = 5,
        cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        pool: str | None = None,
    ) -> None:
        self._states = {name: _State() for name in names}
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self._clock = clock
        # Set for the hosts of a pooled provider: the names are its hosts.
        self._pool = pool

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
        was_down = state.down
        state.trial = False
        if ok:
            state.failures = 0
            state.open_until = 0.0
            self._changed(name, state, was_down, "a call succeeded")
            return
        state.failures += 1
        if state.failures >= self.failure_threshold:
            state.open_until = self._clock() + self.cooldown
            self._changed(
                name,
                state,
                was_down,
                f"{state.failures} failed calls in a row; one trial call after {self.cooldown:g}s",
            )

    def abandon(self, name: str) -> None:
        """A call ended without a verdict (cancelled): free the trial slot."""
        state = self._states.get(name)
        if state is not None:
            state.trial = False

    def set_probe(self, name: str, ok: bool, reason: str = "", *, announce: bool = True) -> None:
        """The verdict of one probe; ``reason`` says why it failed. A verdict
        taken from the worker that probed (``announce=False``) is not logged
        again: that worker logged the change."""
        state = self._states.get(name)
        if state is not None:
            was_down = state.down
            state.probe_ok = ok
            if announce:
                self._changed(name, state, was_down, "probe succeeded" if ok else reason)

    def _changed(self, name: str, state: _State, was_down: bool, reason: str) -> None:
        if state.down == was_down:
            return
        what, extra = "provider", {"provider": name, "reason": reason}
        if self._pool is not None:
            what, extra = "host", {"provider": self._pool, "host": name, "reason": reason}
        if state.down:
            log.warning(f"{what} down", extra=extra)
        else:
            log.info(f"{what} up", extra=extra)

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
