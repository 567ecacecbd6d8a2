from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from lakehouse.errors import ConfigError, ProviderNotFound
from lakehouse.registry import Registry, build_registry
from lakehouse.wire import ChatRequest, ChatResponse
from tests.support import make_config, running_chatd


class Fake:
    def __init__(self, name: str) -> None:
        self.name = name

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def probe(self) -> bool:
        return True

    async def chat(self, request: ChatRequest, model: str) -> ChatResponse:
        return ChatResponse(
            model=model,
            provider=self.name,
            content="",
            done_reason="stop",
            prompt_tokens=0,
            completion_tokens=0,
        )


def registry(
    *names: str, default: str | None = "ollama", configured: tuple[str, ...] = ()
) -> Registry:
    return Registry(
        {n: Fake(n) for n in names},
        default=default,
        configured=frozenset(configured),
        suffix_routes={":cloud": "ollama_cloud"},
    )


ALL = ("ollama", "ollama_cloud", "openrouter", "opencode", "kimi")
LONG = "m" * 10_000

ROUTES = [
    ("qwen3.5:latest", "ollama", "qwen3.5:latest"),
    ("ollama/qwen3.5:latest", "ollama", "qwen3.5:latest"),
    ("kimi-k2.6:cloud", "ollama_cloud", "kimi-k2.6:cloud"),
    ("KIMI:CLOUD", "ollama_cloud", "KIMI:CLOUD"),
    ("ollama_cloud/kimi-k2.6", "ollama_cloud", "kimi-k2.6"),
    ("ollama_cloud/kimi-k2.6:cloud", "ollama_cloud", "kimi-k2.6:cloud"),
    ("openrouter/anthropic/claude-opus-4-7", "openrouter", "anthropic/claude-opus-4-7"),
    ("opencode/glm-5.2", "opencode", "glm-5.2"),
    ("kimi/kimi-for-coding", "kimi", "kimi-for-coding"),
    ("anthropic/claude-3.5", "ollama", "anthropic/claude-3.5"),
    ("a/b/c", "ollama", "a/b/c"),
    ("/x", "ollama", "/x"),
    ("x/", "ollama", "x/"),
    ("openrouter/x:cloud", "ollama_cloud", "openrouter/x:cloud"),
    ("my-cloud-model", "ollama", "my-cloud-model"),
    ("qwen3:480b-cloud", "ollama", "qwen3:480b-cloud"),
    ("模型/名字", "ollama", "模型/名字"),
    ("ollama/模型", "ollama", "模型"),
    (LONG, "ollama", LONG),
    ("openrouter/" + LONG, "openrouter", LONG),
]


@pytest.mark.parametrize(("model", "provider", "upstream"), ROUTES)
def test_routing_table(model: str, provider: str, upstream: str) -> None:
    route = registry(*ALL).resolve(model)
    assert (route.provider.name, route.model) == (provider, upstream)


@pytest.mark.parametrize("model", ["", ":cloud", "ollama/", "openrouter/", "ollama_cloud/"])
def test_names_that_resolve_to_nothing(model: str) -> None:
    with pytest.raises(ProviderNotFound):
        registry(*ALL).resolve(model)


def test_cloud_suffix_never_falls_through_to_local() -> None:
    with pytest.raises(ProviderNotFound, match="ollama_cloud"):
        registry("ollama").resolve("kimi-k2.6:cloud")


def test_configured_provider_without_key_claims_its_prefix() -> None:
    reg = registry("ollama", configured=("openrouter",))
    with pytest.raises(ProviderNotFound, match="not registered"):
        reg.resolve("openrouter/anthropic/x")
    # An unconfigured prefix is just part of a model name.
    assert reg.resolve("nobody/x").provider.name == "ollama"


def test_no_default_means_404() -> None:
    with pytest.raises(ProviderNotFound):
        registry("openrouter", default=None).resolve("qwen3.5")
    with pytest.raises(ProviderNotFound):
        registry("openrouter", default="ollama").resolve("qwen3.5")
    assert registry("openrouter", default=None).resolve("openrouter/x").model == "x"


def test_names_are_sorted() -> None:
    assert registry("ollama", "kimi", "openrouter").names() == ["kimi", "ollama", "openrouter"]


