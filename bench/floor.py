"""The fixed stack's own floor: Hypercorn serving a bare ASGI app that makes
one pooled aiohttp call to the stub per request and answers its bytes.
No routing, no msgspec, no metrics, no logs. A bench row through it shows
what Hypercorn + aiohttp cost on this machine before chatd adds anything.

With ``--tuned`` the stack runs as chatd runs it: Hypercorn's connections
with lakehouse.connections' idle timer and coalesced writes, the Date
header made once a second, and the upstream call through
``HTTPClient`` (aiohttp without its session layer): what chatd could cost
if its own work were free.

A request whose body asks for a stream (``"stream":true``) gets the
upstream's NDJSON stream relayed as it arrives: each chunk aiohttp reads
goes out as one ASGI body message (``more_body``), nothing parsed or
re-encoded (stock: ``ClientSession.post`` and ``content.iter_any()``;
tuned: ``HTTPClient.stream_post``, chatd's own upstream stream with one
read timer per stream). Over HTTP/1.1 or h2c, whichever the client
speaks: the stream rows' floor.

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
STREAMED = b'"stream":true'


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
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if STREAMED in body:
            await relay(body, send)
            return
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

    async def relay(body: bytes, send: Any) -> None:
        start = {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/x-ndjson")],
        }
        if clients:
            async with clients[0].stream_post("/api/chat", body, error=refused) as stream:
                await send(start)
                async for chunk in stream:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        else:
            async with sessions[0].post(
                upstream + "/api/chat", data=body, headers={"Content-Type": "application/json"}
            ) as resp:
                await send(start)
                async for chunk in resp.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


def refused(reply: Any) -> Exception:
    return RuntimeError(f"the stub answered {reply.status}")


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
