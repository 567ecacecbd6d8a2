"""An HTTP/2 response the app leaves unfinished is reset, not left hanging.

Hypercorn 0.18 (``hypercorn/protocol/h2.py``) answers an app that returns
mid-response (the gateway's upstream broke off, a chatd stream that gave
up on a stalled peer) by forgetting the stream: it sends neither
END_STREAM nor RST_STREAM, so the caller waits until the whole connection
closes (~80 s in practice). ``resetting`` wraps ``H2Protocol.stream_send``
so that the app's "finished" (``StreamClosed``) on a stream still in the
middle of its response sends RST_STREAM (INTERNAL_ERROR) first: the caller
learns at once that the answer is incomplete, and the connection's other
streams go on. ``lakehouse.server`` installs it and hands in Hypercorn's
classes, staying the only module that imports Hypercorn.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import h2.exceptions

StreamSend = Callable[[Any, Any], Awaitable[None]]
INTERNAL_ERROR = 0x2  # RFC 9113 §7


def resetting(original: StreamSend, stream_closed: Any, responding: Any) -> StreamSend:
    """``H2Protocol.stream_send`` that resets a stream its app closed while
    the stream's state was still ``responding`` (ASGIHTTPState.RESPONSE)."""

    async def stream_send(protocol: Any, event: Any) -> None:
        if type(event) is stream_closed:
            stream = protocol.streams.get(event.stream_id)
            if stream is not None and getattr(stream, "state", None) is responding:
                with contextlib.suppress(h2.exceptions.H2Error):
                    protocol.connection.reset_stream(event.stream_id, error_code=INTERNAL_ERROR)
                    await protocol._flush()
        await original(protocol, event)

    return stream_send
