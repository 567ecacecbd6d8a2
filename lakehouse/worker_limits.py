"""Per-instance limits split among a pool's workers.

``max_concurrency`` and ``max_queue`` are per chatd instance: with N
workers each gets its share (the first ``limit % N`` workers one more), so
the workers together never exceed what the table says. A worker only knows
its own share: when the kernel hands one worker more of the traffic, that
worker refuses at its share while another has room (see the README). A
concurrency limit below the worker count cannot be split (a worker with no
slot could serve nothing) and stops start-up.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from lakehouse.config import Config
from lakehouse.errors import ConfigError

# Set by lakehouse.supervisor for each worker it starts.
WORKER_INDEX = "CHATD_WORKER_INDEX"
WORKER_COUNT = "CHATD_WORKERS"


def share(limit: int, index: int, count: int) -> int:
    return limit // count + (1 if index < limit % count else 0)


def check(config: Config, count: int) -> None:
    for name, table in config.chatd.providers.items():
        if table.max_concurrency < count:
            raise ConfigError(
                f"`chatd.providers.{name}.max_concurrency` = {table.max_concurrency} is "
                f"below the {count} workers it is split among (each needs one slot)"
            )


def for_worker(config: Config, environ: Mapping[str, str]) -> Config:
    """The config with this worker's share of each limit; unchanged when
    the process is not one of several workers."""
    count = int(environ.get(WORKER_COUNT) or 1)
    if count <= 1:
        return config
    index = int(environ[WORKER_INDEX])
    check(config, count)
    providers = {
        name: msgspec.structs.replace(
            table,
            max_concurrency=share(table.max_concurrency, index, count),
            max_queue=share(table.max_queue, index, count),
        )
        for name, table in config.chatd.providers.items()
    }
    chatd = msgspec.structs.replace(config.chatd, providers=providers)
    return msgspec.structs.replace(config, chatd=chatd)
