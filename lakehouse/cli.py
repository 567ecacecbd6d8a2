"""``bin/chatd``: check the config, optionally start the dev stub, serve."""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
from importlib.metadata import PackageNotFoundError, version
from urllib.parse import urlsplit

from lakehouse import config as configuration
from lakehouse import reload_signal, startup, worker_limits
from lakehouse.errors import ConfigError
from lakehouse.legacy_config import log_renames
from lakehouse.loader import load_plugin, plugin_dirs
from lakehouse.logs import setup_logging

log = logging.getLogger("chatd")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="chatd",
        description="The lakehouse LLM chat dispatcher.",
        epilog="`chatd gateway [options]` runs the lakehouse /v1 edge instead "
        "(see `chatd gateway --help`).",
    )
    configuration.add_cli_options(parser, "chatd")
    parser.add_argument(
        "--dev",
        action="store_true",
        help="serve an embedded Ollama-protocol stub as the default "
        "upstream when no real one is reachable",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="check everything a start checks (config, plugins, auth tokens, bind "
        "address, TLS files), then exit",
    )
    parser.add_argument("--version", action="store_true", help="print chatd's version and exit")
    return parser.parse_args(argv)


def reachable(url: str, timeout: float = 0.5) -> bool:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "localhost", port), timeout=timeout):
            return True
    except OSError:
        return False


def start_dev_stub(config: configuration.Config, overrides: dict[str, object]) -> str | None:
    """Point the default provider at an embedded stub when its upstream is
    not reachable and its plugin names a stub flavour; returns the stub URL."""
    name = config.chatd.default_provider
    table = config.chatd.providers.get(name)
    if table is None:
        return None
    plugin = load_plugin(name, table, plugin_dirs(config))
    if plugin.dev_stub is None:
        return None
    url = table.base_url or plugin.default_base_url
    if reachable(url):
        return None
    from lakehouse.stubs import StubThread

    stub_url = StubThread(plugin.dev_stub).start()
    overrides[f"chatd.providers.{name}.base_url"] = stub_url
    return stub_url


def main(argv: list[str] | None = None) -> int:
    # A reload asked for before the handler is in waits for it (see there).
    reload_signal.hold()
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["gateway"]:
        from lakehouse.gateway import app as gateway

        return gateway.main(argv[1:])
    args = parse_args(argv)
    if args.version:
        try:
            print(f"chatd {version('chatd')}")
        except PackageNotFoundError:
            print("chatd (not installed)")
        return 0
    path = (args.config or configuration.default_config_path()).resolve()
    try:
        overrides = configuration.parse_overrides(args.set)
        flags = {key: f"--set {key}" for key in overrides}
        if args.bind:
            # The app needs the real bind too (auth warns off loopback).
            overrides["chatd.bind"] = args.bind
            flags["chatd.bind"] = "--bind"
        config = configuration.load(path, overrides)
        setup_logging(config.chatd.log_level)
        log_renames(config.legacy, logging.getLogger("chatd.config"))
        if args.dev:
            stub_url = start_dev_stub(config, overrides)
            if stub_url:
                print(
                    f"chatd --dev: no upstream for `{config.chatd.default_provider}`; "
                    f"serving the embedded stub at {stub_url}",
                    file=sys.stderr,
                )
                config = configuration.load(path, overrides)
        bind = args.bind or config.chatd.bind
        origins = startup.Origins(path, flags)
        registry, warnings = startup.check_chatd(config, bind, origins)
        try:
            worker_limits.check(config, args.workers or config.chatd.server.workers)
        except ConfigError as exc:
            raise origins.blame(exc) from None
        for warning in warnings:
            log.warning(warning)
        if args.check:
            print(f"config ok: {path}; providers: {', '.join(registry.names()) or 'none'}")
            return 0
    except ConfigError as exc:
        print(f"chatd: config error: {exc}", file=sys.stderr)
        return 2
    from lakehouse import server

    server.environ_for(str(path), json.dumps(overrides) if overrides else None)
    try:
        startup.check_listen(bind)
        print(
            f"chatd serving on {startup.address(config, bind)}; providers: "
            f"{', '.join(registry.names()) or 'none'}",
            file=sys.stderr,
            flush=True,
        )
        return server.run(config, bind=bind, workers=args.workers)
    except OSError as exc:
        # Also a race for the port lost after the check: still one line.
        if exc.errno not in startup.LISTEN_ERRNOS:
            raise
        print(f"chatd: {startup.listen_failure(bind, exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
