"""Upstream emulators that speak each provider's real wire protocol on 127.0.0.1.

Flavours: ``ollama``, ``ollama_cloud``, ``openrouter``, ``opencode`` (also
Anthropic Messages on ``/messages`` and OpenAI Responses on ``/responses``),
``opencode_go``, ``kimi`` (also Anthropic Messages); docs/protocols.md and
docs/protocols/ hold the facts the dialects follow. They never make
outbound calls.
"""

from lakehouse.stubs.faults import Fault, FaultKind
from lakehouse.stubs.flavours import FLAVOURS
from lakehouse.stubs.received import Received
from lakehouse.stubs.server import StubUpstream
from lakehouse.stubs.thread import StubThread

__all__ = ["FLAVOURS", "Fault", "FaultKind", "Received", "StubThread", "StubUpstream"]
