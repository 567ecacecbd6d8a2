"""One worker of ``chatd --workers N`` (``python -m lakehouse.worker``),
started by ``lakehouse.supervisor`` with the listening socket, a pipe to
say "serving" on, and a lifeline, all as inherited descriptors."""

from __future__ import annotations

import json
import os
import sys

from lakehouse import supervisor
from lakehouse.config import default_config_path, load
from lakehouse.errors import ConfigError
from lakehouse.server import serve_inherited


def main() -> None:
    env = os.environ
    ready_fd = int(env[supervisor.READY_FD])
    overrides = json.loads(env.get("CHATD_OVERRIDES") or "{}")
    try:
        config = load(default_config_path(), overrides)
    except ConfigError as exc:
        # A reload that broke the file: one line, and the roll is abandoned.
        print(f"chatd worker: config error: {exc}", file=sys.stderr)
        sys.exit(2)

    def ready() -> None:
        # "Serving", with the graceful timeout this worker drains for (the
        # file may have changed since the supervisor read it).
        os.write(ready_fd, f"{config.chatd.server.graceful_timeout_secs}\n".encode())
        os.close(ready_fd)

    serve_inherited(
        config,
        int(env[supervisor.LISTEN_FD]),
        env[supervisor.APP_ENV],
        ready,
        int(env[supervisor.LIFELINE_FD]),
    )


if __name__ == "__main__":
    main()
