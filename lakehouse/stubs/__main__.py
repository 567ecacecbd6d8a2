"""``python -m lakehouse.stubs --flavour ollama --port 11434``: one stub in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from lakehouse.stubs.flavours import FLAVOURS
from lakehouse.stubs.server import StubUpstream


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lakehouse.stubs", description="Serve one upstream emulator on loopback."
    )
    parser.add_argument("--flavour", required=True, choices=sorted(FLAVOURS))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--key", help="require Authorization: Bearer KEY")
    parser.add_argument(
        "--model",
        action="append",
        dest="models",
        help="a model the stub knows (repeatable; default: the flavour's)",
    )
    parser.add_argument("--require-user-agent", help="kimi: the User-Agent prefix let through")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    stub = StubUpstream(
        args.flavour, key=args.key, models=args.models, require_user_agent=args.require_user_agent
    )
    print(await stub.start(args.host, args.port), flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows
            loop.add_signal_handler(sig, stopping.set)
    try:
        await stopping.wait()
    finally:
        await stub.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        asyncio.run(serve(args))
    except (OSError, ValueError) as exc:
        print(f"stub: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
