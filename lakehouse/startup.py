"""What chatd and its gateway check before they listen.

Everything a start would otherwise find out by crashing (auth tokens, the
bind address, the TLS files, a port already taken) is checked here, so
``--check`` and a real start refuse the same configs with the same one
line, naming the key and where its value came from, and the "serving"
banner is printed only once nothing is left to fail.
"""

from __future__ import annotations

import errno
import re
import socket
import ssl
import time
from collections.abc import Mapping
from pathlib import Path

from lakehouse.auth import Gate
from lakehouse.config import Config, ServerConfig
from lakehouse.errors import ConfigError
from lakehouse.registry import Registry, build_registry

_KEY = re.compile(r"`([a-z_]+(?:\.[A-Za-z0-9_\"-]+)+)`")


class Origins:
    """Where each key's value came from: a command-line flag, else the file."""

    def __init__(self, path: Path | str, flags: Mapping[str, str] | None = None) -> None:
        self.path = str(path)
        self._flags = dict(flags or {})

    def of(self, key: str) -> str:
        for flagged, flag in self._flags.items():
            if key == flagged or key.startswith(flagged + "."):
                return flag
        return self.path

    def blame(self, exc: ConfigError) -> ConfigError:
        """``exc`` prefixed with where the first key it names came from,
        unless it already says."""
        text = str(exc)
        if text.startswith((self.path, "--")):
            return exc
        match = _KEY.search(text)
        where = self.of(match.group(1)) if match else self.path
        return ConfigError(f"{where}: {text}")


def check_chatd(
    config: Config, bind: str, origins: Origins, environ: Mapping[str, str] | None = None
) -> tuple[Registry, list[str]]:
    """Everything chatd's start-up builds or reads, built or read once: the
    providers, the auth tokens, the bind address and TLS. Returns the
    registry and warnings (an expired certificate)."""
    try:
        check_bind(bind, "chatd.bind")
        registry = build_registry(config, environ)
        Gate.from_config(config.chatd.auth, bind, environ)
        warnings = check_tls(config.chatd.server)
    except ConfigError as exc:
        raise origins.blame(exc) from None
    return registry, warnings


def check_bind(bind: str, key: str) -> None:
    """A ``HOST:PORT`` Hypercorn can listen on (``unix:`` and ``fd://``
    binds are passed through)."""
    if bind.startswith(("unix:", "fd://")):
        return
    host, sep, port = bind.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"`{key}` = {bind!r}: expected HOST:PORT, e.g. 127.0.0.1:3220")
    try:
        socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise ConfigError(f"`{key}` = {bind!r}: cannot resolve {host!r}: {reason}") from None


def check_tls(server: ServerConfig) -> list[str]:
    """The certificate and key load as a pair; a certificate outside its
    validity period is a warning (clients will refuse it, but an operator
    may be rotating it)."""
    if not server.certfile and not server.keyfile:
        return []
    if not (server.certfile and server.keyfile):
        raise ConfigError("`chatd.server.certfile` and `chatd.server.keyfile` go together")
    for key, name in (("certfile", server.certfile), ("keyfile", server.keyfile)):
        try:
            Path(name).read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"`chatd.server.{key}` {name!r}: cannot read: {exc.strerror}"
            ) from None
    decoded = _decode_certificate(server.certfile)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(server.certfile, server.keyfile)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"`chatd.server.keyfile` {server.keyfile!r}: not the private key of "
            f"{server.certfile!r} ({exc.reason or exc})"
        ) from None
    warnings = []
    now = time.time()
    ends, starts = decoded.get("notAfter"), decoded.get("notBefore")
    if isinstance(ends, str) and ssl.cert_time_to_seconds(ends) < now:
        warnings.append(f"the certificate {server.certfile!r} expired on {ends}")
    if isinstance(starts, str) and ssl.cert_time_to_seconds(starts) > now:
        warnings.append(f"the certificate {server.certfile!r} is not valid before {starts}")
    return warnings


def _decode_certificate(path: str) -> dict[str, object]:
    # The ssl module reads a PEM certificate's fields only through this
    # CPython helper (its own tests use it); without it, no validity check.
    decode = getattr(ssl._ssl, "_test_decode_cert", None)  # type: ignore[attr-defined]
    if decode is None:
        return {}
    try:
        decoded: dict[str, object] = decode(path)
    except ssl.SSLError:
        raise ConfigError(f"`chatd.server.certfile` {path!r}: not a PEM certificate") from None
    return decoded


def check_listen(bind: str) -> None:
    """Bind (and let go of) the address the server is about to take, so a
    port in use is one line before anything says "serving". Raises OSError."""
    if bind.startswith(("unix:", "fd://")):
        return
    host, _, port = bind.rpartition(":")
    infos = socket.getaddrinfo(
        host.strip("[]"), int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As Hypercorn binds: a port in TIME_WAIT is free, a listener is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)


# What a bind can fail with: taken, not this host's address, privileged.
LISTEN_ERRNOS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})


def listen_failure(bind: str, exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EADDRINUSE:
        reason = "address already in use (another process listens there)"
    return f"cannot listen on {bind}: {reason}"


def address(config: Config, bind: str) -> str:
    """The banner's address and protocols, as the port will really serve."""
    server = config.chatd.server
    if server.certfile and server.keyfile:
        return f"https://{bind} (HTTP/1.1, and h2 by ALPN)"
    return f"http://{bind} (HTTP/1.1 and h2c)"
