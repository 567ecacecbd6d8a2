"""chatd's conversation in the Chat Completions shape (protocols.md §3.1):
content as text or ordered parts with ``image_url`` parts, assistant
``tool_calls`` with arguments as JSON text, ``tool`` results by
``tool_call_id``. An upstream of this dialect takes images by URL itself,
so an http(s) URL is passed on; bare base64 becomes a data URL.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from lakehouse.images import image_ref
from lakehouse.tool_calls import arguments_text
from lakehouse.wire import ImagePart, ImageURL, Message, Part, TextPart


class _Function(msgspec.Struct):
    name: str
    arguments: str


class _ToolCall(msgspec.Struct):
    id: str
    type: Literal["function"]
    function: _Function


class OpenAIMessage(msgspec.Struct, omit_defaults=True):
    role: str
    # Left out on an assistant turn that only called tools.
    content: str | list[Part] | None = None
    tool_calls: list[_ToolCall] | None = None
    tool_call_id: str | None = None
    # An assistant turn's reasoning: Kimi (Moonshot) wants it back in
    # multi-turn tool use; others ignore the field.
    reasoning_content: str | None = None


def _content(m: Message) -> str | list[Part]:
    """A string stays a string; with images, parts in their order, each
    image as a URL (http(s) as given, inline ones as data URLs)."""
    if not m.has_images():
        return m.text()
    given = [m.content] if isinstance(m.content, str) else m.content
    parts: list[Part] = []
    for part in given:
        if isinstance(part, str):
            if part:
                parts.append(TextPart(part))
        elif isinstance(part, ImagePart):
            url = part.image_url
            parts.append(ImagePart(ImageURL(_url(url.url), url.detail)))
        else:
            parts.append(part)
    parts += [ImagePart(ImageURL(_url(image))) for image in m.images or ()]
    return parts


def _url(image: str) -> str:
    return image_ref(image).data_url()


def openai_messages(messages: list[Message]) -> list[OpenAIMessage]:
    """Calls without an id (Ollama-style history sent to the native API) get
    one here, and results that name only the tool are matched to its latest
    call, since this dialect links results by id alone."""
    by_name: dict[str, str] = {}
    out = []
    for i, m in enumerate(messages):
        calls = []
        for j, call in enumerate(m.tool_calls or ()):
            ident = call.id or f"call_{i}_{j}"
            by_name[call.function.name] = ident
            calls.append(
                _ToolCall(
                    ident, "function", _Function(call.function.name, arguments_text(call.function))
                )
            )
        result_of = m.tool_call_id
        if m.role == "tool" and result_of is None and m.tool_name is not None:
            result_of = by_name.get(m.tool_name)
        calls_only = bool(calls) and not m.content
        out.append(
            OpenAIMessage(
                role=m.role,
                content=None if calls_only else _content(m),
                tool_calls=calls or None,
                tool_call_id=result_of,
                reasoning_content=m.thinking if m.role == "assistant" else None,
            )
        )
    return out
