"""The provider registry: which providers exist, and which one a model
name goes to.

Routing, in order (the README's model-name table):
1. an empty name resolves to nothing (404);
2. a configured suffix (``:cloud``) names its provider outright; when that
   provider is not registered the answer is 404, never local Ollama;
3. a prefix before the first ``/`` that names a configured provider goes to
   it with the prefix stripped; a configured provider left unregistered (no
   key) answers 404;
4. anything else goes to the default provider, unchanged;
5. no default registered: 404.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from lakehouse.config import Config, host_urls
from lakehouse.errors import ConfigError, ProviderNotFound
from lakehouse.keys import Redactor, resolve_key
from lakehouse.loader import base_url, decode_options, load_plugin, plugin_dirs
from lakehouse.plugin_api import Plugin, Provider, ProviderContext
from lakehouse.upstreams.pool import HostPool


@dataclass(frozen=True)
class Route:
    provider: Provider
    # The name as the upstream wants it (routing prefix stripped).
    model: str


class Registry:
    def __init__(
        self,
        providers: Mapping[str, Provider],
        *,
        default: str | None,
        configured: frozenset[str] = frozenset(),
        suffix_routes: Mapping[str, str] | None = None,
        secrets: tuple[str, ...] = (),
    ) -> None:
        self._providers = dict(sorted(providers.items()))
        self._default = default
        # Names with a table in the config, registered or not: their prefix
        # is claimed even when the provider lacks a key.
        self._configured = configured | frozenset(self._providers)
        self._suffixes = tuple((s.lower(), p) for s, p in (suffix_routes or {}).items())
        self.redact = Redactor(secrets)

    def __iter__(self) -> Iterator[Provider]:
        return iter(self._providers.values())

    def __len__(self) -> int:
        return len(self._providers)

    def names(self) -> list[str]:
        return list(self._providers)

    def get(self, name: str) -> Provider | None:
        return self._providers.get(name)

    def resolve(self, model: str) -> Route:
        if not model:
            raise ProviderNotFound("empty model name")
        lowered = model.lower()
        for suffix, name in self._suffixes:
            if lowered.endswith(suffix):
                provider = self._providers.get(name)
                if provider is None:
                    raise ProviderNotFound(
                        f"model {_show(model)} has the {suffix} suffix but provider "
                        f"`{name}` is not registered"
                    )
                model = _strip_prefix(model, name)
                if len(model) == len(suffix):
                    raise ProviderNotFound(f"empty model name before {suffix}")
                return self._route(provider, model)
        prefix, sep, rest = model.partition("/")
        if sep and prefix in self._configured:
            provider = self._providers.get(prefix)
            if provider is None:
                raise ProviderNotFound(
                    f"provider `{prefix}` is configured but not registered (no key)"
                )
            return self._route(provider, rest)
        if self._default is None or self._default not in self._providers:
            raise ProviderNotFound(f"no provider for model {_show(model)} and no default")
        return self._route(self._providers[self._default], model)

    @staticmethod
    def _route(provider: Provider, model: str) -> Route:
        if not model:
            raise ProviderNotFound(f"empty model name for provider `{provider.name}`")
        return Route(provider, model)


def _strip_prefix(model: str, name: str) -> str:
    prefix = name + "/"
    return model[len(prefix) :] if model.startswith(prefix) else model


def _show(model: str, limit: int = 80) -> str:
    return repr(model if len(model) <= limit else model[:limit] + "…")


def _build(plugin: Plugin, ctx: ProviderContext) -> Provider:
    name = ctx.name
    try:
        provider = plugin.build(ctx)
    except ConfigError as exc:
        raise ConfigError(f"provider `{name}`: {exc}") from None
    except Exception as exc:
        raise ConfigError(
            f"provider `{name}`: plugin failed to build: {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(provider, Provider):
        raise ConfigError(f"provider `{name}`: plugin built something that is not a Provider")
    provider.name = name
    return provider


def build_registry(config: Config, environ: Mapping[str, str] | None = None) -> Registry:
    """Load, check and build every configured provider; providers that need a
    key and have none are left out."""
    env = os.environ if environ is None else environ
    chatd = config.chatd
    dirs = plugin_dirs(config)
    providers: dict[str, Provider] = {}
    secrets: list[str] = []
    for name, table in chatd.providers.items():
        plugin = load_plugin(name, table, dirs)
        options = decode_options(name, plugin, table)
        url = base_url(name, plugin, table)
        key = resolve_key(table.key_env, table.key_file, env)
        if key is None and plugin.needs_key:
            continue
        if key is not None:
            secrets.append(key)
        ctx = ProviderContext(
            name=name,
            base_url=url,
            key=key,
            timeout=table.timeout_secs or chatd.timeout_secs,
            headers=dict(table.headers),
            options=options,
        )
        if table.base_urls is None:
            providers[name] = _build(plugin, ctx)
            continue
        hosts = [
            (host, _build(plugin, dataclasses.replace(ctx, base_url=host_url)))
            for host, host_url in host_urls(table).items()
        ]
        providers[name] = HostPool(
            name, hosts, failure_threshold=chatd.failure_threshold, cooldown=chatd.cooldown_secs
        )
    return Registry(
        providers,
        default=chatd.default_provider or None,
        configured=frozenset(chatd.providers),
        suffix_routes=chatd.suffix_routes,
        secrets=tuple(secrets),
    )
