"""What every provider over the shared HTTP client has in common: its name,
its pooled client, opening and closing it, and its health probe."""

from __future__ import annotations

from lakehouse.errors import ConfigError
from lakehouse.upstreams.contract import ProviderContext
from lakehouse.upstreams.http import HTTPClient


class HTTPProvider:
    """The base of a provider plugin: subclasses add ``chat`` and ``stream``.

    With ``bearer`` the context's key is required (a ConfigError names the
    provider at start-up otherwise) and sent as ``Authorization: Bearer``.
    ``probe`` GETs ``probe_path`` within ``probe_timeout`` seconds; an empty
    path means nothing free to ask, so the provider counts as healthy.
    """

    probe_path = ""
    probe_timeout = 5.0

    def __init__(self, ctx: ProviderContext, *, bearer: bool = False) -> None:
        if bearer and not ctx.key:
            raise ConfigError("this provider needs a key")
        self.name = ctx.name
        self._key = ctx.key
        headers = {"Authorization": f"Bearer {ctx.key}"} if bearer else None
        self._http = HTTPClient(ctx, headers)

    async def start(self) -> None:
        await self._http.start()

    async def close(self) -> None:
        await self._http.close()

    async def probe(self) -> bool:
        return await self._http.probe(self.probe_path, self.probe_timeout)
