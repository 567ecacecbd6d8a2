"""The OpenAI Chat Completions dialect (docs/protocols.md §3) with each flavour's quirks."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import msgspec

from lakehouse.stubs import replies
from lakehouse.stubs.dialect import DialectAPI
from lakehouse.stubs.faults import Fault
from lakehouse.stubs.received import Received, Route
from lakehouse.stubs.reply import (
    JSON,
    SSE,
    SSE_DONE,
    Rejected,
    Reply,
    json_reply,
    reject,
    sse_event,
)
from lakehouse.stubs.tools import arguments_text as tool_arguments_text
from lakehouse.stubs.tools import check_tools, planned_calls, results_answer

MIDSTREAM_ERROR = "Provider disconnected unexpectedly"
CONTEXT_LENGTH = 262_144
# Cost per token, in dollars, for the price fields some flavours add.
PRICE = 0.000002


def decode_body(body: bytes, error_type: str = "invalid_request_error") -> dict[str, Any]:
    if not body.strip():
        raise reject(400, "missing request body", error_type)
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise reject(400, f"invalid JSON body: {exc}", error_type) from None
    if not isinstance(data, dict):
        raise reject(400, "request body must be a JSON object", error_type)
    return data


def _messages(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    messages = data.get("messages")
    if (
        not isinstance(messages, list)
        or not messages
        or not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages)
    ):
        raise reject(
            400,
            "messages must be a non-empty array of {role, content} objects",
            "invalid_request_error",
        )
    return messages


def _check_conversation(data: Mapping[str, Any], messages: list[dict[str, Any]]) -> None:
    """What OpenAI itself refuses: bad tools, image URLs that are neither
    http(s) nor data URLs, calls with object arguments, results without an id."""
    problem = check_tools(data)
    if problem is not None:
        raise reject(400, problem, "invalid_request_error")
    for i, m in enumerate(messages):
        content = m.get("content")
        for j, part in enumerate(content if isinstance(content, list) else ()):
            if isinstance(part, dict) and part.get("type") == "image_url":
                url = (part.get("image_url") or {}).get("url", "")
                if not str(url).startswith(("http://", "https://", "data:image/")):
                    raise reject(
                        400,
                        f"Invalid image_url at messages[{i}].content[{j}]",
                        "invalid_request_error",
                    )
        for call in m.get("tool_calls") or ():
            if not isinstance((call.get("function") or {}).get("arguments"), str):
                raise reject(
                    400,
                    f"messages[{i}].tool_calls: arguments must be a string",
                    "invalid_request_error",
                )
        if m.get("role") == "tool" and not m.get("tool_call_id"):
            raise reject(
                400, f"messages[{i}]: tool messages need a tool_call_id", "invalid_request_error"
            )


def _tool_call_deltas(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI's streamed form: per call, a head with id, type and name (and
    empty arguments), then the arguments' text in a few fragments."""
    out = []
    for n, call in enumerate(calls):
        out.append(
            {
                "index": n,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""},
            }
        )
        text = call["function"]["arguments"]
        step = max(1, len(text) // 3)
        out += [
            {"index": n, "function": {"arguments": text[k : k + step]}}
            for k in range(0, len(text), step)
        ]
    return out


def _usage(prompt: int, gen: replies.Generation) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": gen.count,
        "total_tokens": prompt + gen.count,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": len(gen.thinking)},
    }


