"""The Go lakehouse's lakehouse.toml, unchanged: its flat [chatd] keys read
as provider tables, everything else in it left alone or still strict."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from lakehouse import config as configuration
from lakehouse.errors import ConfigError, ProviderNotFound
from lakehouse.loader import base_url, load_plugin, plugin_dirs
from lakehouse.registry import build_registry
from lakehouse.stubs import StubUpstream
from tests.support import ROOT, builtin_plugin, make_config, running_chatd
from tests.test_cli import chatd

FIXTURE = ROOT / "tests" / "fixtures" / "go_lakehouse.toml"
OPENROUTER_KEY = "sk-or-v1-" + "e" * 40
KIMI_KEY = "sk-kimi-" + "f" * 40
OPENCODE_KEY = "sk-zen-" + "g" * 40
TIERS = {
    "local_fast": "qwen3.5:latest",
    "local_embed": "nomic-embed-text",
    "local_judge": "qwen3.5:latest",
    "local_review": "qwen3.5:latest",
    "cloud_judge": "kimi-k2.6:cloud",
    "cloud_review": "qwen3-coder:480b",
    "cloud_strong": "deepseek-v3.2",
    "frontier_review": "openrouter/anthropic/claude-opus-4-7",
    "frontier_arch": "openrouter/moonshotai/kimi-k2-0905",
    "frontier_strong": "openrouter/openai/gpt-5",
    "frontier_free": "opencode/claude-opus-4-7",
}
# In the fixture's order: the URL, then every key_env, then every key_file.
LEGACY_KEYS = [
    ("chatd.ollama_url", "chatd.providers.ollama.base_url"),
    *(
        (f"chatd.{p}_key_{kind}", f"chatd.providers.{p}.key_{kind}")
        for kind in ("env", "file")
        for p in ("ollama_cloud", "openrouter", "opencode", "kimi")
    ),
]


def deployed(tmp_path: Path, ollama_url: str | None = None) -> Path:
    """The fixture as installed on a host whose /etc/lakehouse is tmp_path:
    kimi's and opencode's keys in their .env files, ollama_cloud's nowhere."""
    text = FIXTURE.read_text().replace("/etc/lakehouse/", f"{tmp_path}/")
    if ollama_url:
        text = text.replace('ollama_url = "http://localhost:11434"', f'ollama_url = "{ollama_url}"')
    (tmp_path / "kimi.env").write_text(f'# Kimi For Coding\nexport KIMI_API_KEY="{KIMI_KEY}"\n')
    (tmp_path / "opencode.env").write_text(f"OPENCODE_API_KEY={OPENCODE_KEY}\n")
    (tmp_path / "openrouter.env").write_text("# set in the unit's environment instead\n")
    path = tmp_path / "lakehouse.toml"
    path.write_text(text)
    return path


def test_the_reference_file_passes_check_with_one_line_per_legacy_key() -> None:
    done = chatd("--config", str(FIXTURE), "--check")
    assert done.returncode == 0, done.stderr
    # No keys anywhere (the /etc/lakehouse files do not exist here): only
    # the local Ollama, as the Go chatd would have registered.
    assert "providers: ollama\n" in done.stdout
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert [line["msg"] for line in lines] == [
        f"legacy key `{old}` read as `{new}`" for old, new in LEGACY_KEYS
    ]
    assert {line["level"] for line in lines} == {"warning"}


def test_keys_come_from_the_environment_and_from_env_files(tmp_path: Path) -> None:
    path = deployed(tmp_path)
    done = chatd("--config", str(path), "--check", OPENROUTER_API_KEY=OPENROUTER_KEY)
    assert done.returncode == 0, done.stderr
    assert "providers: kimi, ollama, opencode, openrouter\n" in done.stdout
    for key in (OPENROUTER_KEY, KIMI_KEY, OPENCODE_KEY):
        assert key not in done.stdout + done.stderr


