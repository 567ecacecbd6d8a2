from __future__ import annotations

from lakehouse.health import Health


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def closed(health: Health, name: str) -> bool:
    """Available, and admitting every call (not just one trial)."""
    return health.available(name) and all(health.admit(name) for _ in range(3))


def test_breaker_opens_after_threshold_then_admits_one_trial() -> None:
    clock = Clock()
    health = Health(["a", "b"], failure_threshold=3, cooldown=10, clock=clock)
    for _ in range(2):
        health.record("a", ok=False)
    assert closed(health, "a")
    health.record("a", ok=False)
    assert not health.available("a") and not health.admit("a")  # open
    assert health.snapshot() == {"a": False, "b": True}
    clock.now += 9.9
    assert not health.admit("a")  # still cooling down
    clock.now += 0.1
    assert health.available("a")  # half open: one trial
    assert health.admit("a") is True
    assert health.admit("a") is False  # only one trial at a time
    health.record("a", ok=False)
    assert not health.available("a") and not health.admit("a")  # open again
    clock.now += 10
    assert health.admit("a")
    health.record("a", ok=True)
    assert closed(health, "a")


def test_success_resets_the_streak_and_abandon_frees_the_trial() -> None:
    clock = Clock()
    health = Health(["a"], failure_threshold=2, cooldown=1, clock=clock)
    health.record("a", ok=False)
    health.record("a", ok=True)
    health.record("a", ok=False)
    assert closed(health, "a")
    health.record("a", ok=False)
    clock.now += 1
    assert health.admit("a") and not health.admit("a")
    health.abandon("a")
    assert health.admit("a")


def test_failed_probe_makes_unavailable_whatever_the_breaker() -> None:
    health = Health(["a"])
    health.set_probe("a", False)
    assert not health.available("a") and not health.admit("a")
    assert health.snapshot() == {"a": False}
    health.set_probe("a", True)
    assert health.snapshot() == {"a": True}
    assert not health.available("unknown") and not health.admit("unknown")