class OpenAIAPI(DialectAPI):
    def routes(self) -> list[Route]:
        base = self.flavour.base_path
        return [
            Route("GET", f"{base}/models", self.models),
            Route("POST", f"{base}/chat/completions", self.answer, chat=True),
        ]

    def models(self, call: Received, fault: Fault | None) -> Reply:
        created = 1_754_000_000
        data = [
            {
                "id": name,
                "object": "model",
                "name": name,
                "created": created,
                "owned_by": self.flavour.owned_by,
                "context_length": CONTEXT_LENGTH,
                "supports_reasoning": self.catalog.thinks(name),
                "display_name": name,
            }
            for name in self.catalog.names
        ]
        return json_reply(200, {"object": "list", "data": data})

    def _model(self, data: Mapping[str, Any]) -> str:
        model = data.get("model")
        if model is None and self.flavour.default_model_when_missing:
            return self.catalog.names[0]
        if not isinstance(model, str) or not model:
            raise reject(400, "model is required", "invalid_request_error")
        if self.catalog.find(model) is None:
            raise Rejected(self.flavour.not_found(model))
        return model

    def _budget(self, data: Mapping[str, Any]) -> int | None:
        for name in self.flavour.cap_fields:
            value = data.get(name)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise reject(400, f"{name} must be a positive integer", "invalid_request_error")
            return value
        return None

    def _check_sampling(self, data: Mapping[str, Any]) -> None:
        for name, allowed in self.flavour.fixed_sampling.items():
            value = data.get(name)
            if value is not None and value != allowed:
                shown = int(allowed) if float(allowed).is_integer() else allowed
                raise reject(
                    400,
                    f"invalid {name}: only {shown} is allowed for this model",
                    "invalid_request_error",
                )

    def _content(self, data: Mapping[str, Any], user_text: str) -> str:
        text = replies.reply_text(user_text)
        fmt = data.get("response_format")
        if fmt is None:
            return text
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind == "text":
            return text
        if kind == "json_object":
            return replies.json_content(text)
        if kind == "json_schema":
            spec = fmt.get("json_schema") if isinstance(fmt, dict) else None
            if not isinstance(spec, dict) or not spec.get("name"):
                raise reject(
                    400, "response_format.json_schema.name is required", "invalid_request_error"
                )
            return replies.json_content(text, spec.get("schema") or {})
        raise reject(
            400,
            "response_format.type must be text, json_object or json_schema",
            "invalid_request_error",
        )

    def _answer(self, call: Received, fault: Fault | None) -> Reply:
        data = decode_body(call.body)
        model = self._model(data)
        messages = _messages(data)
        stream = data.get("stream", False)
        if not isinstance(stream, bool):
            raise reject(400, "stream must be a boolean", "invalid_request_error")
        self._check_sampling(data)
        _check_conversation(data, messages)
        budget = self._budget(data)
        texts = [replies.part_text(m.get("content")) for m in messages]
        users = [m for m in messages if m.get("role") == "user"]
        user_text = replies.part_text(users[-1].get("content")) if users else ""
        answered = results_answer(messages)
        content = self._content(data, user_text) if answered is None else answered
        calls = [
            {
                "id": f"call_{next(self._ids):06d}",
                "type": "function",
                "function": {"name": name, "arguments": tool_arguments_text(args)},
            }
            for name, args in planned_calls(data, user_text)
        ]
        thinks = self.catalog.thinks(model) and not self.flavour.reasoning_off(data)
        if calls:
            content, thinks = "", False
        top = (data.get("top_logprobs") or 0) if data.get("logprobs") else None
        thinking = replies.thinking_text(user_text) if thinks else None
        gen = replies.generate(content, thinking=thinking, budget=budget)
        usage = _usage(replies.count_prompt(texts), gen)
        hidden = self.flavour.reasoning_hidden(data)
        ident = f"{self.flavour.id_prefix}{int(time.time())}-{next(self._ids):06d}"
        head = {
            "id": ident,
            "created": int(time.time()),
            "model": model,
            **self.flavour.extra_response,
        }
        headers = {self.flavour.generation_header: ident} if self.flavour.generation_header else {}
        kind = fault.kind if fault is not None else None
        if not stream:
            return self._whole(head, gen, usage, hidden, fault, headers, calls, top)
        opts = data.get("stream_options")
        include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
        frames = self._stream(head, gen, usage, hidden, include_usage, kind, calls, top)
        if fault is not None and kind == "midstream_error":
            # Cut before the finishing chunk, then report the failure in-band.
            body_frames = (
                len(self.flavour.stream_preamble)
                + 1
                + (0 if hidden else len(gen.thinking))
                + len(gen.content)
            )
            keep = min(fault.after, body_frames)
            frames = (*frames[:keep], self._error_event(head, fault))
        return Reply(
            200, SSE, frames, stream=True, headers={"Cache-Control": "no-cache", **headers}
        )

    @staticmethod
    def _logprobs(pieces: list[str], top: int | None) -> dict[str, Any]:
        """The choice's ``logprobs``; ``top`` None: not asked for."""
        if top is None:
            return {}
        return {"logprobs": {"content": replies.token_logprobs(pieces, top), "refusal": None}}

    def _message(self, gen: replies.Generation, hidden: bool) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": gen.content_text}
        if gen.thinking and not hidden:
            message[self.flavour.reasoning_field] = gen.thinking_text
        return message

    def _whole(
        self,
        head: dict[str, Any],
        gen: replies.Generation,
        usage: dict[str, Any],
        hidden: bool,
        fault: Fault | None,
        headers: Mapping[str, str],
        calls: list[dict[str, Any]],
        top: int | None,
    ) -> Reply:
        kind = fault.kind if fault is not None else None
        choice: dict[str, Any] = {
            "index": 0,
            "message": self._message(gen, hidden),
            "finish_reason": gen.finish,
            **self._logprobs(gen.content, top),
        }
        if calls:
            # content is null when the model only called tools.
            choice["message"] = {"role": "assistant", "content": None, "tool_calls": calls}
            choice["finish_reason"] = "tool_calls"
        if fault is not None and kind == "midstream_error":
            message = fault.message or MIDSTREAM_ERROR
            if not self.flavour.error_in_choice:
                raise reject(fault.status or 500, message, fault.error_type or "server_error")
            # OpenRouter: status 200, the failure sits inside the choice.
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": ""},
                "finish_reason": "error",
                "error": {"code": fault.status or 502, "message": message},
            }
        body: dict[str, Any] = {
            **head,
            "object": "chat.completion",
            "choices": [] if kind == "empty_choices" else [choice],
            "usage": usage,
        }
        if self.flavour.trailing_cost:
            body["cost"] = f"{usage['total_tokens'] * PRICE:.6f}"
        return json_reply(200, body, JSON, headers)

    def _chunk(self, head: Mapping[str, Any], choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return sse_event({**head, "object": "chat.completion.chunk", "choices": choices, **extra})

    def _stream(
        self,
        head: dict[str, Any],
        gen: replies.Generation,
        usage: dict[str, Any],
        hidden: bool,
        include_usage: bool,
        kind: str | None,
        calls: list[dict[str, Any]],
        top: int | None,
    ) -> tuple[bytes, ...]:
        frames = list(self.flavour.stream_preamble)
        if kind == "empty_choices":
            return (*frames, self._chunk(head, []), SSE_DONE)

        def delta(d: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"index": 0, "delta": d, "finish_reason": finish}

        frames.append(self._chunk(head, [delta({"role": "assistant", "content": ""})]))
        if not hidden:
            field = self.flavour.reasoning_field
            frames += [self._chunk(head, [delta({field: t})]) for t in gen.thinking]
        frames += [
            self._chunk(head, [{**delta({"content": t}), **self._logprobs([t], top)}])
            for t in gen.content
        ]
        frames += [
            self._chunk(head, [delta({"tool_calls": [d]})]) for d in _tool_call_deltas(calls)
        ]
        last = delta({}, "tool_calls" if calls else gen.finish)
        if self.flavour.usage_in_choice:
            # Moonshot-style: usage rides inside the finishing choice.
            last["usage"] = usage
        frames.append(self._chunk(head, [last]))
        if self.flavour.usage_always or include_usage:
            frames.append(self._chunk(head, [], usage=usage))
        frames.append(SSE_DONE)
        if self.flavour.trailing_cost:
            # Zen writes its cost event after the upstream's [DONE].
            cost = f"{usage['total_tokens'] * PRICE:.6f}"
            frames.append(self._chunk(head, [], cost=cost))
        return tuple(frames)

    def _error_event(self, head: Mapping[str, Any], fault: Fault) -> bytes:
        message = fault.message or MIDSTREAM_ERROR
        if self.flavour.error_in_choice:
            return self._chunk(
                head,
                [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
                error={"code": fault.error_type or "server_error", "message": message},
            )
        return sse_event(
            self.flavour.error_body(
                fault.status or 500, message, fault.error_type or "server_error", fault.metadata
            )
        )
