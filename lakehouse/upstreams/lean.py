"""An upstream request without aiohttp's ``ClientSession._request`` layer:
chatd's tuned path (``chatd.server.tuned``), ~8% less CPU per proxied
request than ``ClientSession.request``.

``send`` takes the steps of ``ClientSession._request`` (aiohttp 3.14,
``aiohttp/client.py``) that chatd uses (a connection from the pool, the
request, the status and headers, one more try of an idempotent request on
a pooled connection the upstream had closed) and skips those it never
does (cookies, redirects, proxies from the environment, auth, tracing,
client middlewares). That leans on aiohttp internals: ``ClientRequest``'s
keyword arguments, ``BaseConnector.connect``, the connection protocol's
``set_response_params`` and ``TimerNoop``. ``contract_problems()`` checks
that the installed aiohttp is a version the contract tests
(``tests/upstreams/test_lean_contract.py``, against the real library)
passed on and that those names and signatures are there; when not,
``HTTPClient`` logs a warning and uses ``ClientSession.request``.
``UPGRADING.md`` says what to do when bumping aiohttp.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Mapping

import aiohttp
import aiohttp.client_proto
import aiohttp.helpers
from yarl import URL

# aiohttp versions the contract tests passed on (a prefix each).
CHECKED_VERSIONS = ("3.14.",)
# Methods sent once more when a pooled connection turns out closed, as
# aiohttp's session does (RFC 9112, "Retrying Requests").
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# What send() hands each of them.
REQUEST_KWARGS = ("headers", "data", "loop", "response_class", "timer", "session")
CONNECT_PARAMETERS = ("req", "traces", "timeout")
RESPONSE_PARAMS = ("timer", "skip_payload", "read_until_eof", "read_timeout")


def contract_problems(version: str | None = None) -> list[str]:
    """What keeps ``send`` from being used with the installed aiohttp
    (``version`` stands in for its version); empty when nothing."""
    version = version or aiohttp.__version__
    problems = []
    if not version.startswith(CHECKED_VERSIONS):
        problems.append(f"aiohttp {version} is not a version the contract tests passed on")
    if not isinstance(getattr(aiohttp.helpers, "TimerNoop", None), type):
        problems.append("aiohttp.helpers.TimerNoop is gone")
    checks = (
        (aiohttp.ClientRequest.__init__, ("method", "url", *REQUEST_KWARGS)),
        (aiohttp.BaseConnector.connect, CONNECT_PARAMETERS),
        (aiohttp.client_proto.ResponseHandler.set_response_params, RESPONSE_PARAMS),
    )
    for function, wanted in checks:
        params = inspect.signature(function).parameters
        missing = [name for name in wanted if name not in params]
        if missing:
            problems.append(f"{function.__qualname__} takes no {', '.join(missing)}")
    for method in (aiohttp.ClientRequest.send, aiohttp.ClientResponse.start):
        if not inspect.iscoroutinefunction(method):
            problems.append(f"{method.__qualname__} is not a coroutine function")
    return problems


async def send(
    session: aiohttp.ClientSession,
    method: str,
    url: URL,
    headers: Mapping[str, str],
    body: bytes | None,
    connect: aiohttp.ClientTimeout,
    read_timeout: float | None,
) -> aiohttp.ClientResponse:
    """Send one request on a pooled connection of ``session`` and read the
    reply's status and headers; ``connect`` bounds getting a connection,
    ``read_timeout`` each wait for bytes."""
    connector: aiohttp.BaseConnector = session.connector  # type: ignore[assignment]
    for attempt in (1, 2):
        timer = aiohttp.helpers.TimerNoop()
        req = aiohttp.ClientRequest(
            method,
            url,
            headers=headers,
            data=body,
            loop=asyncio.get_running_loop(),
            response_class=aiohttp.ClientResponse,
            timer=timer,
            session=session,
        )
        conn = await connector.connect(req, [], connect)
        assert conn.protocol is not None
        conn.protocol.set_response_params(
            timer=timer,
            skip_payload=method == "HEAD",
            # A body without Content-Length or chunking ends with the
            # connection (HTTP/1.0 servers), as aiohttp's session reads it.
            read_until_eof=True,
            read_timeout=read_timeout,
        )
        try:
            resp = await req.send(conn)
            try:
                await resp.start(conn)
            except BaseException:
                resp.close()
                raise
        except aiohttp.ClientConnectorError:
            conn.close()
            raise
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
            conn.close()
            # A pooled connection the upstream closed as it was reused:
            # like aiohttp's session, try an idempotent request once more.
            if attempt == 2 or method not in IDEMPOTENT:
                raise
            continue
        except BaseException:
            conn.close()
            raise
        return resp
    raise AssertionError("unreachable")
