from __future__ import annotations

from lakehouse.health import Health


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_threshold_then_admits_one_trial() -> None:
    clock = Clock()
    health = Health(["a", "b"], failure_threshold=3, cooldown=10, clock=clock)
    for _ in range(2):
        health.record("a", ok=False)
    assert health.available("a") and health.state("a") == "closed"
    health.record("a", ok=False)
    assert not health.available("a") and not health.admit("a")
    assert health.state("a") == "open"
    assert health.available("b")
    clock.now += 10
    assert health.state("a") == "half_open" and health.available("a")
    assert health.admit("a") is True
    assert health.admit("a") is False  # only one trial at a time
    health.record("a", ok=False)
    assert health.state("a") == "open" and not health.admit("a")
    clock.now += 10
    assert health.admit("a")
    health.record("a", ok=True)
    assert health.state("a") == "closed"
    assert health.admit("a") and health.admit("a")


def test_success_resets_the_streak_and_abandon_frees_the_trial() -> None:
    clock = Clock()
    health = Health(["a"], failure_threshold=2, cooldown=1, clock=clock)
    health.record("a", ok=False)
    health.record("a", ok=True)
    health.record("a", ok=False)
    assert health.state("a") == "closed"
    health.record("a", ok=False)
    clock.now += 1
    assert health.admit("a") and not health.admit("a")
    health.abandon("a")
    assert health.admit("a")


def test_failed_probe_makes_unavailable_whatever_the_breaker() -> None:
    health = Health(["a"])
    health.set_probe("a", False)
    assert not health.available("a") and not health.admit("a")
    assert health.state("a") == "down"
    assert health.snapshot() == {"a": False}
    health.set_probe("a", True)
    assert health.snapshot() == {"a": True}
    assert not health.available("unknown") and not health.admit("unknown")
