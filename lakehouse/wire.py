"""Wire types of chatd's native API, and the codecs built once for them.

They are also chatd's internal model: every caller surface maps its
requests onto ``ChatRequest`` and every provider maps ``ChatResponse`` and
``StreamDelta`` out of its upstream's replies (the README's "Tools and
images" section states the conventions for tool calls and images).

Inbound types are strict (unknown fields and wrong types are refused with
the path of the bad field); outbound types omit optional fields left unset.
The checks that span fields or messages (an orphan tool result, a named
``tool_choice`` without its tool) raise BadRequest naming the field; they
run in ``ChatRequest.__post_init__``, so they live here with the Structs
(which puts the module a little over 350 lines).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from lakehouse.errors import BadRequest
from lakehouse.images import ImageRef, image_ref

Role = Literal["system", "user", "assistant", "tool"]
ThinkLevel = Literal["low", "medium", "high", "max"]

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
# OpenAI's rule for function names; Ollama and the others accept it too.
ToolName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
Penalty = Annotated[float, msgspec.Meta(ge=-2, le=2)]


class ImageURL(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    # A data URL, an http(s) URL, or bare base64 (lakehouse.images).
    url: NonEmpty
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(msgspec.Struct, tag="text", tag_field="type", forbid_unknown_fields=True):
    text: str


class ImagePart(msgspec.Struct, tag="image_url", tag_field="type", forbid_unknown_fields=True):
    image_url: ImageURL


Part = TextPart | ImagePart


class FunctionCall(msgspec.Struct, forbid_unknown_fields=True):
    name: ToolName
    # A JSON object; a string only when a model's arguments were not a JSON
    # object (kept as it wrote them, so nothing is lost on the way back).
    arguments: dict[str, Any] | str = {}
    # Ollama numbers the calls of one answer; accepted, never needed or sent.
    index: int | msgspec.UnsetType = msgspec.UNSET


class ToolCall(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A call the assistant made. ``id`` is the upstream's, or minted by
    chatd when the upstream gives none (Ollama), so results can name it."""

    id: str = ""
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionSpec(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    name: ToolName
    description: str | None = None
    # A JSON Schema of type object; none: the function takes no arguments.
    parameters: dict[str, Any] | None = None
    # OpenAI's strict schema adherence; passed on where the dialect has it.
    strict: bool | None = None


class Tool(msgspec.Struct, forbid_unknown_fields=True):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(msgspec.Struct, forbid_unknown_fields=True):
    name: ToolName


class NamedToolChoice(msgspec.Struct, forbid_unknown_fields=True):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["auto", "none", "required"] | NamedToolChoice


class Message(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    role: Role
    # Text, or ordered text and image parts (OpenAI's shape).
    content: str | list[Part] = ""
    # Ollama's shape: images that follow the content, each a data URL, an
    # http(s) URL or bare base64.
    images: list[NonEmpty] | None = None
    # An assistant turn's calls (its content may then be empty).
    tool_calls: list[ToolCall] | None = None
    # A tool turn: the call it answers (``tool_call_id``, or Ollama's
    # ``tool_name`` alone when the call had no id).
    tool_call_id: NonEmpty | None = None
    tool_name: NonEmpty | None = None
    # An assistant turn's reasoning, sent back where an upstream wants it
    # (Kimi asks for it in multi-turn tool use).
    thinking: str | None = None

    def text(self) -> str:
        """The text of the content (text parts joined by newlines)."""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text for p in self.content if isinstance(p, TextPart))

    def image_refs(self) -> list[ImageRef]:
        """Every image, in order: image parts, then ``images``."""
        found = [] if isinstance(self.content, str) else self.content
        urls = [p.image_url.url for p in found if isinstance(p, ImagePart)]
        return [image_ref(u) for u in [*urls, *(self.images or ())]]

    def has_images(self) -> bool:
        return bool(self.images) or (
            not isinstance(self.content, str)
            and any(isinstance(p, ImagePart) for p in self.content)
        )


class ChatRequest(msgspec.Struct, forbid_unknown_fields=True):
    model: NonEmpty
    messages: Annotated[list[Message], msgspec.Meta(min_length=1)]
    # "json", or a JSON Schema object for structured output.
    format: Literal["json"] | dict[str, Any] | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    think: bool | ThinkLevel | None = None
    # Seconds this request may take, retries and fallbacks included; capped
    # by the config's deadline_secs.
    deadline_secs: Annotated[float, msgspec.Meta(gt=0)] | None = None
    # Answer as NDJSON lines while the answer is generated (StreamDelta
    # lines, then a StreamDone line), instead of one JSON object.
    stream: bool = False
    stop: Annotated[list[str], msgspec.Meta(max_length=16)] | None = None
    seed: int | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    tools: list[Tool] | None = None
    # None: the upstream's default (auto when there are tools).
    tool_choice: ToolChoice | None = None
    # None: the upstream's default (true on OpenAI).
    parallel_tool_calls: bool | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    # Log probabilities of the answer's tokens, and of this many
    # alternatives at each (needs logprobs).
    logprobs: bool | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None

    def __post_init__(self) -> None:
        if self.tools or self.tool_choice is not None or self.top_logprobs:
            check_tools(self)
        check_messages(self.messages)

    def has_images(self) -> bool:
        return any(m.has_images() for m in self.messages)

    def uses_tools(self) -> bool:
        """Whether tools are offered or the history holds calls or results."""
        return bool(self.tools) or any(m.tool_calls or m.role == "tool" for m in self.messages)


class TopLogprob(msgspec.Struct, omit_defaults=True):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(msgspec.Struct, omit_defaults=True):
    """One generated token's log probability, OpenAI's shape (Ollama's too)."""

    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = []


class ChatResponse(msgspec.Struct, omit_defaults=True):
    model: str
    provider: str
    content: str
    # "stop", "length", "tool_calls" (the model called tools), …
    done_reason: str
    prompt_tokens: int
    completion_tokens: int
    # Stamped by the dispatcher; the -1 default (never sent) only marks an
    # answer that has not been through it, so a stamped 0 is still sent.
    latency_ms: int = -1
    reasoning: str | None = None
    tier: str | None = None
    # Set when a fallback answered: the name (tier or model) of the link
    # that did.
    fallback: str | None = None
    # Set when the request took more than one upstream call (retries of
    # one provider, fallbacks, or both): how many.
    attempts: int | None = None
    # Whole calls, each with an id, in the order the model made them.
    tool_calls: list[ToolCall] | None = None
    logprobs: list[TokenLogprob] | None = None


class ToolCallChunk(msgspec.Struct, omit_defaults=True):
    """A piece of a streamed tool call, as OpenAI streams them: the first
    piece of call ``index`` carries its ``id`` and ``name``; every piece may
    carry a fragment of the arguments' JSON text, to be concatenated."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class StreamDelta(msgspec.Struct, omit_defaults=True):
    """A piece of a streamed answer; a provider's stream ends with a
    ChatResponse after the last one (its text left to the deltas: see
    ``Provider.stream`` in lakehouse.plugin_api)."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCallChunk] | None = None
    logprobs: list[TokenLogprob] | None = None


class StreamLine(msgspec.Struct, omit_defaults=True):
    """A line of the native stream before the last: text as it comes, and
    tool calls whole (as Ollama streams them), each once it is complete.
    (Providers yield StreamDeltas; the native API writes these.)"""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] | None = None
    logprobs: list[TokenLogprob] | None = None


