"""deploy/systemd: the units as systemd reads them (systemd-analyze verify,
where it exists), and as chatd needs them (parsed: keys, values, and
agreement with the CLI and the config's graceful timeout)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lakehouse import cli
from lakehouse import config as configuration
from lakehouse.gateway import app as gateway
from tests.support import ROOT

UNITS = ROOT / "deploy" / "systemd"
CHATD = UNITS / "chatd.service"
GATEWAY = UNITS / "chatd-gateway.service"
INSTALLED = "/opt/chatd"
CONFIG = "/etc/lakehouse/lakehouse.toml"

Unit = dict[str, dict[str, list[str]]]


def parse(path: Path) -> Unit:
    """Sections → key → every value given (systemd allows repeats)."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"{path.name}: {line!r} before any section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: {line!r} is not KEY=value"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def one(unit: Unit, key: str) -> str:
    values = unit["Service"].get(key, [])
    assert len(values) == 1, f"{key}: {values}"
    return values[0]


def seconds(value: str) -> float:
    units = {"s": 1, "sec": 1, "min": 60, "m": 60}
    total = 0.0
    for part in value.split():
        digits = part.rstrip("abcdefghijklmnopqrstuvwxyz")
        total += float(digits) * units.get(part[len(digits) :] or "s", 0)
    return total


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    # verify insists that ExecStart's program exists: this checkout's venv
    # stands in for the installed one.
    copies = []
    for unit in (CHATD, GATEWAY):
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace(INSTALLED, str(ROOT)))
        copies.append(str(copy))
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *copies],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    # Unknown keys and bad values are warnings with exit status 0.
    assert done.stdout + done.stderr == ""


@pytest.mark.parametrize(
    ("path", "args"),
    [(CHATD, cli.parse_args), (GATEWAY, gateway.parse_args)],
    ids=["chatd", "gateway"],
)
def test_start_reload_and_stop(path: Path, args: object) -> None:
    unit = parse(path)
    argv = shlex.split(one(unit, "ExecStart"))
    assert argv[:3] == [f"{INSTALLED}/.venv/bin/python", "-m", "lakehouse.cli"]
    rest = argv[3:]
    if path == GATEWAY:
        assert rest[0] == "gateway"
        rest = rest[1:]
    parsed = args(rest)  # type: ignore[operator]
    assert parsed.config == Path(CONFIG)
    assert one(unit, "Type") == "notify"
    # The main process speaks for the pool (lakehouse.supervisor).
    assert one(unit, "NotifyAccess") == "main"
    assert one(unit, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(unit, "KillSignal") == "SIGTERM"
    # Only the main process gets SIGTERM; it stops its workers gracefully
    # (with the default, every worker would die at once).
    assert one(unit, "KillMode") == "mixed"
    assert one(unit, "Restart") == "on-failure"


@pytest.mark.parametrize("path", [CHATD, GATEWAY], ids=["chatd", "gateway"])
def test_a_config_error_is_not_restarted(path: Path, tmp_path: Path) -> None:
    bad = tmp_path / "lakehouse.toml"
    bad.write_text("[chatd]\ntimeout_sec = 1\n[gateway]\nroutes = {}\n")
    argv = ["--config", str(bad)] if path == CHATD else ["gateway", "--config", str(bad)]
    done = subprocess.run(
        [sys.executable, "-m", "lakehouse.cli", *argv],
        capture_output=True,
        timeout=60,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "LAKEHOUSE_CONFIG"},
    )
    assert done.returncode != 0
    assert one(parse(path), "RestartPreventExitStatus") == str(done.returncode)


@pytest.mark.parametrize("path", [CHATD, GATEWAY], ids=["chatd", "gateway"])
def test_stop_timeout_outlasts_the_graceful_timeout(path: Path) -> None:
    stop = seconds(one(parse(path), "TimeoutStopSec"))
    default = configuration.ServerConfig().graceful_timeout_secs
    shipped = configuration.load(ROOT / "conf" / "lakehouse.toml").chatd.server
    reference = configuration.load(ROOT / "tests" / "fixtures" / "go_lakehouse.toml").chatd.server
    for graceful in (default, shipped.graceful_timeout_secs, reference.graceful_timeout_secs):
        # The graceful stop, then the lifespan's own shutdown (sessions close).
        assert stop >= graceful + 10, (stop, graceful)


def test_chatd_reads_every_key_file_and_the_gateway_none() -> None:
    assert one(parse(CHATD), "EnvironmentFile") == "-/etc/lakehouse/*.env"
    # The gateway holds no provider keys.
    assert "*" not in one(parse(GATEWAY), "EnvironmentFile")


@pytest.mark.parametrize("path", [CHATD, GATEWAY], ids=["chatd", "gateway"])
def test_hardened_but_able_to_serve(path: Path) -> None:
    unit = parse(path)
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
    }.items():
        assert one(unit, key) == value, key
    assert one(unit, "User") not in ("", "root")
    assert one(unit, "Group") not in ("", "root")
    # The notify socket is AF_UNIX.
    assert "AF_UNIX" in one(unit, "RestrictAddressFamilies").split()
    # The one writable place: temp files and Prometheus' multiprocess folder
    # (under the temp dir unless metrics_dir says otherwise).
    runtime = one(unit, "RuntimeDirectory")
    assert f"TMPDIR=/run/{runtime}" in unit["Service"]["Environment"]
    assert "ReadOnlyPaths" not in unit["Service"]


def test_the_installed_command_checks_the_reference_file() -> None:
    argv = shlex.split(one(parse(CHATD), "ExecStart"))
    argv = [arg.replace(INSTALLED, str(ROOT)) for arg in argv]
    argv[argv.index(CONFIG)] = str(ROOT / "tests" / "fixtures" / "go_lakehouse.toml")
    done = subprocess.run(
        [*argv, "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "LAKEHOUSE_CONFIG"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("config ok: ")
