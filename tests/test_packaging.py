"""pyproject.toml: the packaging choices bin/_venv.sh relies on."""

from __future__ import annotations

import tomllib

from setuptools import find_packages

from tests.support import ROOT


def test_the_editable_install_uses_the_plain_layout_that_prints_no_banner() -> None:
    # setuptools' editable_wheel picks its quiet .pth strategy only when
    # package-dir is exactly {"": <root>} and every package sits at its own
    # path under it; otherwise it installs a finder and warns (checked by
    # hand with pip 25 and setuptools 84, see docs in the commit).
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"": "."}
    include = setuptools["packages"]["find"]["include"]
    packages = find_packages(str(ROOT), include=include)
    assert "lakehouse" in packages and "lakehouse.callers" in packages
    for package in packages:
        assert (ROOT / package.replace(".", "/") / "__init__.py").is_file()
