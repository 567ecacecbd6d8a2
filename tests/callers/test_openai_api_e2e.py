"""The OpenAI surface through the real server, driven by the official
``openai`` SDK, against every provider's protocol stub."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from lakehouse.stubs import Fault
from lakehouse.stubs.replies import reply_text
from tests.gateway.test_app import gateway_config, running_gateway
from tests.stub_world import KEYS, MODELS, World, stub_world
from tests.support import module_fixtures

pytestmark = [pytest.mark.anyio, pytest.mark.stacks]

SAID = "hello there friend"
HELLO: list[Any] = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": SAID},
]
TIERS = {
    "models.local_fast": "qwen3.5:latest",
    "models.frontier": "openrouter/openai/gpt-5",
    "models.coding": "kimi/kimi-for-coding",
}


OVERRIDES = {
    **TIERS,
    "chatd.max_request_bytes": 64 * 1024,
    "chatd.suffix_routes": {":cloud": "ollama_cloud", ":gone": "nowhere"},
}
anyio_backend, world = module_fixtures(lambda: stub_world(OVERRIDES))


@pytest.fixture
async def client(world: World) -> AsyncIterator[openai.AsyncOpenAI]:
    world.reset()
    async with sdk(world.base, max_retries=0) as client:
        yield client


def sdk(
    base: str, *, api_key: str = "x", max_retries: int = 2, prefix: str = "/v1"
) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base + prefix, api_key=api_key, max_retries=max_retries)


@pytest.mark.parametrize("name", list(MODELS))
async def test_completion_through_every_provider(client: openai.AsyncOpenAI, name: str) -> None:
    answer = await client.chat.completions.create(model=MODELS[name], messages=HELLO)
    assert answer.object == "chat.completion" and answer.id.startswith("chatcmpl-")
    choice = answer.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == reply_text(SAID)
    assert choice.finish_reason == "stop"
    assert answer.usage is not None
    usage = answer.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert answer.model_extra == {"provider": name}


@pytest.mark.parametrize("name", list(MODELS))
async def test_streaming_through_every_provider(
    client: openai.AsyncOpenAI, world: World, name: str
) -> None:
    stream = await client.chat.completions.create(
        model=MODELS[name],
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, chunks = "", [], []
    async for chunk in stream:
        chunks.append(chunk)
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.finish_reason:
                finish.append(choice.finish_reason)
    assert text == reply_text(SAID)
    assert finish == ["stop"]
    assert chunks[0].choices[0].delta.role == "assistant"
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens > 0 and last.usage.prompt_tokens > 0
    # The model chatd routed to (routing prefix stripped), as in a completion.
    assert {c.model for c in chunks} == {MODELS[name].removeprefix(name + "/")}
    assert world.stubs[name].chats[-1].json["stream"] is True


async def test_completion_and_chunks_name_the_model_by_one_rule() -> None:
    async with stub_world({"models.cloud_judge": "kimi-k2.6:cloud"}) as world:
        client = openai.AsyncOpenAI(base_url=world.base + "/v1", api_key="x", max_retries=0)
        whole = await client.chat.completions.create(model="cloud_judge", messages=HELLO)
        stream = await client.chat.completions.create(
            model="cloud_judge", messages=HELLO, stream=True
        )
        models = {chunk.model async for chunk in stream}
        await client.close()
    assert whole.model == "kimi-k2.6:cloud"
    assert models == {"kimi-k2.6:cloud"}


@pytest.mark.parametrize("name", list(MODELS))
async def test_a_small_budget_finishes_with_length(client: openai.AsyncOpenAI, name: str) -> None:
    answer = await client.chat.completions.create(
        model=MODELS[name], messages=HELLO, max_completion_tokens=3
    )
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None and answer.usage.completion_tokens == 3
    stream = await client.chat.completions.create(
        model=MODELS[name], messages=HELLO, max_tokens=3, stream=True
    )
    reasons = [c.choices[0].finish_reason async for c in stream if c.choices]
    assert reasons[-1] == "length"


@pytest.mark.parametrize("name", list(MODELS))
async def test_sampling_fields_reach_every_upstream(
    client: openai.AsyncOpenAI, world: World, name: str
) -> None:
    await client.chat.completions.create(
        model=MODELS[name],
        messages=HELLO,
        stop=["END", "STOP"],
        seed=42,
        top_p=0.95,
        response_format={"type": "json_object"},
        user="caller-1",
        metadata={"job": "j1"},
    )
    sent = world.stubs[name].chats[-1].json
    if name.startswith("ollama"):
        assert sent["options"]["stop"] == ["END", "STOP"]
        assert (sent["options"]["seed"], sent["options"]["top_p"]) == (42, 0.95)
        assert sent["format"] == "json"
    else:
        assert (sent["stop"], sent["seed"], sent["top_p"]) == (["END", "STOP"], 42, 0.95)
        assert sent["response_format"] == {"type": "json_object"}
    assert "user" not in sent and "metadata" not in sent


async def test_reasoning_comes_as_reasoning_content(client: openai.AsyncOpenAI) -> None:
    answer = await client.chat.completions.create(model=MODELS["openrouter"], messages=HELLO)
    message = answer.choices[0].message
    assert message.model_extra is not None and message.model_extra["reasoning_content"]
    assert message.content == reply_text(SAID)
    stream = await client.chat.completions.create(model=MODELS["kimi"], messages=HELLO, stream=True)
    thought = ""
    async for chunk in stream:
        for choice in chunk.choices:
            thought += (choice.delta.model_extra or {}).get("reasoning_content") or ""
    assert thought


async def test_tiers_route_and_models_list_them(client: openai.AsyncOpenAI) -> None:
    answer = await client.chat.completions.create(model="coding", messages=HELLO)
    assert answer.model_extra == {"provider": "kimi"}
    listed = {m.id: m.owned_by async for m in client.models.list()}
    assert listed == {
        "local_fast": "ollama",
        "qwen3.5:latest": "ollama",
        "frontier": "openrouter",
        "openrouter/openai/gpt-5": "openrouter",
        "coding": "kimi",
        "kimi/kimi-for-coding": "kimi",
    }
    model = await client.models.retrieve("openrouter/openai/gpt-5")
    assert (model.id, model.owned_by) == ("openrouter/openai/gpt-5", "openrouter")
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("nothing")


async def test_errors_raise_the_sdk_classes(client: openai.AsyncOpenAI, world: World) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        await client.chat.completions.create(
            model=MODELS["ollama"],
            messages=HELLO,
            tools=[{"type": "function", "function": {"name": "no spaces", "parameters": {}}}],
        )
    assert (bad.value.code, bad.value.param) == ("bad_request", "tools[0].function.name")
    assert "tools[0].function.name" in bad.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        await client.chat.completions.create(
            model=MODELS["ollama"],
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ],
        )
    assert bad.value.param == "messages[0].content[0].image_url.url"
    with pytest.raises(openai.NotFoundError) as missing:
        await client.chat.completions.create(model="qwen:gone", messages=HELLO)
    assert missing.value.code == "provider_not_found"
    with pytest.raises(openai.APIStatusError) as large:
        await client.chat.completions.create(
            model=MODELS["ollama"], messages=[{"role": "user", "content": "x" * 100_000}]
        )
    assert large.value.status_code == 413
    world.stubs["openrouter"].fail_next(Fault(kind="status", status=429, retry_after="1"))
    with pytest.raises(openai.RateLimitError) as limited:
        await client.chat.completions.create(model=MODELS["openrouter"], messages=HELLO)
    assert limited.value.response.headers["retry-after"] == "1"
    world.stubs["opencode"].fail_next(Fault(kind="status", status=500))
    with pytest.raises(openai.InternalServerError) as broken:
        await client.chat.completions.create(model=MODELS["opencode"], messages=HELLO)
    assert (broken.value.status_code, broken.value.code) == (502, "upstream_error")
    assert not any(key in broken.value.message for key in KEYS.values())


@pytest.mark.parametrize(
    ("name", "fault", "error"),
    [
        ("kimi", Fault(kind="status", status=401), openai.InternalServerError),
        ("openrouter", Fault(kind="quota"), openai.RateLimitError),
        ("ollama_cloud", Fault(kind="quota"), openai.RateLimitError),
    ],
)
async def test_the_sdk_does_not_retry_what_a_retry_cannot_fix(
    world: World, name: str, fault: Fault, error: type[Exception]
) -> None:
    stub = world.stubs[name]
    stub.fail_always(fault)
    before = len(stub.chats)
    try:
        async with sdk(world.base, max_retries=2) as retrying:
            with pytest.raises(error) as caught:
                await retrying.chat.completions.create(model=MODELS[name], messages=HELLO)
    finally:
        stub.clear_faults()
    assert isinstance(caught.value, openai.APIStatusError)
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert len(stub.chats) == before + 1


@pytest.mark.parametrize("name", list(MODELS))
async def test_upstream_errors_raise_the_sdk_classes_for_every_provider(
    client: openai.AsyncOpenAI, world: World, name: str
) -> None:
    stub = world.stubs[name]
    stub.fail_next(Fault(kind="status", status=429, retry_after="3"))
    with pytest.raises(openai.RateLimitError) as limited:
        await client.chat.completions.create(model=MODELS[name], messages=HELLO)
    assert limited.value.code == "upstream_rate_limited"
    stub.fail_next(Fault(kind="status", status=503))
    with pytest.raises(openai.InternalServerError) as broken:
        await client.chat.completions.create(model=MODELS[name], messages=HELLO, stream=True)
    assert (broken.value.status_code, broken.value.code) == (502, "upstream_error")
    stub.fail_next(Fault(kind="status", status=400, message="bad parameter"))
    with pytest.raises(openai.BadRequestError) as rejected:
        await client.chat.completions.create(model=MODELS[name], messages=HELLO)
    assert rejected.value.code == "upstream_rejected" and "bad parameter" in rejected.value.message


@pytest.mark.parametrize("name", list(MODELS))
async def test_a_failure_mid_stream_raises_in_the_sdk(
    client: openai.AsyncOpenAI, world: World, name: str
) -> None:
    world.stubs[name].fail_next(Fault(kind="midstream_error", after=5))
    stream = await client.chat.completions.create(model=MODELS[name], messages=HELLO, stream=True)
    got = []
    with pytest.raises(openai.APIError) as caught:
        async for chunk in stream:
            got.append(chunk)
    assert got, "the stream had started"
    assert caught.value.body["code"] == "upstream_error"  # type: ignore[index]


async def test_service_auth_is_an_authentication_error() -> None:
    overrides = {"chatd.auth.tokens_env": "CHATD_TOKENS"}
    async with (
        stub_world(overrides, {"CHATD_TOKENS": "good-token"}) as world,
        sdk(world.base, api_key="wrong", max_retries=0) as bad,
        sdk(world.base, api_key="good-token") as good,
    ):
        with pytest.raises(openai.AuthenticationError) as caught:
            await bad.chat.completions.create(model=MODELS["ollama"], messages=HELLO)
        assert caught.value.code == "unauthorized"
        with pytest.raises(openai.AuthenticationError):
            await bad.models.list()
        answer = await good.chat.completions.create(model=MODELS["ollama"], messages=HELLO)
        assert answer.choices[0].message.content == reply_text(SAID)


async def test_the_surface_without_v1_and_through_the_lakehouse_gateway(world: World) -> None:
    # The gateway strips /v1: /v1/chat/completions reaches chatd's /chat/completions.
    edge_config = gateway_config({"/v1/chat": world.base, "/v1/models": world.base})
    async with running_gateway(edge_config) as edge:
        for client in (sdk(world.base, prefix=""), sdk(edge, max_retries=0)):
            async with client:
                answer = await client.chat.completions.create(model=MODELS["kimi"], messages=HELLO)
                assert answer.choices[0].message.content == reply_text(SAID)
                stream = await client.chat.completions.create(
                    model=MODELS["ollama"],
                    messages=HELLO,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                chunks = [chunk async for chunk in stream]
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                assert text == reply_text(SAID) and chunks[-1].usage is not None
                assert "local_fast" in {m.id async for m in client.models.list()}
