from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

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


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def said(self, msg: str) -> list[logging.LogRecord]:
        return [r for r in self.records if r.getMessage() == msg]


@pytest.fixture
def health_log() -> Iterator[Records]:
    records = Records()
    logger = logging.getLogger("chatd.health")
    logger.addHandler(records)
    logger.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        logger.removeHandler(records)
        logger.setLevel(logging.NOTSET)


def test_going_down_and_coming_back_are_logged_once_with_the_reason(health_log: Records) -> None:
    clock = Clock()
    health = Health(["a"], failure_threshold=2, cooldown=10, clock=clock)
    for _ in range(5):
        health.set_probe("a", False, "probe failed: connection refused")
    health.record("a", ok=False)
    [down] = health_log.said("provider down")
    assert (down.levelname, down.provider, down.reason) == (  # type: ignore[attr-defined]
        "WARNING",
        "a",
        "probe failed: connection refused",
    )
    for _ in range(3):
        health.set_probe("a", True)
    [up] = health_log.said("provider up")
    assert up.reason == "probe succeeded"  # type: ignore[attr-defined]
    health.record("a", ok=False)
    health.record("a", ok=False)
    health.record("a", ok=False)
    breaker = health_log.said("provider down")[1:]
    assert len(breaker) == 1
    assert breaker[0].reason.startswith("2 failed calls in a row")  # type: ignore[attr-defined]
    clock.now += 11
    assert health.admit("a")
    health.record("a", ok=True)
    assert [r.reason for r in health_log.said("provider up")] == [  # type: ignore[attr-defined]
        "probe succeeded",
        "a call succeeded",
    ]


def test_a_verdict_taken_from_the_probing_worker_is_not_logged_again(
    health_log: Records,
) -> None:
    health = Health(["a"])
    health.set_probe("a", False, announce=False)
    health.set_probe("a", True, announce=False)
    assert health_log.records == []
    assert health.state("a") == "closed"


def test_the_hosts_of_a_pool_are_logged_as_hosts_of_their_provider(health_log: Records) -> None:
    health = Health(["gpu1", "gpu2"], pool="ollama")
    health.set_probe("gpu1", False, "probe failed: refused")
    [down] = health_log.said("host down")
    assert (down.provider, down.host) == ("ollama", "gpu1")  # type: ignore[attr-defined]
    assert health_log.said("provider down") == []