class StreamDone(msgspec.Struct, omit_defaults=True, kw_only=True):
    """The last line of a streamed native answer: what the lines before it
    did not say (the ChatResponse without ``content``, ``reasoning``,
    ``tool_calls`` and ``logprobs``, all streamed already), so a client
    joining every line's ``content`` gets the answer once."""

    model: str
    provider: str
    done_reason: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int = -1
    tier: str | None = None
    fallback: str | None = None
    attempts: int | None = None
    done: Literal[True]

    @classmethod
    def of(cls, final: ChatResponse) -> StreamDone:
        return cls(
            model=final.model,
            provider=final.provider,
            done_reason=final.done_reason,
            prompt_tokens=final.prompt_tokens,
            completion_tokens=final.completion_tokens,
            latency_ms=final.latency_ms,
            tier=final.tier,
            fallback=final.fallback,
            attempts=final.attempts,
            done=True,
        )


class ErrorDetail(msgspec.Struct, omit_defaults=True):
    code: str
    message: str
    provider: str | None = None
    path: str | None = None


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


class ProvidersListing(msgspec.Struct, omit_defaults=True):
    providers: dict[str, bool]
    # Providers with several hosts (base_urls): each host's availability.
    hosts: dict[str, dict[str, bool]] = {}


class Status(msgspec.Struct):
    """``/health`` and ``/ready``."""

    status: Literal["ok", "ready", "starting"]


