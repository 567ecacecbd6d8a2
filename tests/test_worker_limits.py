"""Per-instance limits split among workers, through 2 real workers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from lakehouse import worker_limits
from lakehouse.errors import ConfigError
from lakehouse.stubs import Fault
from tests.pool_support import PeakStub, Pool, fresh_post, start_workers
from tests.support import make_config
from tests.test_cli import GOOD, chatd


def test_shares_add_up_to_the_limit() -> None:
    for limit in (2, 3, 7, 256):
        for count in (1, 2, 3):
            shares = [worker_limits.share(limit, i, count) for i in range(count)]
            assert sum(shares) == limit and max(shares) - min(shares) <= 1


def test_each_worker_gets_its_share_of_every_table() -> None:
    config = make_config(
        overrides={
            "chatd.providers.ollama.max_concurrency": 5,
            "chatd.providers.ollama.max_queue": 3,
        }
    )
    env = {worker_limits.WORKER_COUNT: "2"}
    first = worker_limits.for_worker(config, {**env, worker_limits.WORKER_INDEX: "0"})
    second = worker_limits.for_worker(config, {**env, worker_limits.WORKER_INDEX: "1"})
    assert (
        first.chatd.providers["ollama"].max_concurrency,
        second.chatd.providers["ollama"].max_concurrency,
    ) == (3, 2)
    assert (
        first.chatd.providers["ollama"].max_queue,
        second.chatd.providers["ollama"].max_queue,
    ) == (2, 1)
    assert worker_limits.for_worker(config, {}) is config


def test_a_limit_below_the_worker_count_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_concurrency` = 1 is below the 2 workers"):
        worker_limits.check(make_config(overrides={"chatd.providers.ollama.max_concurrency": 1}), 2)
    path = tmp_path / "c.toml"
    path.write_text("[chatd.providers.ollama]\nmax_concurrency = 1\n")
    done = chatd("--config", str(path), "--workers", "2", "--check")
    assert done.returncode == 2
    assert "max_concurrency` = 1 is below the 2 workers" in done.stderr
    assert chatd("--config", str(path), "--check").returncode == 0


@pytest.mark.anyio
async def test_max_concurrency_holds_for_the_instance(tmp_path: Path, pools: list[Pool]) -> None:
    stub = PeakStub("ollama")
    url = await stub.start()
    stub.fail_always(Fault(kind="delay", seconds=1.5))
    try:
        pool = await asyncio.to_thread(
            start_workers,
            tmp_path,
            "[chatd]\nprobe_interval_secs = 0\n[chatd.retry]\nattempts = 0\n"
            f'[chatd.providers.ollama]\nbase_url = "{url}"\nmax_concurrency = 2\nmax_queue = 0\n',
        )
        pools.append(pool)
        # New connections, so the kernel spreads them over both workers.
        answers = await asyncio.gather(*(fresh_post(pool.base, GOOD) for _ in range(16)))
    finally:
        await stub.stop()
    statuses = sorted(r.status_code for r in answers)
    assert set(statuses) == {200, 503}
    assert all(r.json()["error"]["code"] == "overloaded" for r in answers if r.status_code == 503)
    assert stub.peak <= 2
