"""Request fields a dialect has no counterpart for: refused with a 400
naming the field, never dropped, as the other providers refuse what they
cannot do (README, "Tools and images"). Messages and Responses also carry
images on user turns only (their system prompt is text; an assistant turn
holds text and calls)."""

from __future__ import annotations

from lakehouse.errors import BadRequest
from lakehouse.wire import ChatRequest


def refuse_unsupported(
    request: ChatRequest, provider: str, dialect: str, *, stop: bool = True
) -> None:
    """Raise for the first field set that ``dialect`` cannot carry: logprobs,
    non-zero penalties, and ``stop`` unless the dialect has it."""
    named: list[tuple[str, bool]] = [
        ("logprobs", bool(request.logprobs)),
        ("presence_penalty", bool(request.presence_penalty)),
        ("frequency_penalty", bool(request.frequency_penalty)),
        ("stop", not stop and bool(request.stop)),
    ]
    for field, present in named:
        if present:
            raise BadRequest(
                f"`{field}` is not supported by {provider} ({dialect})",
                provider=provider,
                path=f"$.{field}",
            )
    for i, message in enumerate(request.messages):
        if message.role in ("system", "assistant") and message.has_images():
            field = "images" if message.images else "content"
            raise BadRequest(
                f"`messages[{i}].{field}`: images in a {message.role} message are not "
                f"supported by {provider} ({dialect}); only user messages carry images",
                provider=provider,
                path=f"$.messages[{i}].{field}",
            )
