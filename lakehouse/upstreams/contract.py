"""What a provider plugin is handed and hands back: its context, its
options' base and a whole upstream reply."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec


@dataclass(frozen=True)
class UpstreamReply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()


class PluginOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of every plugin's options: unknown keys are refused."""


@dataclass
class ProviderContext:
    """What the registry hands a plugin when it builds a provider."""

    name: str
    base_url: str
    key: str | None
    timeout: float
    headers: Mapping[str, str] = field(default_factory=dict)
    options: Any = None
    # chatd.server.tuned: HTTPClient calls the upstream through
    # lakehouse.upstreams.lean rather than ClientSession.request.
    tuned: bool = True
