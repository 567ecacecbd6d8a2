"""The OpenAI Responses dialect (docs/protocols/openai-responses.md):
``POST {base}/responses`` as OpenAI and OpenCode Zen answer it, whole or
as semantic SSE events ending in ``response.completed``/``.incomplete``/
``.failed`` (no ``[DONE]``)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping
from typing import Any

from lakehouse.stubs import replies
from lakehouse.stubs.dialect import DialectAPI
from lakehouse.stubs.faults import Fault
from lakehouse.stubs.openai import MIDSTREAM_ERROR, decode_body
from lakehouse.stubs.received import Received, Route
from lakehouse.stubs.reply import SSE, Failure, Rejected, Reply, encode, json_reply, reject
from lakehouse.stubs.tool_use import Call, choose, results_answer

INVALID = "invalid_request_error"
# OpenAI refuses a smaller max_output_tokens.
MIN_OUTPUT_TOKENS = 16
# GPT-5 models are reasoning models: they refuse sampling parameters.
NO_SAMPLING = ("gpt-5",)


def _results(data: Mapping[str, Any]) -> list[str]:
    """The outputs of the function calls that end the input, in order."""
    items = data.get("input")
    out: list[str] = []
    listed: list[Any] = items if isinstance(items, list) else []
    for item in reversed(listed):
        if not isinstance(item, dict) or item.get("type") != "function_call_output":
            break
        out.append(str(item.get("output", "")))
    return out[::-1]


def _ends_with_user(data: Mapping[str, Any]) -> bool:
    items = data.get("input")
    if isinstance(items, str):
        return True
    last = items[-1] if isinstance(items, list) and items else {}
    return (
        isinstance(last, dict)
        and last.get("type", "message") == "message"
        and last.get("role") == "user"
    )


def _input_texts(data: Mapping[str, Any]) -> tuple[list[str], str]:
    """Every input text, and the last user one."""
    items = data.get("input")
    if isinstance(items, str):
        return [items], items
    if not isinstance(items, list) or not items:
        raise reject(400, "Missing required parameter: 'input'.", INVALID)
    texts, user = [], ""
    calls: set[str] = set()
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise reject(400, "Invalid 'input': expected an array of items.", INVALID)
        kind = item.get("type", "message")
        if kind == "message":
            if item.get("role") not in ("user", "assistant", "system", "developer"):
                raise reject(400, f"Invalid value for 'input[{i}].role'.", INVALID)
            _check_images(i, item.get("content"))
            text = replies.part_text(_parts(item.get("content")))
            if item.get("role") == "user":
                user = text
        elif kind == "function_call":
            if (
                not item.get("call_id")
                or not item.get("name")
                or not isinstance(item.get("arguments"), str)
            ):
                raise reject(400, f"Missing required parameter: 'input[{i}].call_id'.", INVALID)
            calls.add(item["call_id"])
            text = item["arguments"]
        elif kind == "function_call_output":
            if item.get("call_id") not in calls:
                raise reject(
                    400,
                    "No tool call found for function call output with call_id "
                    f"{item.get('call_id')}.",
                    INVALID,
                )
            text = str(item.get("output", ""))
        else:
            raise reject(400, f"Invalid value for 'input[{i}].type'.", INVALID)
        texts.append(text)
    return texts, user


def _check_images(i: int, content: Any) -> None:
    for part in content if isinstance(content, list) else ():
        if isinstance(part, dict) and part.get("type") == "input_image":
            url = str(part.get("image_url", ""))
            if not url.startswith(("http://", "https://", "data:image/")):
                raise reject(
                    400,
                    f"Invalid 'input[{i}].content[].image_url': expected a URL "
                    "or a base64-encoded data URL.",
                    INVALID,
                )


def _tools(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    tools = data.get("tools") or []
    out = []
    for i, tool in enumerate(tools if isinstance(tools, list) else ()):
        if not isinstance(tool, dict) or tool.get("type") != "function" or not tool.get("name"):
            raise reject(400, f"Missing required parameter: 'tools[{i}].name'.", INVALID)
        schema = tool.get("parameters") or {}
        # Responses enforces strict schemas unless told otherwise.
        if tool.get("strict", True) and schema.get("additionalProperties") is not False:
            raise reject(
                400,
                f"Invalid schema for function '{tool['name']}': "
                "'additionalProperties' is required to be supplied and to be false.",
                INVALID,
            )
        out.append({"name": tool["name"], "schema": schema})
    return out


def _calls(data: Mapping[str, Any], user: str) -> list[Call]:
    tools = _tools(data)
    choice = data.get("tool_choice", "auto")
    if choice == "none" or not _ends_with_user(data):
        return []
    named = choice.get("name") if isinstance(choice, dict) else None
    if named is not None and named not in {t["name"] for t in tools}:
        raise reject(400, f"Tool choice '{named}' not found in 'tools' parameter.", INVALID)
    parallel = data.get("parallel_tool_calls") is not False
    return choose(tools, named, user, parallel=parallel)


def _parts(content: Any) -> Any:
    # input_text/output_text parts read as plain text parts.
    if isinstance(content, list):
        return [
            {"type": "text", "text": p.get("text", "")}
            for p in content
            if isinstance(p, dict) and p.get("type") in ("input_text", "output_text")
        ]
    return content


class ResponsesAPI(DialectAPI):
    def routes(self) -> list[Route]:
        return [Route("POST", f"{self.flavour.base_path}/responses", self.answer, chat=True)]

    def _check(self, data: Mapping[str, Any]) -> tuple[str, int | None]:
        model = data.get("model")
        if not isinstance(model, str) or not model:
            raise reject(400, "Missing required parameter: 'model'.", INVALID)
        if self.catalog.find(model) is None:
            raise Rejected(self.flavour.not_found(model))
        cap = data.get("max_output_tokens")
        if cap is not None and (not isinstance(cap, int) or cap < MIN_OUTPUT_TOKENS):
            raise reject(
                400,
                "Invalid 'max_output_tokens': integer below minimum value. "
                f"Expected a value >= {MIN_OUTPUT_TOKENS}.",
                INVALID,
            )
        if model.startswith(NO_SAMPLING):
            for name in ("temperature", "top_p"):
                if data.get(name) is not None:
                    raise reject(
                        400,
                        f"Unsupported parameter: '{name}' is not supported with this model.",
                        INVALID,
                    )
        return model, cap

    def _text(self, data: Mapping[str, Any], user: str) -> str:
        results = _results(data)
        text = results_answer(results) if results else replies.reply_text(user)
        spec = data.get("text")
        fmt = spec.get("format") if isinstance(spec, dict) else None
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind is None or kind == "text":
            return text
        if kind == "json_object":
            return replies.json_content(text)
        if kind == "json_schema":
            assert isinstance(fmt, dict)
            if not fmt.get("name"):
                raise reject(400, "Missing required parameter: 'text.format.name'.", INVALID)
            return replies.json_content(text, fmt.get("schema") or {})
        raise reject(400, "Invalid value for 'text.format.type'.", INVALID)

    def _answer(self, call: Received, fault: Fault | None) -> Reply:
        data = decode_body(call.body)
        model, cap = self._check(data)
        stream = data.get("stream", False)
        texts, user = _input_texts(data)
        instructions = data.get("instructions")
        if isinstance(instructions, str):
            texts.append(instructions)
        reasoning = data.get("reasoning")
        thinks = self.catalog.thinks(model) or isinstance(reasoning, dict)
        shown = isinstance(reasoning, dict) and reasoning.get("summary") is not None
        gen = replies.generate(
            self._text(data, user),
            thinking=replies.thinking_text(user) if thinks else None,
            budget=cap,
        )
        ident = f"resp_stub{next(self._ids):06d}"
        final = self._response(ident, model, gen, replies.count_prompt(texts), shown)
        calls = _calls(data, user)
        if calls:
            return self._called(final, ident, calls, stream)
        kind = fault.kind if fault is not None else None
        if kind == "empty_choices":
            final["output"] = []
        if not stream:
            if kind == "midstream_error":
                assert fault is not None
                raise Rejected(
                    Failure(
                        fault.status or 500,
                        fault.message or MIDSTREAM_ERROR,
                        fault.error_type or "server_error",
                    )
                )
            return json_reply(200, final)
        frames = self._stream(final, gen, shown)
        if fault is not None and kind == "midstream_error":
            keep = min(fault.after, len(frames) - 1)
            frames = (*frames[:keep], self._failure(final, fault, keep))
        return Reply(200, SSE, frames, stream=True, headers={"Cache-Control": "no-cache"})

    def _response(
        self, ident: str, model: str, gen: replies.Generation, prompt: int, shown: bool
    ) -> dict[str, Any]:
        output: list[dict[str, Any]] = []
        if gen.thinking:
            summary = [{"type": "summary_text", "text": gen.thinking_text}] if shown else []
            output.append({"id": f"rs_{ident}", "type": "reasoning", "summary": summary})
        if gen.content:
            output.append(
                {
                    "id": f"msg_{ident}",
                    "type": "message",
                    "status": "completed",
                    "role": "assistant",
                    "content": [
                        {"type": "output_text", "text": gen.content_text, "annotations": []}
                    ],
                }
            )
        incomplete = gen.finish == "length"
        return {
            "id": ident,
            "object": "response",
            "created_at": int(time.time()),
            "status": "incomplete" if incomplete else "completed",
            "model": model,
            "output": output,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "usage": {
                "input_tokens": prompt,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": gen.count,
                "output_tokens_details": {"reasoning_tokens": len(gen.thinking)},
                "total_tokens": prompt + gen.count,
            },
        }

    def _called(self, final: dict[str, Any], ident: str, calls: list[Call], stream: bool) -> Reply:
        """The model calls tools instead of answering."""
        items = [
            {
                "id": f"fc_{ident}_{i}",
                "type": "function_call",
                "status": "completed",
                "call_id": f"call_{ident}_{i}",
                "name": call.name,
                "arguments": call.text,
            }
            for i, call in enumerate(calls)
        ]
        usage = {
            **final["usage"],
            "output_tokens": sum(c.count for c in calls),
            "output_tokens_details": {"reasoning_tokens": 0},
        }
        done = {
            **final,
            "status": "completed",
            "output": items,
            "usage": usage,
            "incomplete_details": None,
        }
        if not stream:
            return json_reply(200, done)
        seq = itertools.count()
        pending = {**done, "status": "in_progress", "output": [], "usage": None}
        frames = [self._event("response.created", next(seq), response=pending)]
        for index, (item, call) in enumerate(zip(items, calls, strict=True)):
            frames.append(
                self._event(
                    "response.output_item.added",
                    next(seq),
                    output_index=index,
                    item={**item, "arguments": "", "status": "in_progress"},
                )
            )
            frames += [
                self._event(
                    "response.function_call_arguments.delta",
                    next(seq),
                    item_id=item["id"],
                    output_index=index,
                    delta=piece,
                )
                for piece in call.pieces
            ]
            frames += [
                self._event(
                    "response.function_call_arguments.done",
                    next(seq),
                    item_id=item["id"],
                    output_index=index,
                    arguments=call.text,
                ),
                self._event("response.output_item.done", next(seq), output_index=index, item=item),
            ]
        frames.append(self._event("response.completed", next(seq), response=done))
        return Reply(200, SSE, tuple(frames), stream=True, headers={"Cache-Control": "no-cache"})

    @staticmethod
    def _event(kind: str, seq: int, **fields: Any) -> bytes:
        body = {"type": kind, "sequence_number": seq, **fields}
        return b"event: " + kind.encode() + b"\ndata: " + encode(body) + b"\n\n"

    def _stream(
        self, final: dict[str, Any], gen: replies.Generation, shown: bool
    ) -> tuple[bytes, ...]:
        seq = itertools.count()
        pending = {
            **final,
            "status": "in_progress",
            "output": [],
            "usage": None,
            "incomplete_details": None,
        }
        frames = [
            self._event("response.created", next(seq), response=pending),
            self._event("response.in_progress", next(seq), response=pending),
        ]
        for index, item in enumerate(final["output"]):
            ident = item["id"]
            frames.append(
                self._event(
                    "response.output_item.added",
                    next(seq),
                    output_index=index,
                    item={**item, "content": [], "summary": []},
                )
            )
            if item["type"] == "reasoning" and shown:
                frames += [
                    self._event(
                        "response.reasoning_summary_text.delta",
                        next(seq),
                        item_id=ident,
                        output_index=index,
                        summary_index=0,
                        delta=piece,
                    )
                    for piece in gen.thinking
                ]
            elif item["type"] == "message":
                frames += [
                    self._event(
                        "response.output_text.delta",
                        next(seq),
                        item_id=ident,
                        output_index=index,
                        content_index=0,
                        delta=piece,
                        logprobs=[],
                    )
                    for piece in gen.content
                ]
                frames.append(
                    self._event(
                        "response.output_text.done",
                        next(seq),
                        item_id=ident,
                        output_index=index,
                        content_index=0,
                        text=gen.content_text,
                    )
                )
            frames.append(
                self._event("response.output_item.done", next(seq), output_index=index, item=item)
            )
        terminal = (
            "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        )
        frames.append(self._event(terminal, next(seq), response=final))
        return tuple(frames)

    def _failure(self, final: dict[str, Any], fault: Fault, seq: int) -> bytes:
        message = fault.message or MIDSTREAM_ERROR
        if fault.error_type == "error":
            # The bare ``error`` event some failures arrive as.
            return self._event("error", seq, code="server_error", message=message, param=None)
        failed = {
            **final,
            "status": "failed",
            "usage": None,
            "error": {"code": fault.error_type or "server_error", "message": message},
        }
        return self._event("response.failed", seq, response=failed)
