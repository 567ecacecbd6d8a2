"""Ollama's native API (docs/protocols.md §1, §2): /api/chat, /api/generate and friends.

Over 350 lines: one dialect, including the request checks real Ollama makes
(images as base64, object arguments), reads best in one place.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec

from lakehouse.stubs.catalog import Catalog, family
from lakehouse.stubs.faults import Fault
from lakehouse.stubs.flavours import Flavour
from lakehouse.stubs.received import Received, Route
from lakehouse.stubs.replies import (
    Generation,
    count_prompt,
    generate,
    json_content,
    reply_text,
    thinking_text,
    token_logprobs,
)
from lakehouse.stubs.reply import (
    NDJSON,
    OLLAMA_JSON,
    TEXT,
    Rejected,
    Reply,
    json_reply,
    ndjson_line,
    reject,
    text_reply,
)
from lakehouse.stubs.tools import check_tools, planned_calls, results_answer

THINK_LEVELS = ("low", "medium", "high", "max")
MIDSTREAM_ERROR = "an error was encountered while running the model"
# Durations are nanoseconds; fixed per-token costs keep them predictable.
NS_PER_PROMPT_TOKEN = 2_000_000
NS_PER_EVAL_TOKEN = 20_000_000
LOAD_NS = 250_000_000


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _decode(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise reject(400, "missing request body")
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise reject(400, str(exc)) from None
    if not isinstance(data, dict):
        raise reject(400, f"json: cannot unmarshal {type(data).__name__} into request object")
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_options(options: Any) -> int | None:
    """Validate the few options the stub reads; returns num_predict."""
    if options is None:
        return None
    if not isinstance(options, dict):
        raise reject(400, "json: cannot unmarshal options: expected an object")
    for key in ("num_predict", "num_ctx", "seed", "top_k"):
        if key in options and not _is_int(options[key]):
            raise reject(400, f"option {key!r} must be of type integer")
    for key in ("temperature", "top_p", "min_p"):
        if key in options and not (_is_int(options[key]) or isinstance(options[key], float)):
            raise reject(400, f"option {key!r} must be of type number")
    num_predict = options.get("num_predict")
    return num_predict if _is_int(num_predict) else None


def _check_think(think: Any) -> None:
    if think is None or isinstance(think, bool):
        return
    if isinstance(think, str) and think in THINK_LEVELS:
        return
    raise reject(
        400,
        f"invalid think value: {msgspec.json.encode(think).decode()} "
        '(must be "low", "medium", "high", "max", true, or false)',
    )


def _check_format(fmt: Any) -> None:
    if fmt in (None, "", "json") or isinstance(fmt, dict):
        return
    raise reject(400, 'invalid format: expected "json" or a valid JSON schema')


def _check_images(images: Any) -> None:
    """Ollama decodes each image as base64 (Go's ImageData is []byte): a
    data URL or an http URL fails there."""
    if images is None:
        return
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise reject(400, "json: cannot unmarshal images: expected an array of base64 strings")
    for image in images:
        try:
            base64.b64decode(image, validate=True)
        except (binascii.Error, ValueError):
            bad = next((n for n, c in enumerate(image) if c in ":/,;"), 0)
            raise reject(400, f"illegal base64 data at input byte {bad}") from None


def _check_tool_calls(calls: Any) -> None:
    if calls is None:
        return
    for call in calls if isinstance(calls, list) else [None]:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("arguments", {}), dict):
            # Go's ToolCallFunctionArguments is a map: a JSON string fails.
            raise reject(
                400,
                "json: cannot unmarshal string into Go struct field "
                "ToolCallFunction.messages.tool_calls.function.arguments of type "
                "api.ToolCallFunctionArguments",
            )


def _messages(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    messages = data.get("messages", [])
    if messages is None:
        return []
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise reject(400, "json: cannot unmarshal messages: expected an array of objects")
    for m in messages:
        # Ollama's content is a plain string, unlike OpenAI's array of parts.
        if not isinstance(m.get("content", ""), str):
            raise reject(
                400,
                "json: cannot unmarshal array into Go struct field "
                "Message.messages.content of type string",
            )
        _check_images(m.get("images"))
        _check_tool_calls(m.get("tool_calls"))
    problem = check_tools(data)
    if problem is not None:
        raise reject(400, problem)
    return messages


def _calls(planned: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Ollama's shape: arguments as an object, numbered by ``index``."""
    return [
        # Ollama mints a random id per call (server/routes.go, toolCallId).
        {
            "id": f"call_{secrets.token_hex(4)}",
            "function": {"index": n, "name": name, "arguments": args},
        }
        for n, (name, args) in enumerate(planned)
    ]


class OllamaAPI:
    def __init__(self, flavour: Flavour, catalog: Catalog) -> None:
        self.flavour = flavour
        self.catalog = catalog
        # Models "in memory": the first request pays load_duration, like a cold model.
        self._loaded: dict[str, float] = {}

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/", self.root),
            Route("GET", "/api/version", self.version),
            Route("GET", "/api/tags", self.tags),
            Route("GET", "/api/ps", self.ps),
            Route("POST", "/api/show", self.show),
            Route("POST", "/api/chat", self.chat, chat=True),
            Route("POST", "/api/generate", self.generate, chat=True),
        ]

    # -- health and listings -------------------------------------------------

    def root(self, call: Received, fault: Fault | None) -> Reply:
        return text_reply(200, "Ollama is running", TEXT)

    def version(self, call: Received, fault: Fault | None) -> Reply:
        return json_reply(200, {"version": self.flavour.version}, OLLAMA_JSON)

    def _entry(self, name: str) -> dict[str, Any]:
        fam = family(name)
        return {
            "name": name,
            "model": name,
            "modified_at": "2026-07-01T12:00:00Z",
            "size": 5_200_000_000,
            "digest": "sha256:" + hashlib.sha256(name.encode()).hexdigest(),
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": fam,
                "families": [fam],
                "parameter_size": "8.2B",
                "quantization_level": "Q4_K_M",
            },
        }

    def tags(self, call: Received, fault: Fault | None) -> Reply:
        return json_reply(
            200, {"models": [self._entry(n) for n in self.catalog.names]}, OLLAMA_JSON
        )

    def ps(self, call: Received, fault: Fault | None) -> Reply:
        models = [{**self._entry(n), "size_vram": 5_200_000_000} for n in self._loaded]
        return json_reply(200, {"models": models}, OLLAMA_JSON)

    def show(self, call: Received, fault: Fault | None) -> Reply:
        try:
            data = _decode(call.body)
            name = data.get("model") or data.get("name")
            if not isinstance(name, str) or not name.strip():
                raise reject(400, "model is required")
            known = self._lookup(name)
        except Rejected as exc:
            return self.flavour.error(exc.failure)
        caps = ["completion", "tools"] + (["thinking"] if self.catalog.thinks(known) else [])
        entry = self._entry(known)
        return json_reply(
            200,
            {
                "modelfile": f"FROM {known}\n",
                "parameters": "",
                "template": "{{ .Prompt }}",
                "details": entry["details"],
                "model_info": {"general.architecture": entry["details"]["family"]},
                "capabilities": caps,
                "modified_at": entry["modified_at"],
            },
            OLLAMA_JSON,
        )

    # -- generation ----------------------------------------------------------

    def _lookup(self, name: str) -> str:
        if self.flavour.rejects_cloud_suffix:
            last = name.rsplit("/", 1)[-1].lower()
            if last.endswith((":cloud", "-cloud")):
                raise Rejected(self.flavour.not_found(name))
        known = self.catalog.find(name)
        if known is None:
            raise Rejected(self.flavour.not_found(name))
        return known

    def _thinks(self, known: str, requested: str, think: Any) -> bool:
        capable = self.catalog.thinks(known)
        if family(known).startswith(self.flavour.forced_thinking):
            return capable
        wants = think is None or think is True or isinstance(think, str)
        if think is not None and think is not False and not capable:
            raise reject(400, f'"{requested}" does not support thinking')
        return capable and wants

    def _metrics(self, known: str, prompt: int, gen: Generation) -> dict[str, Any]:
        load = 0 if known in self._loaded else LOAD_NS
        self._loaded[known] = time.time()
        metrics = {
            "load_duration": load,
            "prompt_eval_count": prompt,
            "prompt_eval_duration": prompt * NS_PER_PROMPT_TOKEN,
            "eval_count": gen.count,
            "eval_duration": gen.count * NS_PER_EVAL_TOKEN,
        }
        metrics["total_duration"] = (
            sum(metrics[k] for k in ("load_duration", "prompt_eval_duration", "eval_duration"))
            + 1_000_000
        )
        # Ollama's metric fields are omitempty: zero means absent.
        return {k: v for k, v in metrics.items() if v}

    def chat(self, call: Received, fault: Fault | None) -> Reply:
        return self._respond(call, fault, generate_api=False)

    def generate(self, call: Received, fault: Fault | None) -> Reply:
        return self._respond(call, fault, generate_api=True)

    def _respond(self, call: Received, fault: Fault | None, *, generate_api: bool) -> Reply:
        try:
            return self._answer(call, fault, generate_api)
        except Rejected as exc:
            return self.flavour.error(exc.failure)

    def _answer(self, call: Received, fault: Fault | None, generate_api: bool) -> Reply:
        data = _decode(call.body)
        model = data.get("model")
        if model is not None and not isinstance(model, str):
            raise reject(400, "json: cannot unmarshal model: expected a string")
        if not model or not model.strip():
            raise reject(400, "model is required")
        stream = data.get("stream", True)  # Ollama streams unless told not to.
        if not isinstance(stream, bool):
            raise reject(400, "json: cannot unmarshal stream: expected a boolean")
        think = data.get("think")
        _check_think(think)
        _check_format(data.get("format"))
        budget = _check_options(data.get("options"))
        if generate_api:
            prompt = data.get("prompt", "")
            if not isinstance(prompt, str):
                raise reject(400, "json: cannot unmarshal prompt: expected a string")
            system = data.get("system", "")
            texts = [str(system or ""), prompt]
            user_text = prompt
            empty = prompt == ""
        else:
            messages = _messages(data)
            texts = [str(m.get("content", "")) for m in messages]
            users = [m for m in messages if str(m.get("role", "")).lower() == "user"]
            user_text = str(users[-1].get("content", "")) if users else ""
            empty = not messages
        known = self._lookup(model)
        thinking = self._thinks(known, model, think)
        if empty:
            return self._load_reply(model, known, data, generate_api)
        calls: list[dict[str, Any]] = []
        answer = reply_text(user_text)
        if not generate_api:
            calls = _calls(planned_calls(data, user_text))
            answer = results_answer(messages) or answer
            if calls:
                answer, thinking = "", False
        fmt = data.get("format")
        if fmt:
            answer = json_content(answer, fmt if isinstance(fmt, dict) else None)
        gen = generate(
            answer, thinking=thinking_text(user_text) if thinking else None, budget=budget
        )
        metrics = self._metrics(known, count_prompt(texts), gen)
        # /api/generate returns its (deprecated) context unless raw.
        tail: dict[str, Any] = {}
        if generate_api and not data.get("raw"):
            tail["context"] = list(range(1, count_prompt(texts) + gen.count + 1))
        if fault is not None and fault.kind == "midstream_error" and not stream:
            # Before the first byte Ollama still answers with a proper status.
            raise reject(fault.status or 500, fault.message or MIDSTREAM_ERROR)
        top = data.get("top_logprobs") or 0
        logprobs = bool(data.get("logprobs"))
        if not stream:
            body = self._final(model, gen, generate_api, whole=True)
            if calls:
                body["message"]["tool_calls"] = calls
            if logprobs:
                body["logprobs"] = token_logprobs(gen.content, top)
            return json_reply(200, {**body, **tail, **metrics}, OLLAMA_JSON)
        deltas = self._deltas(model, gen, generate_api)
        if logprobs:
            for chunk in deltas:
                piece = chunk.get("response") or chunk.get("message", {}).get("content")
                if piece:
                    chunk["logprobs"] = token_logprobs([piece], top)
        lines = [ndjson_line(c) for c in deltas]
        if calls:
            # Ollama parses calls out of the output and sends them whole.
            message = {"role": "assistant", "content": "", "tool_calls": calls}
            lines.append(
                ndjson_line(
                    {"model": model, "created_at": _now(), "message": message, "done": False}
                )
            )
        if fault is not None and fault.kind == "midstream_error":
            keep = min(fault.after, len(lines))
            error = {"error": fault.message or MIDSTREAM_ERROR}
            return Reply(200, NDJSON, (*lines[:keep], ndjson_line(error)), stream=True)
        final = {**self._final(model, gen, generate_api, whole=False), **tail, **metrics}
        return Reply(200, NDJSON, (*lines, ndjson_line(final)), stream=True)

    def _final(
        self, model: str, gen: Generation, generate_api: bool, *, whole: bool
    ) -> dict[str, Any]:
        # The last streamed object carries no text; a whole reply carries all of it.
        content = gen.content_text if whole else ""
        body: dict[str, Any] = {"model": model, "created_at": _now()}
        if generate_api:
            body["response"] = content
            if whole and gen.thinking:
                body["thinking"] = gen.thinking_text
        else:
            message = {"role": "assistant", "content": content}
            if whole and gen.thinking:
                message["thinking"] = gen.thinking_text
            body["message"] = message
        body["done"] = True
        body["done_reason"] = gen.finish
        return body

    def _deltas(self, model: str, gen: Generation, generate_api: bool) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        pieces = [("thinking", t) for t in gen.thinking] + [("content", t) for t in gen.content]
        for field, piece in pieces:
            chunk: dict[str, Any] = {"model": model, "created_at": _now()}
            if generate_api:
                chunk["response"] = piece if field == "content" else ""
                if field == "thinking":
                    chunk["thinking"] = piece
            else:
                message = {"role": "assistant", "content": piece if field == "content" else ""}
                if field == "thinking":
                    message["thinking"] = piece
                chunk["message"] = message
            chunk["done"] = False
            out.append(chunk)
        return out

    def _load_reply(
        self, model: str, known: str, data: Mapping[str, Any], generate_api: bool
    ) -> Reply:
        # Empty messages/prompt only load the model; keep_alive 0 unloads it.
        unload = data.get("keep_alive") in (0, "0", "0s")
        if unload:
            self._loaded.pop(known, None)
        else:
            self._loaded[known] = time.time()
        body: dict[str, Any] = {"model": model, "created_at": _now()}
        if generate_api:
            body["response"] = ""
        else:
            body["message"] = {"role": "assistant", "content": ""}
        body["done_reason"] = "unload" if unload else "load"
        body["done"] = True
        return json_reply(200, body, OLLAMA_JSON)
