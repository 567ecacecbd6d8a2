"""chatd's conversation in Ollama's ``/api/chat`` shape: messages with
bare-base64 ``images``, tool calls whose arguments are JSON objects, tool
results with ``tool_name``, and the request's ``tools``.

An image given as an http(s) URL is refused with a 400 naming it, never
fetched: fetching would make chatd a proxy into whatever network it runs in
(a caller could make it read internal addresses), and Ollama itself only
takes inline images. Callers send a data URL or base64 instead.
"""

from __future__ import annotations

from typing import Any

import msgspec

from lakehouse.errors import BadRequest
from lakehouse.images import image_ref
from lakehouse.tool_calls import parse_arguments
from lakehouse.wire import ChatRequest, ImagePart, Message, Tool


class OllamaFunction(msgspec.Struct, omit_defaults=True):
    name: str
    arguments: dict[str, Any]


class OllamaToolCall(msgspec.Struct, omit_defaults=True):
    function: OllamaFunction
    id: str | None = None


class OllamaMessage(msgspec.Struct, omit_defaults=True):
    role: str
    # Always sent, "" on an assistant turn that only called tools.
    content: str
    images: list[str] | None = None
    tool_calls: list[OllamaToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None
    thinking: str | None = None


def _refuse(path: str, what: str) -> BadRequest:
    return BadRequest(f"`{path}` {what}", path=f"$.{path}")


def _images(message: Message, at: str) -> list[str] | None:
    found: list[tuple[str, str]] = []
    if not isinstance(message.content, str):
        found += [
            (f"{at}.content[{j}].image_url.url", p.image_url.url)
            for j, p in enumerate(message.content)
            if isinstance(p, ImagePart)
        ]
    found += [(f"{at}.images[{j}]", image) for j, image in enumerate(message.images or ())]
    images = []
    for path, text in found:
        ref = image_ref(text)
        if not ref.inline:
            raise _refuse(
                path,
                "is an http(s) URL, which Ollama cannot take and chatd does not fetch: "
                "send the image inline (a data URL or base64)",
            )
        images.append(ref.data)
    return images or None


def _calls(message: Message, at: str, names: dict[str, str]) -> list[OllamaToolCall] | None:
    calls = []
    for j, call in enumerate(message.tool_calls or ()):
        # JSON text (OpenAI's form, which the native API accepts too) is
        # read; only text that is no JSON object cannot go to Ollama.
        args = call.function.arguments
        if isinstance(args, str):
            args = parse_arguments(args)
        if isinstance(args, str):
            raise _refuse(
                f"{at}.tool_calls[{j}].function.arguments", "must be a JSON object for Ollama"
            )
        if call.id:
            names[call.id] = call.function.name
        calls.append(OllamaToolCall(OllamaFunction(call.function.name, args), call.id or None))
    return calls or None


def ollama_messages(messages: list[Message]) -> list[OllamaMessage]:
    """The conversation for ``/api/chat``; BadRequest for what Ollama cannot
    take (an image by URL, arguments that are not an object)."""
    names: dict[str, str] = {}
    out = []
    for i, m in enumerate(messages):
        at = f"messages[{i}]"
        tool_name = m.tool_name
        if m.role == "tool" and tool_name is None and m.tool_call_id is not None:
            tool_name = names.get(m.tool_call_id)
        out.append(
            OllamaMessage(
                role=m.role,
                content=m.text(),
                images=_images(m, at),
                tool_calls=_calls(m, at, names),
                tool_name=tool_name,
                tool_call_id=m.tool_call_id,
                thinking=m.thinking,
            )
        )
    return out


def ollama_tools(request: ChatRequest) -> list[Tool] | None:
    """The tools to offer; ``tool_choice`` "none" is honoured by offering
    none. "required" and a named function Ollama has no way to enforce:
    refused, naming the field."""
    choice = request.tool_choice
    if choice == "none":
        return None
    if choice is not None and choice != "auto":
        raise _refuse("tool_choice", 'is not supported by Ollama (only "auto" and "none")')
    return request.tools or None
