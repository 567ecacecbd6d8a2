"""The fixed stack's own floor: Hypercorn serving a bare ASGI app that makes
one pooled aiohttp call to the stub per request and answers its bytes.
No routing, no msgspec, no metrics, no logs. A bench row through it shows
what Hypercorn + aiohttp cost on this machine before chatd adds anything.

With ``--tuned`` the stack runs as chatd runs it: Hypercorn's connections
with lakehouse.connections' idle timer and coalesced writes, the Date
header made once a second, and the upstream call through
``HTTPClient`` (aiohttp without its session layer): what chatd could cost
if its own work were free.

    python bench/floor.py --port P --upstream http://127.0.0.1:S [--tuned]
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import aiohttp
import uvloop
from hypercorn.asyncio import serve
from hypercorn.config import Config

BODY = (
    b'{"model":"qwen3.5:latest","messages":[{"role":"user","content":"hi"}],'
    b'"stream":false,"think":false}'
)


def app_for(upstream: str, tuned: bool) -> Any:
    sessions: list[aiohttp.ClientSession] = []
    clients: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    sessions.append(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)))
                    if tuned:
                        from lakehouse.upstreams.contract import ProviderContext
                        from lakehouse.upstreams.http import HTTPClient

                        clients.append(HTTPClient(ProviderContext("floor", upstream, None, 60)))
                        await clients[0].start()
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await sessions[0].close()
                    for client in clients:
                        await client.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        if clients:
            out = (await clients[0].post_json("/api/chat", BODY)).body
        else:
            async with sessions[0].post(
                upstream + "/api/chat", data=BODY, headers={"Content-Type": "application/json"}
            ) as resp:
                out = await resp.read()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(out)),
                ],
            }
        )
        await send({"type": "http.response.body", "body": out})

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--tuned", action="store_true", help="run the stack as chatd does")
    args = parser.parse_args()
    config = Config()
    if args.tuned:
        from lakehouse.server import ServerConfig, tune_connections

        tune_connections()
        config = ServerConfig()
        config.include_server_header = False
    config.bind = [f"127.0.0.1:{args.port}"]
    config.keep_alive_max_requests = 1_000_000
    config.accesslog = None
    uvloop.run(serve(app_for(args.upstream, args.tuned), config))


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
