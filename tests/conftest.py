"""Shared fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def pytest_report_header() -> str:
    from tests.support import STACK

    return f"chatd stack: {STACK} (CHATD_TEST_STACK; bin/test runs `-m stacks` on both)"


# Fixtures used by several test modules.
from tests.pool_support import pools as pools  # noqa: E402