def test_providers_tiers_and_routing_of_the_reference_file(tmp_path: Path) -> None:
    config = configuration.load(deployed(tmp_path))
    registry = build_registry(config, {"OPENROUTER_API_KEY": OPENROUTER_KEY})
    assert registry.names() == ["kimi", "ollama", "opencode", "openrouter"]
    # Base URLs: ollama_url for Ollama, the plugins' own for the others.
    urls = {
        name: base_url(name, load_plugin(name, table, plugin_dirs(config)), table)
        for name, table in config.chatd.providers.items()
    }
    assert urls == {
        "ollama": "http://localhost:11434",
        **{
            name: builtin_plugin(name).default_base_url
            for name in ("ollama_cloud", "openrouter", "opencode", "kimi")
        },
    }
    assert config.chatd.timeout_secs == 180
    assert config.chatd.bind == "127.0.0.1:3220"
    assert config.tiers == TIERS
    assert config.models["weak_models"] == ["qwen3.5:latest", "qwen3:latest"]

    def routed(model: str) -> tuple[str, str]:
        route = registry.resolve(model)
        return route.provider.name, route.model

    assert routed("qwen3.5:latest") == ("ollama", "qwen3.5:latest")
    assert routed("ollama/qwen3.5:latest") == ("ollama", "qwen3.5:latest")
    assert routed(TIERS["frontier_review"]) == ("openrouter", "anthropic/claude-opus-4-7")
    assert routed(TIERS["frontier_free"]) == ("opencode", "claude-opus-4-7")
    assert routed("kimi/kimi-for-coding") == ("kimi", "kimi-for-coding")
    assert routed("anthropic/claude-3.5") == ("ollama", "anthropic/claude-3.5")
    # No Ollama Cloud key: its names are 404, never the local Ollama.
    with pytest.raises(ProviderNotFound):
        registry.resolve(TIERS["cloud_judge"])
    with pytest.raises(ProviderNotFound):
        registry.resolve("ollama_cloud/deepseek-v3.2")


@pytest.mark.anyio
async def test_a_tier_of_the_reference_file_reaches_its_upstream(tmp_path: Path) -> None:
    async with StubUpstream("ollama") as stub:
        config = configuration.load(
            deployed(tmp_path, ollama_url=stub.base_url), {"chatd.probe_interval_secs": 0}
        )
        async with running_chatd(config) as base, httpx.AsyncClient(base_url=base) as client:
            reply = await client.post(
                "/chat",
                json={"model": "local_judge", "messages": [{"role": "user", "content": "hi"}]},
            )
            listing = await client.get("/chat/providers")
    assert reply.status_code == 200, reply.text
    assert reply.json()["tier"] == "local_judge"
    assert [chat.json["model"] for chat in stub.chats] == ["qwen3.5:latest"]
    # No key in this process's environment: the cloud providers stay out.
    assert listing.json() == {"providers": {"kimi": True, "ollama": True, "opencode": True}}


def test_a_legacy_key_and_a_table_that_disagree_stop_start_up() -> None:
    text = '[chatd]\nkimi_key_env = "KIMI_API_KEY"\n[chatd.providers.kimi]\nkey_env = "MOONSHOT"\n'
    with pytest.raises(ConfigError) as err:
        make_config(text)
    message = str(err.value)
    assert "`chatd.kimi_key_env` = 'KIMI_API_KEY'" in message
    assert "`chatd.providers.kimi.key_env` = 'MOONSHOT'" in message
    assert "\n" not in message


def test_a_conflicting_url_names_both_keys() -> None:
    text = (
        '[chatd]\nollama_url = "http://10.0.0.5:11434"\n'
        '[chatd.providers.ollama]\nbase_url = "http://localhost:11434"\n'
    )
    with pytest.raises(ConfigError, match=r"`chatd.ollama_url`.*`chatd.providers.ollama.base_url`"):
        make_config(text)


