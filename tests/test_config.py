from __future__ import annotations

from pathlib import Path

import pytest

from lakehouse import config as configuration
from lakehouse.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_config_loads_with_real_public_urls() -> None:
    config = configuration.load(ROOT / "conf" / "lakehouse.toml")
    urls = {name: p.base_url for name, p in config.chatd.providers.items()}
    assert urls == {
        "ollama": "http://localhost:11434",
        "ollama_cloud": "https://ollama.com",
        "openrouter": "https://openrouter.ai/api/v1",
        "opencode": "https://opencode.ai/zen/v1",
        "kimi": "https://api.kimi.com/coding/v1",
    }
    assert config.chatd.timeout_secs == 180
    assert config.chatd.max_request_bytes == 4 * 1024 * 1024
    assert config.tiers["cloud_judge"] == "kimi-k2.6:cloud"
    assert "weak_models" not in config.tiers
    assert config.chatd.fallbacks["local_judge"] == ["cloud_judge", "frontier_free"]


def test_defaults_when_empty() -> None:
    config = configuration.parse("")
    assert config.chatd.bind == "127.0.0.1:3220"
    assert config.chatd.default_provider == "ollama"
    assert config.chatd.suffix_routes == {":cloud": "ollama_cloud"}
    assert config.chatd.server.keep_alive_max_requests >= 100_000


def test_other_services_tables_are_ignored() -> None:
    config = configuration.parse('[storaged]\nbind = "x"\n[s3]\nbucket = "b"\n')
    assert config.chatd.bind == "127.0.0.1:3220"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[chatd]\ntimeout_sec = 3\n", "`chatd.timeout_sec`"),
        ('[chatd]\ntimeout_secs = "3"\n', "`chatd.timeout_secs`"),
        ("[chatd]\ntimeout_secs = -1\n", "`chatd.timeout_secs`"),
        ("[chatd]\nmax_request_bytes = 1.5\n", "`chatd.max_request_bytes`"),
        ('[chatd.providers.x]\nbase_url = "localhost:11434"\n', "chatd.providers.x.base_url"),
        ('[chatd.providers.x]\nbase_url = "http://"\n', "chatd.providers.x.base_url"),
        ("[chatd.providers.x]\nbogus = 1\n", "`chatd.providers.x.bogus`"),
        ("[chatd.server]\nworkers = 0\n", "`chatd.server.workers`"),
        ('[chatd.server]\ntuned = "no"\n', "`chatd.server.tuned`"),
        ('[chatd.fallbacks]\na = ["b", "a"]\n', "chatd.fallbacks.a"),
        ("[models]\nx = 3\n", "`models.x`"),
        ('[gateway.routes]\n"/v1/chat" = "127.0.0.1:3220"\n', "gateway.routes"),
        ("[chatd\n", "not valid TOML"),
    ],
)
def test_bad_config_names_the_key_in_one_line(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        configuration.parse(text, source="conf/x.toml")
    message = str(info.value)
    assert needle in message
    assert "\n" not in message
    assert message.startswith("conf/x.toml")


def test_overrides_set_dotted_keys_before_checking() -> None:
    config = configuration.parse(
        "[chatd]\ntimeout_secs = 5\n",
        overrides={"chatd.timeout_secs": 7, "chatd.providers.ollama.base_url": "http://h:1"},
    )
    assert config.chatd.timeout_secs == 7
    assert config.chatd.providers["ollama"].base_url == "http://h:1"
    with pytest.raises(ConfigError, match=r"chatd\.providers\.ollama\.base_url"):
        configuration.parse("", overrides={"chatd.providers.ollama.base_url": "nope"})


def test_missing_file_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        configuration.load(tmp_path / "absent.toml")


def test_default_config_path_prefers_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKEHOUSE_CONFIG", "/etc/x.toml")
    assert configuration.default_config_path() == Path("/etc/x.toml")
    monkeypatch.delenv("LAKEHOUSE_CONFIG")
    assert configuration.default_config_path() == ROOT / "conf" / "lakehouse.toml"


def test_set_pairs_take_json_else_a_string() -> None:
    assert configuration.parse_overrides(
        [
            "chatd.timeout_secs=30",
            'chatd.bind="0.0.0.0:1"',
            "chatd.log_level=debug",
            'chatd.plugin_dirs=["a"]',
        ]
    ) == {
        "chatd.timeout_secs": 30,
        "chatd.bind": "0.0.0.0:1",
        "chatd.log_level": "debug",
        "chatd.plugin_dirs": ["a"],
    }
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        configuration.parse_overrides(["novalue"])
