"""chatd's configuration: ``conf/lakehouse.toml`` decoded into typed Structs.

The file is the lakehouse's shared one, so tables that belong to other
services are ignored; inside the tables chatd owns (``[chatd]``,
``[models]``, ``[gateway]``) every key is checked and a misspelled or
mistyped one stops start-up with its path.

A little over 350 lines: every table's Struct, its defaults and the checks
that need more than one key stay beside each other, so a key's type,
default and rule are read in one place.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec
import tomlkit
import tomlkit.exceptions

from lakehouse.errors import ConfigError
from lakehouse.legacy_config import Legacy, is_legacy, translate

SECONDS = 1.0
MIB = 1024 * 1024

Positive = Annotated[float, msgspec.Meta(gt=0)]

# Defaults the dispatcher also falls back on (a provider built without a
# table, a Policy built without a config).
MAX_CONCURRENCY = 256
MAX_QUEUE = 512
DEADLINE = 600 * SECONDS


class Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class ProviderConfig(Strict):
    # The plugin file in a plugin folder; defaults to the table's own name,
    # so one plugin can back two tables.
    plugin: str | None = None
    # As the provider documents it; the plugin's default when omitted.
    base_url: str | None = None
    # Several hosts of one provider instead of base_url: a list (hosts
    # named by position, "0", "1", ...) or a table of name = URL.
    base_urls: list[str] | dict[str, str] | None = None
    key_env: str = ""
    key_file: str = ""
    # Sent on every upstream call (attribution, an operator-chosen User-Agent).
    headers: dict[str, str] = {}
    # Validated by the plugin's own options Struct.
    options: dict[str, Any] = {}
    # Per-provider override of [chatd].timeout_secs.
    timeout_secs: Positive | None = None
    # Backpressure: calls in flight at once, and how many more may wait.
    max_concurrency: Annotated[int, msgspec.Meta(ge=1)] = MAX_CONCURRENCY
    max_queue: Annotated[int, msgspec.Meta(ge=0)] = MAX_QUEUE


class ServerConfig(Strict):
    workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    # Time in-flight requests get after SIGTERM; LLM calls are long.
    graceful_timeout_secs: Annotated[float, msgspec.Meta(ge=0)] = 60 * SECONDS
    keep_alive_secs: Positive = 75 * SECONDS
    # Hypercorn's default (1,000) sends GOAWAY to busy h2 clients.
    keep_alive_max_requests: Annotated[int, msgspec.Meta(ge=1)] = 1_000_000
    h2_max_concurrent_streams: Annotated[int, msgspec.Meta(ge=1)] = 256
    # HTTP/1.1: a request's head must arrive within this of its first byte,
    # and its body never pause longer (else 408 and close); see slow_clients.
    read_timeout_secs: Positive = 30 * SECONDS
    # The listen queue; Hypercorn's 100 overflows when a pool of 200
    # clients connects at once (the kernel caps it at net.core.somaxconn).
    backlog: Annotated[int, msgspec.Meta(ge=1)] = 1024
    # An HTTP/2 response send blocked this long means the peer is gone
    # (works around a Hypercorn 0.18 h2 hang; see callers.send_stall); 0: off.
    send_stall_secs: Annotated[float, msgspec.Meta(ge=0)] = 10 * SECONDS
    # Where workers (> 1) keep Prometheus multiprocess files; emptied at
    # start-up. Default: a fresh folder under the system temp dir.
    metrics_dir: str | None = None
    # chatd's tuned stack: Hypercorn connections with one keep-alive watcher
    # and one send() per loop turn, the Date header made once a second
    # (lakehouse.connections, lakehouse.server), and upstream calls without
    # ClientSession's request layer (lakehouse.upstreams.lean). false: the
    # libraries' stock paths, ~20% more CPU per request. Either way a
    # library version the contract tests did not pass on runs stock, with
    # a warning (UPGRADING.md).
    tuned: bool = True
    certfile: str | None = None
    keyfile: str | None = None


class RetryConfig(Strict):
    # Further tries of the same provider after a retryable failure.
    attempts: Annotated[int, msgspec.Meta(ge=0, le=10)] = 1
    backoff_secs: Annotated[float, msgspec.Meta(ge=0)] = 0.25 * SECONDS
    max_backoff_secs: Annotated[float, msgspec.Meta(ge=0)] = 4 * SECONDS
    # An upstream's Retry-After is honoured up to this; longer waits move
    # on to the next fallback instead.
    max_retry_after_secs: Annotated[float, msgspec.Meta(ge=0)] = 10 * SECONDS


class AuthConfig(Strict):
    # None: on when any token is configured. Off on a non-loopback bind
    # logs a warning at start-up.
    enabled: bool | None = None
    # Tokens: comma-separated in this variable, and/or one per line in the file.
    tokens_env: str = "CHATD_TOKENS"
    tokens_file: str = ""
    # Paths answered without a token.
    exempt: list[str] = msgspec.field(default_factory=lambda: ["/health", "/ready", "/metrics"])


class ChatdConfig(Strict):
    bind: str = "127.0.0.1:3220"
    timeout_secs: Positive = 180 * SECONDS
    max_request_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 4 * MIB
    default_provider: str = "ollama"
    # Model-name suffixes that name a provider outright; a suffix whose
    # provider is not registered answers 404 rather than falling through.
    suffix_routes: dict[str, str] = msgspec.field(
        default_factory=lambda: {":cloud": "ollama_cloud"}
    )
    # Folders searched for plugin files, in order and before the built-in
    # plugins/ folder (so a file here overrides a built-in of its name);
    # relative paths are taken from the config file's folder.
    plugin_dirs: list[str] = []
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # With log_level "debug": also log message contents (redacted of keys).
    log_bodies: bool = False
    # Seconds between health probes of every provider; 0 turns probing off.
    probe_interval_secs: Annotated[float, msgspec.Meta(ge=0)] = 15 * SECONDS
    # Consecutive failed calls after which a provider's breaker opens, and
    # how long it stays open before one trial call.
    failure_threshold: Annotated[int, msgspec.Meta(ge=1)] = 5
    cooldown_secs: Annotated[float, msgspec.Meta(ge=0)] = 30 * SECONDS
    # The longest a request may take, retries and fallbacks included; a
    # caller may ask for less (X-Chatd-Deadline header or deadline_secs).
    deadline_secs: Positive = DEADLINE
    # On the OpenAI SSE surface: a ``: keep-alive`` comment after this many
    # seconds without a chunk, so idle timeouts of clients and proxies do
    # not cut a stream while a model thinks in silence; 0 turns them off.
    sse_keepalive_secs: Annotated[float, msgspec.Meta(ge=0)] = 15 * SECONDS
    retry: RetryConfig = msgspec.field(default_factory=RetryConfig)
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    providers: dict[str, ProviderConfig] = {}
    fallbacks: dict[str, list[str]] = {}


class GatewayConfig(Strict):
    bind: str = "127.0.0.1:3110"
    # Path prefix (e.g. "/v1/chat") → upstream origin; "/v1" is stripped.
    routes: dict[str, str] = {}
    timeout_secs: Positive = 600 * SECONDS


class Config(msgspec.Struct, kw_only=True):
    chatd: ChatdConfig = msgspec.field(default_factory=ChatdConfig)
    # Tier name → model id; lists (e.g. weak_models) belong to other services.
    models: dict[str, str | list[str]] = {}
    gateway: GatewayConfig | None = None
    # Where the config came from: relative plugin_dirs are taken from here.
    source_dir: str = "."
    # The Go services' flat keys the file used (see lakehouse.legacy_config).
    legacy: Legacy = msgspec.field(default_factory=Legacy)

    @property
    def tiers(self) -> dict[str, str]:
        return {k: v for k, v in self.models.items() if isinstance(v, str)}


def default_config_path() -> Path:
    env = os.environ.get("LAKEHOUSE_CONFIG")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "conf" / "lakehouse.toml"


def load(path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return parse(text, source=str(path), overrides=overrides)


def add_cli_options(parser: argparse.ArgumentParser, table: str) -> None:
    """The options ``bin/chatd`` and ``bin/chatd gateway`` share; ``table``
    is the one whose ``bind`` ``--bind`` overrides."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML config (default: $LAKEHOUSE_CONFIG or conf/lakehouse.toml)",
    )
    parser.add_argument("--bind", help=f"HOST:PORT to listen on (overrides [{table}].bind)")
    parser.add_argument("--workers", type=int, help="worker processes (overrides config)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help=f"override a config key, e.g. {table}.timeout_secs=30",
    )


