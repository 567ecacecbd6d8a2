"""What every provider over the shared HTTP client has in common: its name,
its key, its pooled client, opening and closing it, and its health probe."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

from lakehouse.errors import ConfigError
from lakehouse.upstreams.contract import PluginOptions, ProviderContext
from lakehouse.upstreams.http import HTTPClient

Auth = Callable[[str], Mapping[str, str]]
Options = TypeVar("Options", bound=PluginOptions)


def options_as(ctx: ProviderContext, kind: type[Options]) -> Options:
    """The context's options (``kind``'s defaults when it has none); a
    ConfigError when they are some other client's."""
    options = ctx.options if ctx.options is not None else kind()
    if not isinstance(options, kind):
        raise ConfigError(f"options must be a {kind.__name__}")
    return options


def bearer(key: str) -> Mapping[str, str]:
    return {"Authorization": f"Bearer {key}"}


class HTTPProvider:
    """The base of a provider plugin: subclasses add ``chat`` and ``stream``.

    ``auth`` makes the context's key required (a ConfigError names the
    provider at start-up otherwise) and gives the headers that carry it.
    ``http``: a session shared with the provider that owns it, which starts
    and closes it; it carries no key of ours, so the auth headers go with
    each request (``self._auth``); an own session carries them itself.
    ``probe`` GETs ``probe_path`` within ``probe_timeout`` seconds; an empty
    path means nothing free to ask, so the provider counts as healthy.
    """

    probe_path = ""
    probe_timeout = 5.0

    def __init__(
        self, ctx: ProviderContext, *, auth: Auth | None = None, http: HTTPClient | None = None
    ) -> None:
        headers: Mapping[str, str] | None = None
        if auth is not None:
            if not ctx.key:
                raise ConfigError("this provider needs a key")
            headers = auth(ctx.key)
        self.name = ctx.name
        self._key = ctx.key
        self._auth = headers if http is not None else None
        self._http = http or HTTPClient(ctx, headers)

    async def start(self) -> None:
        await self._http.start()

    async def close(self) -> None:
        await self._http.close()

    async def probe(self) -> bool:
        return await self._http.probe(self.probe_path, self.probe_timeout, self._auth)
