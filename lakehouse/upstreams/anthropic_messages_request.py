"""chatd's request as an Anthropic Messages body
(docs/protocols/anthropic-messages.md, "Request").

- system messages go to the top-level ``system`` (joined in order);
- user content is a string, or text and ``image`` blocks in order (inline
  images as base64 sources, http(s) ones as URL sources);
- an assistant turn's tool calls are ``tool_use`` blocks after its text;
  tool turns are ``tool_result`` blocks in one user turn (consecutive tool
  turns together, as Anthropic wants all results of a turn at once);
- tools are ``{name, description, input_schema}``; ``tool_choice`` "auto",
  "required" (Anthropic's "any"), "none" or one named tool, and
  ``parallel_tool_calls: false`` as ``disable_parallel_tool_use``;
- ``stop`` becomes ``stop_sequences``; ``seed`` has no counterpart and is
  dropped (it is best effort everywhere); ``logprobs`` and non-zero
  penalties are refused (400 naming the field);
- there is no JSON mode: ``format`` becomes an instruction appended to
  ``system`` (a deviation, named in the README);
- ``think`` becomes ``thinking: {type: enabled, budget_tokens}``, whose
  budget must be at least 1024 and below ``max_tokens`` (thinking is left
  off when the cap leaves no room); ``temperature``/``top_p`` are dropped
  then, since Anthropic refuses them with thinking on. An assistant turn's
  earlier ``thinking`` is not sent back: Anthropic needs its signature.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import msgspec

from lakehouse.errors import BadRequest
from lakehouse.images import ImageRef, sniff
from lakehouse.tool_calls import parse_arguments
from lakehouse.upstreams.call_ids import pair_calls
from lakehouse.upstreams.unsupported import refuse_unsupported
from lakehouse.wire import ChatRequest, ImagePart, Message, NamedToolChoice, TextPart

# Thinking budgets per level; Anthropic's minimum is 1024.
THINK_BUDGETS = {"low": 1024, "medium": 4096, "high": 16384, "max": 32000}
MIN_THINK_BUDGET = 1024
# The smallest output limit of the Claude 4 models (Opus 4 and 4.1): a
# max_tokens chatd picks itself stays within it.
MAX_OUTPUT_TOKENS = 32000
_ALIASES = {"image/jpg": "image/jpeg"}
JSON_INSTRUCTION = "Respond with one JSON object and nothing else: no prose, no code fence."


class _Source(msgspec.Struct, omit_defaults=True):
    type: Literal["base64", "url"]
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class TextBlock(msgspec.Struct, tag="text", tag_field="type"):
    text: str


class ImageBlock(msgspec.Struct, tag="image", tag_field="type"):
    source: _Source


class ToolUseBlock(msgspec.Struct, tag="tool_use", tag_field="type"):
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(msgspec.Struct, tag="tool_result", tag_field="type"):
    tool_use_id: str
    content: str


Block = TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock


class Turn(msgspec.Struct):
    role: Literal["user", "assistant"]
    content: str | list[Block]


class _Thinking(msgspec.Struct):
    budget_tokens: int
    type: str = "enabled"


class _Tool(msgspec.Struct, omit_defaults=True):
    name: str
    input_schema: dict[str, Any]
    description: str | None = None


class _ToolChoice(msgspec.Struct, omit_defaults=True):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Body(msgspec.Struct, omit_defaults=True):
    model: str
    messages: list[Turn]
    max_tokens: int
    stream: bool
    system: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop_sequences: list[str] | None = None
    thinking: _Thinking | None = None
    tools: list[_Tool] | None = None
    tool_choice: _ToolChoice | None = None


def format_instruction(fmt: Literal["json"] | dict[str, Any] | None) -> str | None:
    if fmt is None:
        return None
    if fmt == "json":
        return JSON_INSTRUCTION
    return f"{JSON_INSTRUCTION} It must follow this JSON Schema: {json.dumps(fmt)}"


def think_budget(think: bool | str | None) -> int | None:
    """The thinking budget of a ``think`` level; None when off."""
    if think is None or think is False:
        return None
    return THINK_BUDGETS["medium" if think is True else str(think)]


def thinking(think: bool | str | None, max_tokens: int) -> _Thinking | None:
    """The thinking block for ``think``; None when off, or when ``max_tokens``
    leaves no room for the 1024-token minimum budget."""
    budget = think_budget(think)
    if budget is None:
        return None
    budget = min(budget, max_tokens - 1)
    return _Thinking(budget) if budget >= MIN_THINK_BUDGET else None


def output_cap(request: ChatRequest, default_max_tokens: int) -> tuple[int, _Thinking | None]:
    """``max_tokens`` and the thinking block. A caller's ``max_tokens``
    counts thinking too, as on Anthropic. Without one, thinking gets its
    budget on top of the default answer room (up to the Claude 4 models'
    smallest output limit), rather than being cut to fit the default and
    leaving the answer next to nothing (4095 of 4096 tokens thinking)."""
    budget = think_budget(request.think)
    if request.max_tokens is not None or budget is None:
        cap = request.max_tokens or default_max_tokens
        return cap, thinking(request.think, cap)
    cap = max(default_max_tokens, min(default_max_tokens + budget, MAX_OUTPUT_TOKENS))
    budget = min(budget, cap - default_max_tokens)
    return cap, _Thinking(budget) if budget >= MIN_THINK_BUDGET else None


def image_block(image: ImageRef) -> ImageBlock:
    if image.url is not None:
        return ImageBlock(_Source("url", url=image.url))
    # Anthropic checks media_type against the bytes and refuses a mismatch
    # (and the common "image/jpg"), where OpenAI reads past a wrong label:
    # the bytes say what the image is.
    media = sniff(image.data) or _ALIASES.get(image.media_type, image.media_type)
    return ImageBlock(_Source("base64", media_type=media or "image/png", data=image.data))


def _user_content(message: Message) -> str | list[Block]:
    if not message.has_images():
        return message.text()
    blocks: list[Block] = []
    parts = [] if isinstance(message.content, str) else message.content
    if isinstance(message.content, str) and message.content:
        blocks.append(TextBlock(message.content))
    refs = iter(message.image_refs())
    for part in parts:
        if isinstance(part, TextPart):
            blocks.append(TextBlock(part.text))
        elif isinstance(part, ImagePart):
            blocks.append(image_block(next(refs)))
    # What is left are the message's ``images``, after its content.
    blocks += [image_block(ref) for ref in refs]
    return blocks


def _tool_input(arguments: dict[str, Any] | str) -> dict[str, Any]:
    value = parse_arguments(arguments) if isinstance(arguments, str) else arguments
    # Arguments a model wrote as broken JSON cannot be an object: keep the text.
    return value if isinstance(value, dict) else {"arguments": value}


def turns(messages: list[Message]) -> tuple[list[str], list[Turn]]:
    """The ``system`` texts and the conversation's turns."""
    ids = pair_calls(messages)
    system: list[str] = []
    out: list[Turn] = []
    for i, message in enumerate(messages):
        if message.role == "system":
            system.append(message.text())
        elif message.role == "user":
            out.append(Turn("user", _user_content(message)))
        elif message.role == "assistant":
            blocks: list[Block] = [TextBlock(message.text())] if message.text() else []
            blocks += [
                ToolUseBlock(
                    ids.calls[(i, j)], call.function.name, _tool_input(call.function.arguments)
                )
                for j, call in enumerate(message.tool_calls or ())
            ]
            out.append(Turn("assistant", blocks if message.tool_calls else message.text()))
        else:
            result = ToolResultBlock(ids.results[i], message.text())
            last = out[-1] if out else None
            if (
                last is not None
                and last.role == "user"
                and isinstance(last.content, list)
                and all(isinstance(b, ToolResultBlock) for b in last.content)
            ):
                last.content.append(result)
            else:
                out.append(Turn("user", [result]))
    return system, out