def test_a_legacy_key_that_agrees_with_a_table_joins_it() -> None:
    text = (
        '[chatd]\nollama_url = "http://localhost:11434/"\nkimi_key_env = "KIMI_API_KEY"\n'
        '[chatd.providers.ollama]\nbase_url = "http://localhost:11434"\n'
        "[chatd.providers.kimi]\noptions = { drop_temperature = true }\n"
    )
    config = make_config(text)
    kimi = config.chatd.providers["kimi"]
    assert kimi.key_env == "KIMI_API_KEY"
    assert kimi.options == {"drop_temperature": True}
    assert config.legacy.renamed == [
        ("chatd.ollama_url", "chatd.providers.ollama.base_url"),
        ("chatd.kimi_key_env", "chatd.providers.kimi.key_env"),
    ]


def test_an_override_wins_over_a_legacy_key() -> None:
    # What --dev does when the file's Ollama is not reachable.
    config = make_config(
        '[chatd]\nollama_url = "http://localhost:11434"\n',
        overrides={"chatd.providers.ollama.base_url": "http://127.0.0.1:9"},
    )
    assert config.chatd.providers["ollama"].base_url == "http://127.0.0.1:9"


def test_an_override_may_use_the_go_spelling() -> None:
    text = '[chatd]\nollama_url = "http://localhost:11434"\n'
    config = make_config(text, overrides={"chatd.ollama_url": "http://10.0.0.5:11434"})
    assert config.chatd.providers["ollama"].base_url == "http://10.0.0.5:11434"
    config = make_config("[gateway]\n", overrides={"gateway.chatd_url": "http://10.0.0.5:3220"})
    assert config.legacy.gateway_urls == {"chatd_url": "http://10.0.0.5:3220"}


def test_only_legacy_keys_register_ollama() -> None:
    assert make_config('[chatd]\nbind = "127.0.0.1:1"\n').chatd.providers == {}
    config = make_config('[chatd]\nopenrouter_key_env = "OPENROUTER_API_KEY"\n')
    assert sorted(config.chatd.providers) == ["ollama", "openrouter"]
    assert config.chatd.providers["ollama"].base_url is None  # the plugin's default


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[chatd]\nolama_url = "http://localhost:11434"\n', "unknown key `chatd.olama_url`"),
        ('[chatd]\nkimi_key_envs = "K"\n', "unknown key `chatd.kimi_key_envs`"),
        ('[chatd]\nKIMI_KEY_ENV = "K"\n', "unknown key `chatd.KIMI_KEY_ENV`"),
        ('[chatd]\nmistral_key_env = "K"\n', "unknown key `chatd.mistral_key_env`"),
        ('[gateway]\nstorage_url = "http://127.0.0.1:1"\n', "unknown key `gateway.storage_url`"),
        ("[chatd]\nkimi_key_env = 5\n", "Expected `str`, got `int` at `chatd.kimi_key_env`"),
        ('[chatd]\nollama_url = "localhost:11434"\n', "`chatd.ollama_url`"),
        ('[gateway]\nchatd_url = "127.0.0.1:3220"\n', "`gateway.chatd_url`"),
        (
            '[gateway]\nchatd_url = "http://127.0.0.1:3220"\n'
            'routes = { "/v1/chat" = "http://127.0.0.1:3220" }\n',
            "`gateway.routes` and the Go gateway's `gateway.chatd_url` are both set",
        ),
    ],
)
def test_typos_and_bad_values_still_fail_naming_the_key(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        make_config(text)
    assert needle in str(err.value)


def migration_rows() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Migrating from the Go chatd", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| `")]


def test_the_readme_says_what_each_legacy_key_becomes() -> None:
    from lakehouse.legacy_config import CHATD_KEYS

    rows = migration_rows()
    for key, (provider, field) in CHATD_KEYS.items():
        row = [row for row in rows if f"`chatd.{key}`" in row.split(" | ")[0]]
        assert len(row) == 1, key
        becomes = row[0].split(" | ")[1]
        assert f"chatd.providers.{provider}." in becomes and field in becomes, row[0]