def parse_overrides(pairs: list[str]) -> dict[str, object]:
    """``--set KEY=VALUE`` pairs: the value is JSON, else a plain string."""
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    *tables, last = dotted.split(".")
    node = data
    for name in tables:
        child = node.setdefault(name, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override `{dotted}`: `{name}` is not a table")
        node = child
    node[last] = value


def parse(
    text: str, *, source: str = "<config>", overrides: Mapping[str, Any] | None = None
) -> Config:
    """Decode and check a config; ``overrides`` maps dotted keys (e.g.
    ``chatd.providers.ollama.base_url``) to values set before checking."""
    try:
        data = tomlkit.parse(text).unwrap()
    except tomlkit.exceptions.TOMLKitError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    # Overrides in the Go spelling join the file's; the rest come after the
    # translation, so the current spelling wins over the file's Go keys.
    later = dict(overrides or {})
    for dotted in [key for key in later if is_legacy(key)]:
        _set(data, dotted, later.pop(dotted))
    legacy = translate(data, source)
    for dotted, value in later.items():
        _set(data, dotted, value)
    owned: dict[str, Any] = {k: data[k] for k in ("chatd", "models", "gateway") if k in data}
    try:
        _check_entries(owned)
        try:
            config = msgspec.convert(owned, Config, strict=True)
        except msgspec.ValidationError as exc:
            raise ConfigError(describe(exc)) from None
        config.legacy = legacy
        _check(config)
    except ConfigError as exc:
        raise ConfigError(f"{_origin(str(exc), source, overrides)}: {exc}") from None
    config.source_dir = str(Path(source).resolve().parent)
    return config


def _origin(message: str, source: str, overrides: Mapping[str, Any] | None) -> str:
    """Where the key a message names came from: ``--set KEY`` when an
    override set it (or a table around it), else the file."""
    keys = re.findall(r"`([^`]*)`", message)
    if keys:
        key = keys[-1] if message.startswith(("Expected", "Invalid")) else keys[0]
        for dotted in overrides or {}:
            if key == dotted or key.startswith(dotted + ".") or dotted.startswith(key + "."):
                return f"--set {dotted}"
    return source


_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_FIELD = re.compile(r"^Object (?:contains unknown|missing required) field `(?P<name>[^`]*)`")


def describe(exc: msgspec.ValidationError, root: str = "") -> str:
    """msgspec's "... - at `$.chatd`" as TOML users think of it: a dotted
    key (``chatd.timeout_sec``), naming the unknown or missing key itself."""
    match = _AT.match(str(exc))
    assert match is not None
    what, path = match.group("what"), (match.group("path") or "")
    # "$.a[0].b" → "a[0].b" under root
    key = ".".join(p for p in (root, path.lstrip(".")) if p)
    field = _FIELD.match(what)
    if field:
        key = ".".join(p for p in (key, field.group("name")) if p)
        kind = "unknown key" if "unknown" in what else "missing key"
        return f"{kind} `{key}`"
    return f"{what} at `{key or '(top)'}`"


# Tables keyed by names the operator chooses: msgspec would call the key
# `[...]`, so each entry is checked alone first to name it.
_KEYED: tuple[tuple[tuple[str, ...], Any], ...] = (
    (("chatd", "providers"), ProviderConfig),
    (("chatd", "fallbacks"), list[str]),
    (("chatd", "suffix_routes"), str),
    (("models",), str | list[str]),
    (("gateway", "routes"), str),
)


def _check_entries(owned: dict[str, Any]) -> None:
    for path, kind in _KEYED:
        node: Any = owned
        for name in path:
            node = node.get(name) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        for key, value in node.items():
            try:
                msgspec.convert(value, kind, strict=True)
            except msgspec.ValidationError as exc:
                where = ".".join((*path, _toml_key(key)))
                raise ConfigError(describe(exc, where)) from None


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else f'"{key}"'


def check_url(url: str, key: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"`{key}` = {url!r}: needs an http(s) scheme and a host")
    return url.rstrip("/")


def _check(config: Config) -> None:
    chatd = config.chatd
    for name, provider in chatd.providers.items():
        if provider.base_url is not None:
            check_url(provider.base_url, config.legacy.spelled(f"chatd.providers.{name}.base_url"))
        if provider.base_urls is not None:
            _check_hosts(name, provider)
    for name, chain in chatd.fallbacks.items():
        if name in chain:
            raise ConfigError(f"`chatd.fallbacks.{name}` lists itself")
    for key, url in config.legacy.gateway_urls.items():
        check_url(url, f"gateway.{key}")
    if config.gateway is not None:
        for prefix, url in config.gateway.routes.items():
            if not prefix.startswith("/"):
                raise ConfigError(f"`gateway.routes` key {prefix!r} must start with /")
            check_url(url, f"gateway.routes.{prefix}")


_HOST_NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")
MAX_HOSTS = 64


def host_urls(provider: ProviderConfig) -> dict[str, str]:
    """A pool's hosts, name → URL (names are positions for a list)."""
    urls = provider.base_urls or {}
    return dict(urls) if isinstance(urls, dict) else {str(i): u for i, u in enumerate(urls)}


def _check_hosts(name: str, provider: ProviderConfig) -> None:
    key = f"chatd.providers.{name}.base_urls"
    if provider.base_url is not None:
        raise ConfigError(f"`{key}` and `chatd.providers.{name}.base_url` are both set")
    hosts = host_urls(provider)
    if not 1 <= len(hosts) <= MAX_HOSTS:
        raise ConfigError(f"`{key}` needs 1 to {MAX_HOSTS} hosts")
    for host, url in hosts.items():
        if not _HOST_NAME.fullmatch(host):
            raise ConfigError(
                f"`{key}`: host name {host!r} must be 1-32 letters, digits, `_`, `.` or `-`"
            )
        check_url(url, f"{key}.{host}")