PLUGIN_FILE = """
from lakehouse.plugin_api import ChatRequest, ChatResponse, Plugin, PluginOptions, ProviderContext

class EchoOptions(PluginOptions):
    greeting: str = "hello"

class Echo:
    def __init__(self, ctx: ProviderContext) -> None:
        self.name = ctx.name
        self.greeting = ctx.options.greeting
        self.base_url = ctx.base_url
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def probe(self) -> bool:
        return True
    async def chat(self, request: ChatRequest, model: str) -> ChatResponse:
        return ChatResponse(model=model, provider=self.name,
                            content=f"{self.greeting} from {self.base_url}",
                            done_reason="stop", prompt_tokens=1, completion_tokens=2)
    async def stream(self, request: ChatRequest, model: str):  # type: ignore[no-untyped-def]
        yield await self.chat(request, model)

PLUGIN = Plugin(build=Echo, default_base_url="http://echo.invalid", options=EchoOptions,
                needs_key=True)
"""


def write_plugin(folder: Path, name: str, text: str = PLUGIN_FILE) -> None:
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(text)


@pytest.mark.anyio
async def test_new_provider_is_one_file_and_one_table(tmp_path: Path) -> None:
    write_plugin(tmp_path / "extra", "echo")
    (tmp_path / "chatd.toml").write_text(
        '[chatd]\nplugin_dirs = ["extra"]\n'
        '[chatd.providers.echo]\nkey_env = "ECHO_KEY"\noptions = { greeting = "hi" }\n'
        '[chatd.providers.echo2]\nplugin = "echo"\nkey_env = "ECHO_KEY"\n'
        'base_url = "http://second.invalid"\n'
    )
    from lakehouse import config as configuration

    config = configuration.load(tmp_path / "chatd.toml")
    body = {"model": "echo/some-model", "messages": [{"role": "user", "content": "x"}]}
    async with running_chatd(config, {"ECHO_KEY": "k" * 20}) as base, aiohttp.ClientSession() as s:
        async with s.get(base + "/chat/providers") as resp:
            assert await resp.json() == {"providers": {"echo": True, "echo2": True}}
        async with s.post(base + "/chat", json=body) as resp:
            got = await resp.json()
            assert resp.status == 200
            assert (got["provider"], got["model"]) == ("echo", "some-model")
            assert got["content"] == "hi from http://echo.invalid"
        body["model"] = "echo2/other"
        async with s.post(base + "/chat", json=body) as resp:
            got = await resp.json()
            assert got["content"] == "hello from http://second.invalid"


def test_plugin_needing_a_key_without_one_is_not_registered(tmp_path: Path) -> None:
    write_plugin(tmp_path / "extra", "echo")
    text = (
        f'[chatd]\nplugin_dirs = ["{tmp_path / "extra"}"]\n[chatd.providers.echo]\nkey_env = "E"\n'
    )
    reg = build_registry(make_config(text), {})
    assert reg.names() == []
    with pytest.raises(ProviderNotFound):
        reg.resolve("echo/x")


@pytest.mark.parametrize(
    ("source", "table", "needle"),
    [
        (None, 'plugin = "nope"', "provider `bad`: plugin `nope` not found"),
        (
            "raise RuntimeError('boom')",
            "",
            "provider `bad`: plugin `bad` failed to load: RuntimeError: boom",
        ),
        ("x = 1", "", "provider `bad`: "),
        ("import no_such_module_here", "", "ModuleNotFoundError"),
        (PLUGIN_FILE, "options = { greeting = 3 }", "`chatd.providers.bad.options.greeting`"),
        (PLUGIN_FILE, "options = { colour = 'red' }", "`chatd.providers.bad.options.colour`"),
        (PLUGIN_FILE, "base_url = 'ftp://x'", "chatd.providers.bad.base_url"),
        (
            PLUGIN_FILE.replace(
                "self.greeting = ctx.options.greeting", "raise ValueError('no way')"
            ),
            "",
            "failed to build: ValueError: no way",
        ),
    ],
)
def test_broken_plugin_stops_startup_naming_the_provider(
    tmp_path: Path, source: str | None, table: str, needle: str
) -> None:
    if source is not None:
        write_plugin(tmp_path, "bad", source)
    text = f'[chatd]\nplugin_dirs = ["{tmp_path}"]\n[chatd.providers.bad]\nkey_env = "K"\n{table}\n'
    with pytest.raises(ConfigError) as info:
        build_registry(make_config(text), {"K": "secret-key-value"})
    assert needle in str(info.value)
    assert "\n" not in str(info.value)
    assert "secret-key-value" not in str(info.value)
