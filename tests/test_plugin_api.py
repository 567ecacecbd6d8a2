"""The plugin API is what the built-in plugins use, and all they use."""

from __future__ import annotations

import ast

from lakehouse import plugin_api
from lakehouse.loader import BUILTIN_DIR


def imports_of(source: str) -> list[tuple[str, list[str]]]:
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
    return out


def test_every_exported_name_exists() -> None:
    assert len(set(plugin_api.__all__)) == len(plugin_api.__all__)
    for name in plugin_api.__all__:
        assert getattr(plugin_api, name, None) is not None, name


def test_plugins_import_only_the_plugin_api_and_only_its_exports() -> None:
    used: set[str] = set()
    for path in sorted(BUILTIN_DIR.glob("*.py")):
        for module, names in imports_of(path.read_text()):
            if module.split(".")[0] != "lakehouse":
                continue
            assert module == "lakehouse.plugin_api", f"{path.name} imports {module}"
            assert set(names) <= set(plugin_api.__all__), (path.name, names)
            used.update(names)
    # Nothing exported that no plugin needs, but the protocol and the base
    # every client stands on, and the error for a bad option.
    assert set(plugin_api.__all__) - used == {"HTTPProvider", "Provider", "ConfigError"}
