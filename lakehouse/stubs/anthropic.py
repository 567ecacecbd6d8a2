"""The Anthropic Messages dialect (docs/protocols/anthropic-messages.md):
``POST {base}/messages`` as Anthropic, OpenCode Zen and Kimi's Anthropic-
compatible endpoint answer it, whole or as named SSE events."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from lakehouse.stubs import replies
from lakehouse.stubs.dialect import DialectAPI
from lakehouse.stubs.faults import Fault
from lakehouse.stubs.openai import decode_body
from lakehouse.stubs.received import Received, Route
from lakehouse.stubs.reply import JSON, SSE, Failure, Rejected, Reply, encode, json_reply, reject
from lakehouse.stubs.tool_use import Call, choose, results_answer

OVERLOADED = "Overloaded"
INVALID = "invalid_request_error"
MIN_THINK_BUDGET = 1024
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


def _bytes_type(data: str) -> str | None:
    """The image type the first bytes of base64 ``data`` show, if known."""
    try:
        head = base64.b64decode(data[:16])
    except (binascii.Error, ValueError):
        return None
    for magic, media in (
        (b"\x89PNG", "image/png"),
        (b"\xff\xd8\xff", "image/jpeg"),
        (b"GIF8", "image/gif"),
    ):
        if head.startswith(magic):
            return media
    return "image/webp" if head[:4] == b"RIFF" and head[8:12] == b"WEBP" else None


def named_event(name: str, obj: Mapping[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + encode(obj) + b"\n\n"


def _results(message: Mapping[str, Any]) -> list[str]:
    """The tool results a user turn carries, in order."""
    content = message.get("content")
    if message.get("role") != "user" or not isinstance(content, list):
        return []
    return [
        replies.part_text(b.get("content"))
        for b in content
        if isinstance(b, dict) and b.get("type") == "tool_result"
    ]


def _message(
    ident: str, model: str, content: list[Any], stop_reason: str | None, usage: dict[str, int]
) -> dict[str, Any]:
    """A message object: the whole answer, or the empty one ``message_start``
    carries (no stop reason yet)."""
    return {
        "id": ident,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }


def _usage(prompt: int, output: int) -> dict[str, int]:
    return {
        "input_tokens": prompt,
        "output_tokens": output,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def _text(content: Any) -> str:
    """A message's text: a string, or its text blocks (tool_result blocks too)."""
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                parts.append(replies.part_text(block.get("content")))
        return " ".join([replies.part_text(content), *parts]).strip()
    return replies.part_text(content)


