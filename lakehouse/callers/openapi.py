"""``GET /openapi.json``: the OpenAPI 3.1 description of every route.

Schemas are generated from the wire Structs themselves
(``msgspec.json.schema_components``), so the document cannot drift from
what the decoders accept and the encoders send; only the paths, which say
which Struct goes where, are written here.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

import msgspec

from lakehouse.callers.openai_errors import OpenAIErrorBody
from lakehouse.callers.openai_replies import (
    ChatCompletion,
    ChatCompletionChunk,
    Model,
    ModelList,
)
from lakehouse.callers.openai_requests import CompletionRequest
from lakehouse.wire import (
    ChatRequest,
    ChatResponse,
    ErrorBody,
    ProvidersListing,
    Status,
    StreamDone,
    StreamLine,
)

REF = "#/components/schemas/{name}"
STRUCTS: tuple[type[msgspec.Struct], ...] = (
    ChatRequest,
    ChatResponse,
    StreamLine,
    StreamDone,
    ErrorBody,
    ProvidersListing,
    Status,
    CompletionRequest,
    ChatCompletion,
    ChatCompletionChunk,
    Model,
    ModelList,
    OpenAIErrorBody,
)
_NATIVE_ERRORS = {
    "400": "Malformed JSON, wrong types, missing or unknown fields (`path` names the field).",
    "401": "Missing or wrong bearer token (when auth is on).",
    "404": "No provider resolves the model (`provider_not_found`).",
    "413": "Body over `max_request_bytes`.",
    "502": "The upstream failed or answered unusably (`upstream_*` codes).",
    "503": "The provider is unavailable or full.",
    "504": "Upstream timeout, or the request's deadline passed.",
}
_NATIVE_TOOLS = (
    "Tools and images, in Ollama's shape. Offer `tools` (`{type: function, function: "
    "{name, description, parameters}}`, parameters a JSON Schema object) and optionally "
    "`tool_choice` (`auto`, `none`, `required` or `{type: function, function: {name}}`) "
    "and `parallel_tool_calls`. When the model calls tools the answer has `tool_calls` "
    "(`{id, type: function, function: {name, arguments}}`, arguments a JSON object; a "
    "string only when the model wrote no valid object) and `done_reason: tool_calls`. "
    "Send the calls back on the assistant message and each result as a `tool` message "
    "with `tool_call_id` (or Ollama's `tool_name`). Images: per-message `images` (bare "
    "base64, data URLs, or http(s) URLs) or OpenAI-style `content` parts "
    "(`text`, `image_url`). Ollama providers take inline images only: an http(s) URL is "
    "refused with 400 (chatd does not fetch URLs). Streamed, each tool call comes whole "
    "on a StreamLine once complete, and again in the StreamDone line. A tool message "
    "that answers no earlier call, or a bad tool definition, is a 400 whose `path` "
    "names the field."
)
_OPENAI_ERRORS = {
    **_NATIVE_ERRORS,
    "400": "Malformed request, or a field chatd cannot honour (`param` names it).",
    "404": "No provider resolves the model, or the upstream does not know it.",
    "429": "The upstream throttles, or its quota is spent (`x-should-retry: false`).",
}


def _json(ref: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ref}}}


def _errors(ref: dict[str, Any], statuses: dict[str, str]) -> dict[str, Any]:
    return {status: _json(ref, text) for status, text in statuses.items()}


def _alias(item: dict[str, Any], suffix: str) -> dict[str, Any]:
    """A path item served at a second path: operation ids must stay unique."""
    return {
        method: {**op, "operationId": op["operationId"] + suffix} for method, op in item.items()
    }


def _chatd_version() -> str:
    try:
        return version("chatd")
    except PackageNotFoundError:
        return "0"


def document() -> dict[str, Any]:
    refs, schemas = msgspec.json.schema_components(STRUCTS, ref_template=REF)
    r = dict(zip(STRUCTS, refs, strict=True))
    native_error, openai_error = r[ErrorBody], r[OpenAIErrorBody]
    line = {"oneOf": [r[StreamLine], r[StreamDone], native_error]}
    chat = {
        "post": {
            "operationId": "chat",
            "summary": "Chat with a model or tier; streamed as NDJSON with `stream: true`.",
            "description": _NATIVE_TOOLS,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": r[ChatRequest]}},
            },
            "responses": {
                "200": {
                    "description": "The answer; with `stream: true`, one JSON object per line: "
                    "StreamLine lines, then a StreamDone line, or an ErrorBody line when the "
                    "stream fails after it started.",
                    "content": {
                        "application/json": {"schema": r[ChatResponse]},
                        "application/x-ndjson": {"schema": line},
                    },
                },
                **_errors(native_error, _NATIVE_ERRORS),
            },
        }
    }
    providers = {
        "get": {
            "operationId": "providers",
            "summary": "Every registered provider and whether it is available.",
            "responses": {"200": _json(r[ProvidersListing], "The listing.")},
        }
    }
    completions = {
        "post": {
            "operationId": "createChatCompletion",
            "summary": "OpenAI-compatible chat completion; SSE chunks with `stream: true`.",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": r[CompletionRequest]}},
            },
            "responses": {
                "200": {
                    "description": "A completion; with `stream: true`, `data: <chunk>` events "
                    "ending with `data: [DONE]`, `: keep-alive` comments through silences, "
                    "or a last `data: <error>` event when the stream fails after it started.",
                    "content": {
                        "application/json": {"schema": r[ChatCompletion]},
                        "text/event-stream": {"schema": r[ChatCompletionChunk]},
                    },
                },
                **_errors(openai_error, _OPENAI_ERRORS),
            },
        }
    }
    models = {
        "get": {
            "operationId": "listModels",
            "summary": "The tiers of `[models]` and the model ids they resolve to.",
            "responses": {"200": _json(r[ModelList], "The models.")},
        }
    }
    model = {
        "get": {
            "operationId": "retrieveModel",
            "summary": "One entry of `/v1/models`.",
            "parameters": [
                {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {
                "200": _json(r[Model], "The model."),
                "404": _json(openai_error, "Not listed."),
            },
        }
    }
    paths: dict[str, Any] = {
        "/chat": chat,
        "/v1/chat": _alias(chat, "V1"),
        "/chat/providers": providers,
        "/v1/chat/providers": _alias(providers, "V1"),
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "Liveness: 200 while the process serves.",
                "responses": {"200": _json(r[Status], "Serving.")},
            }
        },
        "/ready": {
            "get": {
                "operationId": "ready",
                "summary": "Readiness: config loaded and upstream sessions open.",
                "responses": {
                    "200": _json(r[Status], "Ready."),
                    "503": _json(r[Status], "Starting."),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics.",
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/admin/reload": {
            "post": {
                "operationId": "reload",
                "summary": "Re-read the config; the running one stays if the new one is refused.",
                "responses": {
                    "200": _json(r[ProvidersListing], "Reloaded: the new providers."),
                    "422": _json(native_error, "Refused (`reload_refused`)."),
                },
            }
        },
        "/v1/chat/completions": completions,
        "/chat/completions": _alias(completions, "NoV1"),
        "/v1/models": models,
        "/models": _alias(models, "NoV1"),
        "/v1/models/{model}": model,
        "/models/{model}": _alias(model, "NoV1"),
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "responses": {
                    "200": _json({"type": "object"}, "The OpenAPI 3.1 document."),
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "chatd",
            "version": _chatd_version(),
            "description": "The lakehouse LLM chat dispatcher: a native API and an "
            "OpenAI-compatible one, over any configured provider.",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }
