"""The lakehouse.toml the Go services run with: its flat keys, read as chatd's.

The Go chatd read ``[chatd]`` flat (``ollama_url``, ``<provider>_key_env``,
``<provider>_key_file``) and the Go gateway read one ``<service>_url`` per
backing service in ``[gateway]``. That file has to start chatd unchanged, so
those exact names are taken off the raw tables before the strict decoder
sees them: the ``[chatd]`` ones become ``[chatd.providers.<name>]`` entries,
the ``[gateway]`` ones are kept aside for ``lakehouse.gateway.legacy``. Any
other name is left in place, so a misspelling still fails as an unknown key.
``bind`` and ``timeout_secs`` mean in chatd what they meant in Go, so they
need no translation.
"""

from __future__ import annotations

import logging
from types import MappingProxyType
from typing import Any

import msgspec

from lakehouse.errors import ConfigError

# The Go chatd's keyless default provider; with any flat key present it is
# registered, as Go always did.
LOCAL = "ollama"
KEYED_PROVIDERS = ("ollama_cloud", "openrouter", "opencode", "kimi")
# The Go gateway's backing services, in its route table's order.
GATEWAY_SERVICES = (
    "storaged",
    "catalogd",
    "ingestd",
    "queryd",
    "vectord",
    "embedd",
    "pathwayd",
    "matrixd",
    "observerd",
    "chatd",
)

# Flat [chatd] key → (provider table, key in that table).
CHATD_KEYS = MappingProxyType(
    {
        "ollama_url": (LOCAL, "base_url"),
        **{f"{p}_key_env": (p, "key_env") for p in KEYED_PROVIDERS},
        **{f"{p}_key_file": (p, "key_file") for p in KEYED_PROVIDERS},
    }
)
GATEWAY_KEYS = tuple(f"{service}_url" for service in GATEWAY_SERVICES)


class Legacy(msgspec.Struct, kw_only=True):
    """What the flat keys of one config file became."""

    # (legacy key, its current spelling), in file order.
    renamed: list[tuple[str, str]] = []
    # The Go gateway's "<service>_url" keys as written.
    gateway_urls: dict[str, str] = {}

    def spelled(self, key: str) -> str:
        """The key as the file spells it: errors name what the operator wrote."""
        for old, new in self.renamed:
            if new == key:
                return old
        return key


def is_legacy(dotted: str) -> bool:
    """Whether a dotted key (``--set``) is one of the Go names."""
    table, _, key = dotted.partition(".")
    return (table == "chatd" and key in CHATD_KEYS) or (table == "gateway" and key in GATEWAY_KEYS)


def translate(data: dict[str, Any], source: str) -> Legacy:
    """Take the legacy keys off ``data`` (the whole file, as plain dicts)."""
    legacy = Legacy()
    chatd = data.get("chatd")
    if isinstance(chatd, dict):
        _chatd(chatd, legacy, source)
    gateway = data.get("gateway")
    if isinstance(gateway, dict):
        _gateway(gateway, legacy, source)
    return legacy


def _string(table: str, key: str, value: Any, source: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(
            f"{source}: Expected `str`, got `{type(value).__name__}` at `{table}.{key}`"
        )
    return value


def _chatd(chatd: dict[str, Any], legacy: Legacy, source: str) -> None:
    flat = [key for key in chatd if key in CHATD_KEYS]
    if not flat:
        return
    providers = chatd.setdefault("providers", {})
    if not isinstance(providers, dict):
        return  # the decoder names `chatd.providers` as the wrong type
    providers.setdefault(LOCAL, {})
    for key in flat:
        value = _string("chatd", key, chatd.pop(key), source)
        name, field = CHATD_KEYS[key]
        table = providers.setdefault(name, {})
        if not isinstance(table, dict):
            return  # likewise, for `chatd.providers.<name>`
        modern = f"chatd.providers.{name}.{field}"
        if field in table and not _same(field, table[field], value):
            raise ConfigError(
                f"{source}: `chatd.{key}` = {value!r} and `{modern}` = {table[field]!r} "
                "disagree; keep one of them"
            )
        table[field] = value
        legacy.renamed.append((f"chatd.{key}", modern))


def _same(field: str, current: Any, value: str) -> bool:
    if field == "base_url" and isinstance(current, str):
        return current.rstrip("/") == value.rstrip("/")
    return bool(current == value)


def _gateway(gateway: dict[str, Any], legacy: Legacy, source: str) -> None:
    flat = [key for key in gateway if key in GATEWAY_KEYS]
    if not flat:
        return
    if "routes" in gateway:
        raise ConfigError(
            f"{source}: `gateway.routes` and the Go gateway's `gateway.{flat[0]}` are both "
            "set; use one form (routes, or every <service>_url)"
        )
    for key in flat:
        legacy.gateway_urls[key] = _string("gateway", key, gateway.pop(key), source)


def log_renames(legacy: Legacy, log: logging.Logger) -> None:
    """One line per legacy ``[chatd]`` key read, naming its current spelling."""
    for old, new in legacy.renamed:
        log.warning("legacy key `%s` read as `%s`", old, new)