def _bad(path: str, what: str) -> BadRequest:
    return BadRequest(f"`{path}` {what}", path=f"$.{path}")


def check_tools(request: ChatRequest) -> None:
    """Tool definitions are distinct functions with object schemas, and a
    ``tool_choice`` that needs tools has them."""
    names: set[str] = set()
    for i, tool in enumerate(request.tools or ()):
        spec = tool.function
        if spec.name in names:
            raise _bad(f"tools[{i}].function.name", f"repeats the name {spec.name!r}")
        names.add(spec.name)
        kind = (spec.parameters or {}).get("type", "object")
        if kind != "object":
            raise _bad(f"tools[{i}].function.parameters.type", 'must be "object"')
    choice = request.tool_choice
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        raise _bad(
            "tool_choice.function.name", f"names no tool in `tools`: {choice.function.name!r}"
        )
    if choice == "required" and not names:
        raise _bad("tool_choice", 'is "required" but no `tools` are given')
    if request.top_logprobs and not request.logprobs:
        raise _bad("top_logprobs", "needs `logprobs: true`")


def check_messages(messages: list[Message]) -> None:
    """Each message has what its role needs, its images are readable, and
    every tool result answers an earlier call."""
    ids: set[str] = set()
    names: set[str] = set()
    for i, m in enumerate(messages):
        if _plain(m):
            continue
        at = f"messages[{i}]"
        if m.tool_calls and m.role != "assistant":
            raise _bad(f"{at}.tool_calls", "is only for assistant messages")
        if (m.tool_call_id or m.tool_name) and m.role != "tool":
            field = "tool_call_id" if m.tool_call_id else "tool_name"
            raise _bad(f"{at}.{field}", "is only for tool messages")
        _check_images(m, at)
        if m.role == "tool":
            _check_result(m, at, ids, names)
        elif not (m.content or m.images or m.tool_calls):
            raise _bad(f"{at}.content", "is required")
        for call in m.tool_calls or ():
            if call.id:
                ids.add(call.id)
            names.add(call.function.name)


def _plain(m: Message) -> bool:
    """Text only, nothing to check: the common case, kept cheap."""
    return (
        m.content.__class__ is str
        and m.content != ""
        and m.role != "tool"
        and m.images is None
        and m.tool_calls is None
        and m.tool_call_id is None
        and m.tool_name is None
    )


def _check_result(m: Message, at: str, ids: set[str], names: set[str]) -> None:
    if m.has_images():
        raise _bad(f"{at}.content", "of a tool message must be text")
    if m.tool_call_id is not None:
        if m.tool_call_id not in ids:
            raise _bad(f"{at}.tool_call_id", "answers no tool call of an earlier assistant message")
    elif m.tool_name is not None:
        if m.tool_name not in names:
            raise _bad(f"{at}.tool_name", "names no tool called by an earlier assistant message")
    else:
        raise _bad(f"{at}.tool_call_id", "is required on a tool message")


def _check_images(m: Message, at: str) -> None:
    if not isinstance(m.content, str):
        for j, part in enumerate(m.content):
            if isinstance(part, ImagePart):
                _check_image(part.image_url.url, f"{at}.content[{j}].image_url.url")
    for j, image in enumerate(m.images or ()):
        _check_image(image, f"{at}.images[{j}]")


def _check_image(text: str, path: str) -> None:
    try:
        image_ref(text)
    except ValueError as exc:
        raise _bad(path, f"is not an image: {exc}") from None


chat_request_decoder = msgspec.json.Decoder(ChatRequest)
encoder = msgspec.json.Encoder()