class MessagesAPI(DialectAPI):
    def routes(self) -> list[Route]:
        return [
            Route(
                "POST",
                f"{self.flavour.base_path}/messages",
                self.answer,
                chat=True,
                auth="x-api-key",
                error=self.error,
            )
        ]

    def error(self, failure: Failure) -> Reply:
        body = self.flavour.messages_error(
            failure.status, failure.message, failure.error_type, failure.metadata
        )
        return json_reply(failure.status, body, JSON, failure.headers)

    def _check(self, data: Mapping[str, Any]) -> tuple[str, list[dict[str, Any]], int]:
        model = data.get("model")
        if not isinstance(model, str) or not model:
            raise reject(400, "model: Field required", INVALID)
        if self.catalog.find(model) is None:
            raise Rejected(self.flavour.not_found(model))
        cap = data.get("max_tokens")
        if cap is None:
            raise reject(400, "max_tokens: Field required", INVALID)
        if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
            raise reject(400, "max_tokens: Input should be a valid positive integer", INVALID)
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise reject(400, "messages: at least one message is required", INVALID)
        offered: set[str] = set()
        for i, m in enumerate(messages):
            role = m.get("role") if isinstance(m, dict) else None
            if role not in ("user", "assistant"):
                raise reject(
                    400, f"messages.{i}.role: Input should be 'user' or 'assistant'", INVALID
                )
            offered = self._check_blocks(i, m.get("content"), offered)
        return model, messages, cap

    def _check_blocks(self, i: int, content: Any, offered: set[str]) -> set[str]:
        """Blocks are well formed and tool results answer the turn before;
        the tool_use ids this turn offers."""
        if isinstance(content, str):
            return set()
        if not isinstance(content, list):
            raise reject(400, f"messages.{i}.content: Input should be a string or a list", INVALID)
        ids: set[str] = set()
        for j, block in enumerate(content):
            kind = block.get("type") if isinstance(block, dict) else None
            at = f"messages.{i}.content.{j}"
            if kind == "tool_use":
                if not block.get("id") or not isinstance(block.get("input"), dict):
                    raise reject(400, f"{at}.tool_use: id and input are required", INVALID)
                ids.add(block["id"])
            elif kind == "tool_result" and block.get("tool_use_id") not in offered:
                raise reject(
                    400,
                    f"{at}: unexpected `tool_use_id` found in `tool_result` "
                    "blocks; each must answer a `tool_use` of the previous turn",
                    INVALID,
                )
            elif kind == "image":
                self._check_image(at, block.get("source"))
            elif kind not in ("text", "tool_result", "thinking"):
                raise reject(400, f"{at}.type: unknown content block type {kind!r}", INVALID)
        return ids

    @staticmethod
    def _check_image(at: str, source: Any) -> None:
        kind = source.get("type") if isinstance(source, dict) else None
        if kind == "base64" and isinstance(source, dict):
            media = source.get("media_type")
            if media not in IMAGE_TYPES or not source.get("data"):
                raise reject(
                    400,
                    f"{at}.source: media_type must be one of {IMAGE_TYPES} and data is required",
                    INVALID,
                )
            # Anthropic reads the bytes and refuses a type they contradict.
            seen = _bytes_type(str(source["data"]))
            if seen is not None and seen != media:
                raise reject(
                    400,
                    f"{at}.image.source.base64: The image was specified using "
                    f"the {media} media type, but the image appears to be a {seen} "
                    "image",
                    INVALID,
                )
        elif kind == "url" and isinstance(source, dict):
            if not str(source.get("url", "")).startswith(("http://", "https://")):
                raise reject(400, f"{at}.source.url: must be an http(s) URL", INVALID)
        else:
            raise reject(400, f"{at}.source.type: Input should be 'base64' or 'url'", INVALID)

    def _tools(self, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        tools = data.get("tools") or []
        if not isinstance(tools, list):
            raise reject(400, "tools: Input should be a valid list", INVALID)
        for i, tool in enumerate(tools):
            if (
                not isinstance(tool, dict)
                or not tool.get("name")
                or not isinstance(tool.get("input_schema"), dict)
            ):
                raise reject(400, f"tools.{i}: name and input_schema are required", INVALID)
        return [{"name": t["name"], "schema": t["input_schema"]} for t in tools]

    def _calls(
        self, data: Mapping[str, Any], messages: list[dict[str, Any]], user_text: str
    ) -> list[Call]:
        tools = self._tools(data)
        choice = data.get("tool_choice") or {"type": "auto"}
        kind = choice.get("type") if isinstance(choice, dict) else None
        if kind not in ("auto", "any", "tool", "none"):
            raise reject(
                400, "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'", INVALID
            )
        if kind == "none" or messages[-1].get("role") != "user" or _results(messages[-1]):
            return []
        named = choice.get("name") if kind == "tool" else None
        if named is not None and named not in {t["name"] for t in tools}:
            raise reject(400, f"tool_choice.name: no tool named {named!r}", INVALID)
        parallel = choice.get("disable_parallel_tool_use") is not True
        return choose(tools, named, user_text, parallel=parallel)

    def _thinking_budget(self, data: Mapping[str, Any], cap: int) -> int | None:
        thinking = data.get("thinking")
        if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
            return None
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or budget < MIN_THINK_BUDGET:
            raise reject(
                400,
                "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024",
                INVALID,
            )
        if budget >= cap:
            raise reject(400, "`max_tokens` must be greater than `thinking.budget_tokens`", INVALID)
        if data.get("temperature") not in (None, 1, 1.0):
            raise reject(
                400, "`temperature` may only be set to 1 when thinking is enabled", INVALID
            )
        return budget

    def _answer(self, call: Received, fault: Fault | None) -> Reply:
        data = decode_body(call.body, INVALID)
        model, messages, cap = self._check(data)
        stream = data.get("stream", False)
        if not isinstance(stream, bool):
            raise reject(400, "stream: Input should be a valid boolean", INVALID)
        budget = self._thinking_budget(data, cap)
        system = replies.part_text(data.get("system"))
        users = [m for m in messages if m.get("role") == "user"]
        user_text = _text(users[-1].get("content")) if users else ""
        results = _results(messages[-1])
        text = results_answer(results) if results else replies.reply_text(user_text)
        if "JSON" in system:
            text = replies.json_content(text)
        # Thinking spends at most its budget; the rest of the cap is the answer's.
        thinking = replies.thinking_text(user_text) if budget else None
        gen = replies.generate(text, thinking=thinking, budget=cap)
        prompt = replies.count_prompt([system, *(_text(m.get("content")) for m in messages)])
        ident = f"msg_stub{next(self._ids):06d}"
        kind = fault.kind if fault is not None else None
        calls = self._calls(data, messages, user_text)
        if calls:
            return self._called(ident, model, calls, prompt, stream)
        if not stream:
            if kind == "midstream_error":
                assert fault is not None
                raise Rejected(
                    Failure(fault.status or 529, fault.message or OVERLOADED, fault.error_type)
                )
            return json_reply(200, self._whole(ident, model, gen, prompt, kind))
        frames = self._stream(ident, model, gen, prompt)
        if fault is not None and kind == "midstream_error":
            keep = min(fault.after, len(frames) - 2)
            error = self.flavour.messages_error(
                fault.status or 529, fault.message or OVERLOADED, fault.error_type, None
            )
            frames = (*frames[:keep], named_event("error", error))
        return Reply(200, SSE, frames, stream=True, headers={"Cache-Control": "no-cache"})

    def _called(
        self, ident: str, model: str, calls: list[Call], prompt: int, stream: bool
    ) -> Reply:
        """The model calls tools instead of answering."""
        uses = [
            {"type": "tool_use", "id": f"toolu_{ident}_{i}", "name": call.name}
            for i, call in enumerate(calls)
        ]
        usage = _usage(prompt, sum(c.count for c in calls))
        if not stream:
            content = [
                {**use, "input": call.arguments} for use, call in zip(uses, calls, strict=True)
            ]
            return json_reply(200, _message(ident, model, content, "tool_use", usage))
        start = _message(ident, model, [], None, _usage(prompt, 1))
        frames = [named_event("message_start", {"type": "message_start", "message": start})]
        for index, (use, call) in enumerate(zip(uses, calls, strict=True)):
            frames.append(
                named_event(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {**use, "input": {}},
                    },
                )
            )
            frames += [
                named_event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": piece},
                    },
                )
                for piece in call.pieces
            ]
            frames.append(
                named_event("content_block_stop", {"type": "content_block_stop", "index": index})
            )
        frames += [
            named_event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                    "usage": {"output_tokens": usage["output_tokens"]},
                },
            ),
            named_event("message_stop", {"type": "message_stop"}),
        ]
        return Reply(200, SSE, tuple(frames), stream=True, headers={"Cache-Control": "no-cache"})

    @staticmethod
    def _stop(gen: replies.Generation) -> str:
        return "max_tokens" if gen.finish == "length" else "end_turn"

    def _whole(
        self, ident: str, model: str, gen: replies.Generation, prompt: int, kind: str | None
    ) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if gen.thinking:
            content.append(
                {"type": "thinking", "thinking": gen.thinking_text, "signature": "stub-signature"}
            )
        if gen.content:
            content.append({"type": "text", "text": gen.content_text})
        if kind == "empty_choices":
            content = []
        return _message(ident, model, content, self._stop(gen), _usage(prompt, gen.count))

    def _stream(
        self, ident: str, model: str, gen: replies.Generation, prompt: int
    ) -> tuple[bytes, ...]:
        start = _message(ident, model, [], None, _usage(prompt, 1))
        frames = [
            named_event("message_start", {"type": "message_start", "message": start}),
            named_event("ping", {"type": "ping"}),
        ]
        index = 0
        for kind, pieces, field, delta_type in (
            ("thinking", gen.thinking, "thinking", "thinking_delta"),
            ("text", gen.content, "text", "text_delta"),
        ):
            if not pieces:
                continue
            block: dict[str, Any] = {"type": kind, field: ""}
            if kind == "thinking":
                block["signature"] = ""
            frames.append(
                named_event(
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": block},
                )
            )
            frames += [
                named_event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": delta_type, field: piece},
                    },
                )
                for piece in pieces
            ]
            if kind == "thinking":
                frames.append(
                    named_event(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "signature_delta", "signature": "stub-signature"},
                        },
                    )
                )
            frames.append(
                named_event("content_block_stop", {"type": "content_block_stop", "index": index})
            )
            index += 1
        frames.append(
            named_event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": self._stop(gen), "stop_sequence": None},
                    "usage": {"output_tokens": gen.count},
                },
            )
        )
        frames.append(named_event("message_stop", {"type": "message_stop"}))
        return tuple(frames)
