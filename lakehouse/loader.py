"""Finding, loading and checking provider plugins named by the config.

Only the plugins the config names are loaded. Every problem (no such file,
an import that raises, no ``PLUGIN``, bad options) becomes one
``ConfigError`` line naming the provider and what is wrong.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType

import msgspec

from lakehouse.config import Config, ProviderConfig, check_url, describe
from lakehouse.errors import ConfigError
from lakehouse.plugin_api import Plugin, PluginOptions

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "plugins"


def plugin_dirs(config: Config) -> list[Path]:
    """Operator folders first, so a local file can stand in for a built-in."""
    base = Path(config.source_dir)
    extra = [p if p.is_absolute() else base / p for p in map(Path, config.chatd.plugin_dirs)]
    return [*extra, BUILTIN_DIR]


def find_plugin(plugin: str, dirs: Iterable[Path]) -> Path | None:
    if not plugin.isidentifier():
        return None
    for folder in dirs:
        candidate = folder / f"{plugin}.py"
        if candidate.is_file():
            return candidate
    return None


def import_plugin_file(path: Path) -> ModuleType:
    # A private module name per file, so two folders' same-named plugins
    # never collide and no top-level package is needed for plugins/.
    name = f"chatd_plugin_{abs(hash(str(path)))}_{path.stem}"
    module = sys.modules.get(name)
    if module is not None:
        return module
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


@contextlib.contextmanager
def one_line(where: str, failed: str) -> Iterator[None]:
    """Whatever a plugin's code raises inside, as one ConfigError line:
    ``<where>: <message>`` for a ConfigError, ``<where><failed>: <type>:
    <message>`` for anything else."""
    try:
        yield
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except Exception as exc:
        raise ConfigError(f"{where}{failed}: {type(exc).__name__}: {exc}") from None


def load_plugin(provider: str, table: ProviderConfig, dirs: list[Path]) -> Plugin:
    plugin_name = table.plugin or provider
    where = f"provider `{provider}`"
    path = find_plugin(plugin_name, dirs)
    if path is None:
        searched = ", ".join(str(d) for d in dirs)
        raise ConfigError(f"{where}: plugin `{plugin_name}` not found (searched {searched})")
    with one_line(f"{where}: plugin `{plugin_name}`", " failed to load"):
        module = import_plugin_file(path)
    plugin = getattr(module, "PLUGIN", None)
    if not isinstance(plugin, Plugin):
        raise ConfigError(f"{where}: {path} defines no `PLUGIN = Plugin(...)`")
    return plugin


def decode_options(provider: str, plugin: Plugin, table: ProviderConfig) -> PluginOptions:
    try:
        return msgspec.convert(table.options, plugin.options, strict=True)
    except msgspec.ValidationError as exc:
        text = describe(exc, f"chatd.providers.{provider}.options")
        raise ConfigError(f"provider `{provider}`: bad option: {text}") from None


def base_url(provider: str, plugin: Plugin, table: ProviderConfig) -> str:
    url = table.base_url or plugin.default_base_url
    return check_url(url, f"chatd.providers.{provider}.base_url")