def tool_choice(request: ChatRequest) -> _ToolChoice | None:
    choice = request.tool_choice
    single = True if request.parallel_tool_calls is False else None
    if isinstance(choice, NamedToolChoice):
        return _ToolChoice("tool", name=choice.function.name, disable_parallel_tool_use=single)
    if choice == "none":
        return _ToolChoice("none")
    if choice == "required":
        return _ToolChoice("any", disable_parallel_tool_use=single)
    if choice == "auto" or (single and request.tools):
        return _ToolChoice("auto", disable_parallel_tool_use=single)
    return None


def tools(request: ChatRequest) -> list[_Tool] | None:
    if not request.tools:
        return None
    return [
        _Tool(
            name=t.function.name,
            input_schema=t.function.parameters or {"type": "object", "properties": {}},
            description=t.function.description,
        )
        for t in request.tools
    ]


def body(
    request: ChatRequest, model: str, *, stream: bool, default_max_tokens: int, provider: str
) -> Body:
    refuse_unsupported(request, provider, "Anthropic Messages")
    system, conversation = turns(request.messages)
    if not conversation:
        raise BadRequest(
            f"{provider}: the Messages API needs a user or assistant message, not only system ones",
            provider=provider,
        )
    instruction = format_instruction(request.format)
    if instruction:
        system.append(instruction)
    cap, think = output_cap(request, default_max_tokens)
    return Body(
        model=model,
        messages=conversation,
        max_tokens=cap,
        stream=stream,
        system="\n\n".join(system) or None,
        temperature=None if think else request.temperature,
        top_p=None if think else request.top_p,
        stop_sequences=request.stop or None,
        thinking=think,
        tools=tools(request),
        tool_choice=tool_choice(request),
    )
