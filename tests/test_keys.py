from __future__ import annotations

from pathlib import Path

from lakehouse.keys import REDACTED, Redactor, read_env_file, resolve_key


def test_env_file_tolerates_export_quotes_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "k.env"
    path.write_text(
        "# a comment\n"
        "\n"
        "export A=plain\n"
        'B="double quoted # not a comment"\n'
        "C='single'\n"
        "D=value # trailing comment\n"
        "  E = spaced  \n"
        "not a line\n"
    )
    assert read_env_file(path) == {
        "A": "plain",
        "B": "double quoted # not a comment",
        "C": "single",
        "D": "value",
        "E": "spaced",
    }


def test_environment_wins_over_file(tmp_path: Path) -> None:
    path = tmp_path / "k.env"
    path.write_text("KEY=from-file-123\n")
    assert resolve_key("KEY", str(path), {"KEY": "from-env-456"}) == "from-env-456"
    assert resolve_key("KEY", str(path), {}) == "from-file-123"
    assert resolve_key("KEY", str(path), {"KEY": "  "}) == "from-file-123"


def test_empty_path_skips_the_file_and_missing_means_none(tmp_path: Path) -> None:
    assert resolve_key("KEY", "", {}) is None
    assert resolve_key("KEY", str(tmp_path / "absent.env"), {}) is None
    assert resolve_key("", str(tmp_path / "absent.env"), {"": "x"}) is None
    path = tmp_path / "k.env"
    path.write_text("OTHER=1\nKEY=\n")
    assert resolve_key("KEY", str(path), {}) is None


def test_redactor_hides_every_key_and_ignores_short_ones() -> None:
    redact = Redactor(["sk-or-v1-abcdef123456", "sk-kimi-zzzzzzzzzz", "ab"])
    text = "bad key sk-or-v1-abcdef123456 and sk-kimi-zzzzzzzzzz, ab stays"
    assert redact(text) == f"bad key {REDACTED} and {REDACTED}, ab stays"
    assert Redactor()("nothing to hide") == "nothing to hide"
