from __future__ import annotations

import json

import msgspec
import pytest

from lakehouse.wire import ChatRequest, ChatResponse, chat_request_decoder, encoder


def test_a_stamped_zero_latency_is_still_sent_and_extras_are_omitted() -> None:
    response = ChatResponse(
        model="m",
        provider="p",
        content="",
        done_reason="stop",
        prompt_tokens=0,
        completion_tokens=0,
        latency_ms=0,
    )
    assert json.loads(encoder.encode(response)) == {
        "model": "m",
        "provider": "p",
        "content": "",
        "done_reason": "stop",
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "latency_ms": 0,
    }
    response.tier, response.reasoning, response.fallback, response.attempts = "t", "r", "f", 2
    assert json.loads(encoder.encode(response))["fallback"] == "f"


def test_request_decoder_is_strict() -> None:
    ok = chat_request_decoder.decode(
        b'{"model":"m","messages":[{"role":"user","content":"x"}],"think":"high",'
        b'"format":{"type":"object"},"max_tokens":5,"temperature":0.5,"deadline_secs":3}'
    )
    assert isinstance(ok, ChatRequest) and ok.think == "high" and ok.deadline_secs == 3
    with pytest.raises(msgspec.ValidationError, match=r"\$\.messages\[0\]\.role"):
        chat_request_decoder.decode(b'{"model":"m","messages":[{"role":"x","content":"x"}]}')
