"""One provider served by several hosts (``base_urls``): the lakehouse's
Ollama boxes, for one.

Each call goes to the available host with the fewest calls in flight,
ties taken in turn (round robin), so equal hosts share the load evenly
and a slow host, holding its calls longer, gets fewer new ones. Every host
has its own health: its probe verdict and a circuit breaker fed by its
calls (``lakehouse.health``). A call that could not connect (the request
was never sent) is tried on the next host before the error reaches the
dispatcher, so a host that dies costs no request while another is up.

The pool is itself a Provider: the dispatcher, its limits, retries and
fallbacks see one provider, available while any host is. Host names are
the config's (a ``base_urls`` table) or positions ("0", "1", ...), never
URLs, so they are safe as metric labels.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from lakehouse.errors import ChatdError, UpstreamConnectFailed
from lakehouse.health import Health
from lakehouse.plugin_api import Provider
from lakehouse.wire import ChatRequest, ChatResponse, StreamDelta

log = logging.getLogger("chatd.pool")

T = TypeVar("T")
Item = StreamDelta | ChatResponse


@dataclass
class Host:
    name: str
    provider: Provider
    in_flight: int = 0
    # Calls sent, and those that failed for the host's sake, so far.
    calls: int = 0
    failures: int = 0


@dataclass(frozen=True)
class HostState:
    available: bool
    in_flight: int
    calls: int
    failures: int


class HostPool:
    def __init__(
        self,
        name: str,
        hosts: Sequence[tuple[str, Provider]],
        *,
        failure_threshold: int = 5,
        cooldown: float = 30.0,
    ) -> None:
        assert hosts, "a pool has at least one host"
        self.name = name
        self.hosts = [Host(host, provider) for host, provider in hosts]
        self.health = Health(
            [h.name for h in self.hosts],
            failure_threshold=failure_threshold,
            cooldown=cooldown,
            pool=name,
        )
        self._turn = 0

    async def start(self) -> None:
        started: list[Host] = []
        try:
            for host in self.hosts:
                await host.provider.start()
                started.append(host)
        except BaseException:
            for host in started:
                await host.provider.close()
            raise

    async def close(self) -> None:
        for host in self.hosts:
            await host.provider.close()

    # -- choosing a host ----------------------------------------------------

    def _pick(self, tried: set[str]) -> Host | None:
        count = len(self.hosts)
        order = sorted(
            (i for i, h in enumerate(self.hosts) if h.name not in tried),
            key=lambda i: (self.hosts[i].in_flight, (i - self._turn) % count),
        )
        for index in order:
            host = self.hosts[index]
            if self.health.admit(host.name):
                self._turn = index + 1
                return host
        return None

    def _none_left(self, last: ChatdError | None) -> ChatdError:
        if last is not None:
            return last
        return UpstreamConnectFailed(
            f"no host of provider `{self.name}` is available", provider=self.name
        )

    def _outcome(self, host: Host, error: ChatdError | None) -> None:
        ok = error is None or not error.provider_fault
        if not ok:
            host.failures += 1
        self.health.record(host.name, ok=ok)

    # -- the Provider protocol ---------------------------------------------

    async def chat(self, request: ChatRequest, model: str) -> ChatResponse:
        async def call(provider: Provider) -> ChatResponse:
            return await provider.chat(request, model)

        return await self._each_host(call)

    async def _each_host(self, call: Callable[[Provider], Awaitable[T]]) -> T:
        tried: set[str] = set()
        last: ChatdError | None = None
        while (host := self._pick(tried)) is not None:
            host.calls += 1
            host.in_flight += 1
            try:
                result = await call(host.provider)
            except UpstreamConnectFailed as exc:
                self._outcome(host, exc)
                tried.add(host.name)
                last = exc
                continue
            except ChatdError as exc:
                self._outcome(host, exc)
                raise
            except BaseException:
                self.health.abandon(host.name)
                raise
            finally:
                host.in_flight -= 1
            self._outcome(host, None)
            return result
        raise self._none_left(last)

    async def stream(self, request: ChatRequest, model: str) -> AsyncGenerator[Item, None]:
        tried: set[str] = set()
        last: ChatdError | None = None
        while True:
            host = self._pick(tried)
            if host is None:
                raise self._none_left(last)
            host.calls += 1
            host.in_flight += 1
            gen = host.provider.stream(request, model)
            try:
                first = await anext(gen)
            except UpstreamConnectFailed as exc:
                await gen.aclose()
                host.in_flight -= 1
                self._outcome(host, exc)
                tried.add(host.name)
                last = exc
                continue
            except BaseException as exc:
                await gen.aclose()
                host.in_flight -= 1
                if isinstance(exc, ChatdError):
                    self._outcome(host, exc)
                else:
                    self.health.abandon(host.name)
                raise
            break
        verdict: ChatdError | None = None
        finished = False
        try:
            yield first
            async for item in gen:
                yield item
            finished = True
        except ChatdError as exc:
            verdict = exc
            raise
        finally:
            host.in_flight -= 1
            await gen.aclose()
            if finished or verdict is not None:
                self._outcome(host, verdict)
            else:
                self.health.abandon(host.name)  # the caller stopped reading

    async def probe(self) -> bool:
        """Probe every host; the pool is up while any host is available."""

        async def one(host: Host) -> None:
            reason = "probe answered that it is not ready"
            try:
                ok = await host.provider.probe()
            except Exception as exc:
                # The exception's text may quote the host's URL: its type only.
                # Every interval while down: health logs the change once.
                reason = f"probe failed: {type(exc).__name__}"
                log.debug(
                    "host probe failed",
                    extra={"provider": self.name, "host": host.name, "error": type(exc).__name__},
                )
                ok = False
            self.health.set_probe(host.name, ok, reason)

        await asyncio.gather(*(one(h) for h in self.hosts))
        return any(self.health.available(h.name) for h in self.hosts)

    # -- what other parts read ---------------------------------------------

    def host_probes(self) -> dict[str, bool]:
        return {h.name: self.health.state(h.name) != "down" for h in self.hosts}

    def set_host_probes(self, verdicts: Mapping[str, bool]) -> None:
        for name, ok in verdicts.items():
            # The probing worker logged any change.
            self.health.set_probe(name, bool(ok), announce=False)

    def states(self) -> dict[str, HostState]:
        return {
            h.name: HostState(self.health.available(h.name), h.in_flight, h.calls, h.failures)
            for h in self.hosts
        }


def host_states(providers: Iterable[Provider]) -> dict[tuple[str, str], HostState]:
    """(provider, host) → state, for every pooled provider."""
    return {
        (pool.name, host): state
        for pool in providers
        if isinstance(pool, HostPool)
        for host, state in pool.states().items()
    }


def hosts_listing(providers: Iterable[Provider]) -> dict[str, dict[str, bool]]:
    return {
        pool.name: {host: state.available for host, state in pool.states().items()}
        for pool in providers
        if isinstance(pool, HostPool)
    }
