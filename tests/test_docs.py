"""The README and the docstrings say what is true of the code: every module
in the layout, every error code with its status, every config key, bench
figures that bench/RESULTS.md holds, and only files the repo has."""

from __future__ import annotations

import inspect
import re
import typing
from pathlib import Path

import msgspec
import pytest

from lakehouse import config, errors
from tests.support import ROOT

README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    """The README's ``## title`` section."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert match, title
    return match.group(1)


def sources() -> list[Path]:
    out = []
    for folder in ("lakehouse", "plugins", "tests", "bench"):
        out += [p for p in (ROOT / folder).rglob("*.py") if ".venv" not in p.parts]
    return out


def test_every_file_a_docstring_or_comment_cites_is_in_the_repo() -> None:
    cited = {
        (path.relative_to(ROOT), name)
        for path in sources()
        for name in re.findall(r"[\w./-]*\w\.md\b", path.read_text())
    }
    docs = {str(p.relative_to(ROOT)) for p in ROOT.rglob("*.md") if ".venv" not in p.parts}
    missing = [
        (str(p), n) for p, n in cited if not any(d == n or d.endswith("/" + n) for d in docs)
    ]
    assert not missing, missing


def test_the_layout_names_every_module() -> None:
    layout = section("Layout")
    modules = {
        p.stem for p in (ROOT / "lakehouse").rglob("*.py") if p.stem not in ("__init__", "__main__")
    }
    unnamed = sorted(m for m in modules if f"`{m}`" not in layout)
    assert not unnamed, unnamed


def test_the_error_table_lists_every_error_with_its_status() -> None:
    rows = set(re.findall(r"^\| (\d{3}) \| `([a-z_]+)` \|", README, re.M))
    family = {
        (str(cls.status), cls.code)
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.ChatdError)
    }
    assert family - rows == set()
    assert rows - family == set()


def keys(struct: type, prefix: str) -> list[str]:
    out = []
    hints = typing.get_type_hints(struct, include_extras=True)
    for field in msgspec.structs.fields(struct):
        kind = hints[field.name]
        while typing.get_origin(kind) is typing.Annotated:
            kind = typing.get_args(kind)[0]
        name = f"{prefix}.{field.name}"
        if field.name == "providers":
            out += keys(config.ProviderConfig, f"{name}.<name>")
        elif field.name == "fallbacks":
            out.append(f"{name}.<name>")
        elif isinstance(kind, type) and issubclass(kind, msgspec.Struct):
            out += keys(kind, name)
        else:
            out.append(name)
    return out


@pytest.mark.parametrize(
    "key",
    [*keys(config.ChatdConfig, "chatd"), *keys(config.GatewayConfig, "gateway"), "models.<tier>"],
)
def test_the_key_tables_list_every_config_key(key: str) -> None:
    assert f"`{key}`" in README


def test_bench_figures_in_the_readme_are_those_of_results() -> None:
    results = (ROOT / "bench" / "RESULTS.md").read_text()
    quoted = re.findall(r"(\d[\d,]*(?:\.\d+)?) (?:req/s|ms)", section("Benchmark"))
    assert quoted
    assert [q for q in quoted if q not in results] == []
