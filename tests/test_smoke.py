"""bin/chatd-smoke judges any instance: what it lists, whether ollama_cloud
is registered, with a bearer token when auth is on (real chatd, stubs)."""

from __future__ import annotations

import asyncio

import pytest

from lakehouse import smoke
from tests.stub_world import stub_world

pytestmark = pytest.mark.anyio

TOKEN = "smoke-token-1234"


async def run_smoke(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    code = await asyncio.to_thread(smoke.main, list(args))
    return code, capsys.readouterr().out.strip().splitlines()


async def test_an_instance_with_ollama_cloud_registered_passes_and_says_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with stub_world() as world:
        code, lines = await run_smoke(capsys, world.base, "--cloud-model", "kimi-k2.6")
        assert code == 0, lines
        assert lines[-1] == "6/6 PASS"
        assert "every provider available" in lines[0]
        assert "reaches ollama_cloud (registered) with the suffix stripped" in lines[3]
        assert world.stubs["ollama_cloud"].chats[-1].json["model"] == "kimi-k2.6"

        expect = "kimi,ollama,ollama_cloud,opencode,openrouter"
        code, lines = await run_smoke(
            capsys, world.base, "--cloud-model", "kimi-k2.6", "--expect", expect
        )
        assert code == 0, lines
        assert lines[0].startswith("1. PASS") and "(--expect)" in lines[0]

        code, lines = await run_smoke(capsys, world.base, "--expect", "ollama")
        assert code == 1 and lines[0].startswith("1. FAIL")


async def test_a_bearer_token_from_the_option_or_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with stub_world(environ={"CHATD_TOKENS": TOKEN}) as world:
        code, lines = await run_smoke(capsys, world.base, "--cloud-model", "kimi-k2.6")
        assert code == 1 and lines[-1] == "0/6 PASS"
        code, lines = await run_smoke(
            capsys, world.base, "--cloud-model", "kimi-k2.6", "--token", TOKEN
        )
        assert code == 0 and lines[-1] == "6/6 PASS", lines
        monkeypatch.setenv("CHATD_TOKEN", TOKEN)
        code, lines = await run_smoke(capsys, world.base, "--cloud-model", "kimi-k2.6")
        assert code == 0 and lines[-1] == "6/6 PASS", lines
    assert all(TOKEN not in line for line in lines)
