"""lakehouse.startup: what a start checks before it listens, with real
certificates made by the openssl command."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from lakehouse import startup
from lakehouse.config import ServerConfig
from lakehouse.errors import ConfigError

CA_CONFIG = """[ca]
default_ca = d
[d]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = p
[p]
commonName = supplied
"""


def make_certificate(folder: Path, *, starts: str, ends: str) -> tuple[Path, Path]:
    """A self-signed localhost certificate valid from ``starts`` to ``ends``
    (``YYYYMMDDHHMMSSZ``): ``openssl ca`` is the one openssl 3.0 command
    that takes both dates."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ca.cnf").write_text(CA_CONFIG)
    (folder / "index.txt").write_text("")
    (folder / "serial").write_text("01\n")

    def run(*args: str) -> None:
        subprocess.run(args, cwd=folder, check=True, capture_output=True, timeout=60)

    run(
        "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", "key.pem", "-out", "req.csr", "-subj", "/CN=localhost",
    )  # fmt: skip
    run(
        "openssl", "ca", "-batch", "-config", "ca.cnf", "-selfsign", "-keyfile", "key.pem",
        "-in", "req.csr", "-out", "cert.pem", "-startdate", starts, "-enddate", ends,
    )  # fmt: skip
    return folder / "cert.pem", folder / "key.pem"


def valid_certificate(folder: Path) -> tuple[Path, Path]:
    return make_certificate(folder, starts="20200101000000Z", ends="20990101000000Z")


def test_a_valid_certificate_passes_without_warnings(tmp_path: Path) -> None:
    cert, key = valid_certificate(tmp_path)
    assert startup.check_tls(ServerConfig(certfile=str(cert), keyfile=str(key))) == []


def test_an_expired_certificate_is_a_warning_naming_the_file(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path, starts="20190101000000Z", ends="20200101000000Z")
    warnings = startup.check_tls(ServerConfig(certfile=str(cert), keyfile=str(key)))
    assert len(warnings) == 1
    assert str(cert) in warnings[0] and "expired" in warnings[0]


@pytest.mark.parametrize("broken", ["garbage", "missing", "other_key", "key_only"])
def test_bad_tls_files_are_one_error_naming_the_file(tmp_path: Path, broken: str) -> None:
    cert, key = valid_certificate(tmp_path / "a")
    _, other_key = valid_certificate(tmp_path / "b")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n")
    server = {
        "garbage": ServerConfig(certfile=str(garbage), keyfile=str(key)),
        "missing": ServerConfig(certfile=str(tmp_path / "nope.pem"), keyfile=str(key)),
        "other_key": ServerConfig(certfile=str(cert), keyfile=str(other_key)),
        "key_only": ServerConfig(keyfile=str(key)),
    }[broken]
    with pytest.raises(ConfigError) as caught:
        startup.check_tls(server)
    text = str(caught.value)
    assert "\n" not in text
    named = {
        "garbage": str(garbage),
        "missing": "nope.pem",
        "other_key": str(other_key),
        "key_only": "chatd.server.certfile",
    }[broken]
    assert named in text


@pytest.mark.parametrize(
    ("bind", "needle"),
    [
        ("nonsense", "expected HOST:PORT"),
        ("127.0.0.1:http", "expected HOST:PORT"),
        ("127.0.0.1:70000", "expected HOST:PORT"),
        ("no-such-host.invalid:3220", "cannot resolve 'no-such-host.invalid'"),
    ],
)
def test_bind_addresses_that_cannot_be_listened_on(bind: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        startup.check_bind(bind, "chatd.bind")
    startup.check_bind("127.0.0.1:0", "chatd.bind")
    startup.check_bind("[::1]:3220", "chatd.bind")


def test_a_port_in_use_fails_the_listen_check() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        bind = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(OSError) as caught:
            startup.check_listen(bind)
        assert "already in use" in startup.listen_failure(bind, caught.value)
    startup.check_listen(bind)


def test_origins_blame_the_flag_that_set_a_key() -> None:
    flags = {"chatd.auth": "--set chatd.auth", "chatd.bind": "--bind"}
    origins = startup.Origins("conf/x.toml", flags)
    assert str(origins.blame(ConfigError("`chatd.auth.tokens_file` 'x': cannot read"))).startswith(
        "--set chatd.auth: "
    )
    assert str(origins.blame(ConfigError("`chatd.bind` = 'x': bad"))).startswith("--bind: ")
    assert str(origins.blame(ConfigError("`chatd.timeout_secs` bad"))).startswith("conf/x.toml: ")
