"""The Go gateway's route table, served from its ``<service>_url`` keys.

The Go gateway had one fixed route per backing service and required every
service's URL. Here each becomes the ``gateway.routes`` entry it stands for,
so the legacy form is served by the same prefix matching (at segment
boundaries, ``/v1`` stripped) as a modern table.
"""

from __future__ import annotations

import logging

from lakehouse.errors import ConfigError
from lakehouse.legacy_config import GATEWAY_KEYS, GATEWAY_SERVICES, Legacy

# Service → the path prefix the Go gateway sent to it.
PREFIXES = (
    ("storaged", "/v1/storage"),
    ("catalogd", "/v1/catalog"),
    ("ingestd", "/v1/ingest"),
    ("queryd", "/v1/sql"),
    ("vectord", "/v1/vectors"),
    ("embedd", "/v1/embed"),
    ("pathwayd", "/v1/pathway"),
    ("matrixd", "/v1/matrix"),
    ("observerd", "/v1/observer"),
    ("chatd", "/v1/chat"),
)
assert tuple(service for service, _ in PREFIXES) == GATEWAY_SERVICES


def legacy_routes(legacy: Legacy) -> dict[str, str]:
    """Prefix → upstream URL from the file's ``<service>_url`` keys; empty
    when it has none. As in Go, one present means all are required."""
    urls = legacy.gateway_urls
    if not urls:
        return {}
    missing = [f"`gateway.{key}`" for key in GATEWAY_KEYS if key not in urls]
    if missing:
        raise ConfigError(
            f"{', '.join(missing)} missing: the Go gateway's [gateway] form needs every "
            "<service>_url (or use `gateway.routes` for a subset)"
        )
    return {prefix: urls[f"{service}_url"] for service, prefix in PREFIXES}


def log_renames(legacy: Legacy, log: logging.Logger) -> None:
    """One line per ``<service>_url`` key read, naming its current spelling."""
    for service, prefix in PREFIXES:
        if f"{service}_url" in legacy.gateway_urls:
            log.warning(
                'legacy key `gateway.%s_url` read as `gateway.routes."%s"`', service, prefix
            )
