"""Bearer tokens for chatd's own callers (``[chatd.auth]``).

Tokens come from an environment variable (comma-separated) and/or a file
(one per line, ``#`` comments). Every presented token is compared with
every configured one in constant time, so timing says nothing of which
token or how much of it matched.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from lakehouse.config import AuthConfig
from lakehouse.errors import ConfigError, Unauthorized

log = logging.getLogger("chatd")


def load_tokens(auth: AuthConfig, environ: Mapping[str, str] | None = None) -> list[bytes]:
    env = os.environ if environ is None else environ
    tokens = [t.strip() for t in env.get(auth.tokens_env, "").split(",")] if auth.tokens_env else []
    if auth.tokens_file:
        try:
            lines = Path(auth.tokens_file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(
                f"`chatd.auth.tokens_file` {auth.tokens_file!r}: cannot read: {exc.strerror}"
            ) from None
        tokens += [line.split("#", 1)[0].strip() for line in lines]
    return [t.encode() for t in tokens if t]


def is_loopback(bind: str) -> bool:
    """Whether a ``host:port`` bind listens on loopback only."""
    return is_loopback_host(bind.rsplit(":", 1)[0].strip("[]"))


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Gate:
    """Decides, per request, whether its ``Authorization`` header lets it in."""

    def __init__(self, tokens: list[bytes], exempt: list[str], enabled: bool) -> None:
        self.enabled = enabled
        self._tokens = tokens
        self._exempt = frozenset(exempt)

    @classmethod
    def from_config(
        cls, auth: AuthConfig, bind: str, environ: Mapping[str, str] | None = None
    ) -> Gate:
        tokens = load_tokens(auth, environ)
        enabled = bool(tokens) if auth.enabled is None else auth.enabled
        if enabled and not tokens:
            raise ConfigError(
                f"`chatd.auth.enabled` is true but no token was found in "
                f"${auth.tokens_env or '(none)'} or `chatd.auth.tokens_file`"
            )
        if not enabled and not is_loopback(bind):
            log.warning(
                "auth is off and chatd listens on %s, beyond loopback: anyone who can reach it "
                "can spend the providers' keys; set [chatd.auth] tokens",
                bind,
            )
        return cls(tokens, auth.exempt, enabled)

    def check(self, path: str, authorization: bytes | None) -> None:
        if not self.enabled or path in self._exempt:
            return
        if authorization is None or not authorization[:7].lower() == b"bearer ":
            raise Unauthorized("missing bearer token")
        presented = authorization[7:].strip()
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(presented, token)
        if not matched:
            raise Unauthorized("invalid bearer token")
