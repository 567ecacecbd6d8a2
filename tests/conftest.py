"""Shared fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# Fixtures used by several test modules.
from tests.pool_support import pools as pools  # noqa: E402
