"""What the provider unit tests (tests/upstreams/, tests/plugins/) share: a
provider started for one test, one exchange against aioresponses, the check
of how an upstream's error reply maps onto chatd's error family, and the
checks every protocol client's request body and stream fold must pass."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest

from lakehouse import errors
from lakehouse.plugin_api import ProviderContext
from lakehouse.wire import ChatRequest, ImagePart, ImageURL, Message, StreamDelta, TextPart
from tests.support import builtin_plugin, mock_upstream

HI = [Message("system", "be brief"), Message("user", "hi")]
PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB"


def context(name: str, base_url: str, key: str | None, options: Any, **kw: Any) -> ProviderContext:
    """What the registry hands a provider, with a 5 s timeout."""
    return ProviderContext(name=name, base_url=base_url, key=key, timeout=5, options=options, **kw)


@contextlib.asynccontextmanager
async def started(provider: Any) -> AsyncIterator[Any]:
    """``provider`` started, and closed on the way out."""
    await provider.start()
    try:
        yield provider
    finally:
        await provider.close()


def provider_fixture(build: Callable[[], Any]) -> Any:
    """A ``provider`` fixture: what ``build()`` returns, started for the test."""

    @pytest.fixture
    async def provider() -> AsyncIterator[Any]:
        async with started(build()) as p:
            yield p

    return provider


def keyed_plugin(name: str, base_url: str) -> Any:
    """The built-in plugin ``name``, checked to need a key and to default to
    ``base_url``."""
    plugin = builtin_plugin(name)
    assert plugin.default_base_url == base_url
    assert plugin.needs_key is True
    return plugin


def only_request(mock: mock_upstream) -> Any:
    """The one request ``mock`` received."""
    (sent,) = [c for cs in mock.requests.values() for c in cs]
    return sent


async def exchange(
    provider: Any, url: str, request: Any = None, model: str = "m", **reply: Any
) -> tuple[Any, Any]:
    """``provider.chat(request, model)`` (``HI`` unless ``request``) against
    ``reply`` posted at ``url``: the answer, and the one request it sent."""
    with mock_upstream() as mock:
        mock.post(url, **reply)
        out = await provider.chat(request or ChatRequest(model="m", messages=HI), model)
        return out, only_request(mock)


async def check_timeout(provider: Any, url: str, request: Any) -> None:
    """An upstream that does not answer in time is an UpstreamTimeout."""
    with mock_upstream() as mock:
        mock.post(url, exception=TimeoutError())
        with pytest.raises(errors.UpstreamTimeout):
            await provider.chat(request, "m")


@dataclass(frozen=True)
class ErrorReply:
    """An upstream's error reply and what chatd must make of it."""

    status: int
    body: Any
    error: type[errors.ChatdError]
    retry_after: float | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def reply(self) -> dict[str, Any]:
        """The reply, as aioresponses' keyword arguments."""
        return {"status": self.status, "payload": self.body, "headers": self.headers}

    async def check(self, answer: Awaitable[Any], said: str | None = None) -> errors.ChatdError:
        """``answer`` fails with exactly ``error``, keeping the upstream's
        status and Retry-After, and its message quotes ``said``."""
        with pytest.raises(errors.ChatdError) as info:
            await answer
        raised = info.value
        assert type(raised) is self.error
        assert raised.upstream_status == self.status
        assert raised.retry_after == self.retry_after
        if said is not None:
            assert said in raised.message
        return raised


def error_id(case: ErrorReply) -> str:
    return f"{case.status}-{case.error.__name__}"


# -- the request body and the stream fold of a protocol client ----------------


def sent_body(provider: Any, **kw: Any) -> Any:
    """The body ``provider`` builds for a request (``HI`` unless ``messages``)."""
    messages = kw.pop("messages", HI)
    return json.loads(provider.body(ChatRequest(model="m", messages=messages, **kw), "m"))


def check_refused_by_name(provider: Any, refused: dict[str, Any], protocol: str) -> None:
    """A request field the protocol cannot carry (``refused``, one field and
    its value) is a 400 naming it."""
    with pytest.raises(errors.BadRequest) as info:
        sent_body(provider, **refused)
    (name,) = refused
    assert info.value.path == f"$.{name}"
    assert protocol in info.value.message


def image_refused_outside_user_turns(provider: Any, role: Any) -> errors.BadRequest:
    """An image in a ``role`` turn, which the protocol cannot carry there, is
    a 400 naming where it is rather than dropped; the error, for more checks."""
    seeing = Message(role, [TextPart("look"), ImagePart(ImageURL(PNG))])
    with pytest.raises(errors.BadRequest) as info:
        sent_body(provider, messages=[seeing, Message("user", "hi")])
    assert info.value.path == "$.messages[0].content"
    return info.value


def fold_events(fold: Any, *events: dict[str, Any]) -> list[StreamDelta]:
    """The deltas ``fold`` relays for ``events``, each sent as one frame."""
    return [d for e in events if (d := fold.add(msgspec.json.encode(e))) is not None]


def check_first_call_id_is_the_final_one(deltas: list[StreamDelta], fold: Any) -> None:
    """A streamed call that came without an id is relayed under the id the
    final answer gives it, so a caller can match the two."""
    first = deltas[0].tool_calls
    final = fold.result().tool_calls
    assert first is not None and final is not None
    assert first[0].id and first[0].id == final[0].id
