"""Each emulated upstream as data: paths, error shapes, quirks (docs/protocols.md §1-3).

The dialect modules read these fields instead of branching on a flavour's
name, so a new flavour is one more table entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal

from lakehouse.stubs.reply import JSON, OLLAMA_JSON, Failure, Reply, json_reply, phrase

ErrorBody = Callable[[int, str, "str | None", "Mapping[str, Any] | None"], dict[str, Any]]


def ollama_error(
    status: int, message: str, error_type: str | None, metadata: Mapping[str, Any] | None
) -> dict[str, Any]:
    return {"error": message}


def openrouter_error(
    status: int, message: str, error_type: str | None, metadata: Mapping[str, Any] | None
) -> dict[str, Any]:
    # `code` is the integer HTTP status and there is no `type` (§3.6).
    return {"error": {"code": status, "message": message, "metadata": dict(metadata or {})}}


_ZEN_CLASSES = {401: "AuthError", 403: "RegionError", 429: "RateLimitError"}


def zen_error(
    status: int, message: str, error_type: str | None, metadata: Mapping[str, Any] | None
) -> dict[str, Any]:
    # Zen's own errors use an Anthropic-style envelope (§3.7).
    kind = error_type or _ZEN_CLASSES.get(status, "error")
    return {"type": "error", "error": {"type": kind, "message": message}}


_KIMI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_authentication_error",
    402: "exceeded_current_quota_error",
    403: "permission_denied_error",
    404: "resource_not_found_error",
    429: "rate_limit_reached_error",
    503: "engine_overloaded_error",
}


def kimi_error(
    status: int, message: str, error_type: str | None, metadata: Mapping[str, Any] | None
) -> dict[str, Any]:
    kind = error_type or _KIMI_TYPES.get(status, "server_error")
    return {"error": {"message": message, "type": kind}}


_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_error(
    status: int, message: str, error_type: str | None, metadata: Mapping[str, Any] | None
) -> dict[str, Any]:
    # Anthropic's envelope (docs/protocols/anthropic-messages.md, "Errors").
    kind = error_type or _ANTHROPIC_TYPES.get(status, "api_error")
    return {
        "type": "error",
        "error": {"type": kind, "message": message},
        "request_id": "req_stub0123456789",
    }


def _never(body: Mapping[str, Any]) -> bool:
    return False


def _thinking_disabled(body: Mapping[str, Any]) -> bool:
    thinking = body.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") == "disabled"


def _effort_none(body: Mapping[str, Any]) -> bool:
    return body.get("reasoning_effort") == "none"


def _openrouter_off(body: Mapping[str, Any]) -> bool:
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and (
        reasoning.get("enabled") is False or reasoning.get("effort") == "none"
    ):
        return True
    return _effort_none(body)


def _zen_off(body: Mapping[str, Any]) -> bool:
    # Zen passes the body through, so whichever switch the routed upstream reads.
    return _thinking_disabled(body) or _effort_none(body)


def _openrouter_hidden(body: Mapping[str, Any]) -> bool:
    reasoning = body.get("reasoning")
    return isinstance(reasoning, dict) and reasoning.get("exclude") is True


@dataclass(frozen=True)
class Flavour:
    name: str
    dialect: Literal["ollama", "openai"]
    # Path prefix of the API as the provider's base URL names it.
    base_path: str
    models: tuple[str, ...]
    error_body: ErrorBody
    unauthorized: Failure
    not_found: Callable[[str], Failure]
    quota: Failure
    # Paths (under base_path) that answer without a key.
    public_paths: frozenset[str]
    # Hosted upstreams: a request without any Bearer key is refused.
    needs_key: bool = True
    version: str = "0.13.5"
    reasoning_field: str = "reasoning"
    reasoning_off: Callable[[Mapping[str, Any]], bool] = _never
    reasoning_hidden: Callable[[Mapping[str, Any]], bool] = _never
    # Fields that cap generated tokens, first found wins.
    cap_fields: tuple[str, ...] = ("max_tokens",)
    # Ollama Cloud: `:cloud`/`-cloud` names exist only on a local server.
    rejects_cloud_suffix: bool = False
    # Families whose reasoning cannot be switched off (GPT-OSS ignores booleans).
    forced_thinking: tuple[str, ...] = ()
    # OpenRouter: omitting `model` uses the account default.
    default_model_when_missing: bool = False
    stream_preamble: tuple[bytes, ...] = ()
    usage_always: bool = False
    usage_in_choice: bool = False
    trailing_cost: bool = False
    # OpenRouter reports a failure after the first byte as a choice with
    # finish_reason "error"; the others send a bare error event.
    error_in_choice: bool = False
    generation_header: str | None = None
    # Kimi: what a client that is not an allow-listed coding agent gets.
    client_gate: Failure | None = None
    id_prefix: str = "chatcmpl-"
    owned_by: str = "stub"
    # Kimi: sampling parameters that cannot be changed on K2.5+ models.
    fixed_sampling: Mapping[str, float] = field(default_factory=dict)
    extra_response: Mapping[str, Any] = field(default_factory=dict)
    # Other dialects served under the same base path (Zen: Messages and
    # Responses beside Chat Completions), and the error shape of Messages.
    extra_dialects: tuple[Literal["messages", "responses"], ...] = ()
    messages_error: ErrorBody = anthropic_error
    # OpenCode Go: a request without this header is refused (400).
    required_header: Failure | None = None
    required_header_name: str = ""

    @property
    def error_content_type(self) -> str:
        return OLLAMA_JSON if self.dialect == "ollama" else JSON

    def error(self, failure: Failure) -> Reply:
        body = self.error_body(
            failure.status, failure.message, failure.error_type, failure.metadata
        )
        return json_reply(failure.status, body, self.error_content_type, failure.headers)

    def fail(self, status: int, message: str | None = None) -> Reply:
        return self.error(Failure(status, message or phrase(status)))


_OLLAMA_PUBLIC = frozenset({"/", "/api/version", "/api/tags", "/api/show"})

OLLAMA = Flavour(
    name="ollama",
    dialect="ollama",
    base_path="",
    models=("qwen3.5:latest", "qwen3:latest", "llama3.2:latest"),
    error_body=ollama_error,
    unauthorized=Failure(401, "unauthorized"),
    not_found=lambda m: Failure(404, f"model '{m}' not found"),
    # A local server relays the cloud's quota error for `:cloud` models.
    quota=Failure(
        429,
        "you (alice) have reached your session usage limit, "
        "upgrade for higher limits: https://ollama.com/upgrade",
    ),
    public_paths=_OLLAMA_PUBLIC,
    needs_key=False,
    reasoning_field="thinking",
    forced_thinking=("gpt-oss",),
)

OLLAMA_CLOUD = Flavour(
    name="ollama_cloud",
    dialect="ollama",
    base_path="",
    models=(
        "gpt-oss:120b",
        "gpt-oss:20b",
        "glm-5.2",
        "kimi-k2.6",
        "deepseek-v4-flash",
        "gemma3:27b",
    ),
    error_body=ollama_error,
    unauthorized=Failure(401, "unauthorized"),
    not_found=lambda m: Failure(404, f'model "{m}" not found'),
    quota=OLLAMA.quota,
    public_paths=_OLLAMA_PUBLIC,
    reasoning_field="thinking",
    rejects_cloud_suffix=True,
    forced_thinking=("gpt-oss",),
)

OPENROUTER = Flavour(
    name="openrouter",
    dialect="openai",
    base_path="/api/v1",
    models=("moonshotai/kimi-k2.6", "openai/gpt-4o-mini", "meta-llama/llama-3.3-70b-instruct:free"),
    error_body=openrouter_error,
    unauthorized=Failure(401, "No auth credentials found"),
    not_found=lambda m: Failure(400, f"{m} is not a valid model ID"),
    quota=Failure(
        402,
        "Insufficient credits. Add more using https://openrouter.ai/settings/credits",
        metadata={"limit_source": "openrouter_credits"},
    ),
    public_paths=frozenset({"/models"}),
    reasoning_field="reasoning",
    reasoning_off=_openrouter_off,
    reasoning_hidden=_openrouter_hidden,
    default_model_when_missing=True,
    stream_preamble=(b": OPENROUTER PROCESSING\n\n", b": OPENROUTER PROCESSING\n\n"),
    usage_always=True,
    error_in_choice=True,
    generation_header="X-Generation-Id",
    id_prefix="gen-",
    owned_by="openrouter",
    extra_response={"provider": "Stub"},
)

OPENCODE = Flavour(
    name="opencode",
    dialect="openai",
    base_path="/zen/v1",
    models=(
        "glm-5.2",
        "kimi-k2.6",
        "deepseek-v4-flash",
        "big-pickle",
        "claude-opus-4-7",
        "claude-sonnet-4-6",
        "gpt-5.4",
        "gpt-5.4-mini",
    ),
    error_body=zen_error,
    unauthorized=Failure(401, "Invalid API key.", "AuthError"),
    not_found=lambda m: Failure(401, f"Model {m} not supported", "ModelError"),
    quota=Failure(
        401,
        "Insufficient balance. Add credits at https://opencode.ai/zen",
        "CreditsError",
    ),
    public_paths=frozenset({"/models"}),
    reasoning_field="reasoning_content",
    reasoning_off=_zen_off,
    # Zen forces include_usage upstream and appends its own cost (§3.7).
    usage_always=True,
    trailing_cost=True,
    owned_by="opencode",
    # Claude on /messages, GPT-5 on /responses (docs/protocols/opencode-zen.md);
    # Zen's own errors keep its envelope there too.
    extra_dialects=("messages", "responses"),
    messages_error=zen_error,
)

# OpenCode Go: Zen's gateway under /zen/go/v1, open models on Chat Completions
# and Messages, and a session header it insists on.
OPENCODE_GO = replace(
    OPENCODE,
    name="opencode_go",
    base_path="/zen/go/v1",
    models=("glm-5", "kimi-k2.5", "minimax-m2.5"),
    extra_dialects=("messages",),
    required_header=Failure(400, "Missing x-opencode-session header.", "MissingSessionID"),
    required_header_name="x-opencode-session",
)

KIMI_FORBIDDEN = Failure(
    403,
    "Kimi For Coding is currently only available for Coding Agents such as Kimi CLI, "
    "Claude Code, Roo Code, Kilo Code, etc.",
    "access_terminated_error",
)

KIMI = Flavour(
    name="kimi",
    dialect="openai",
    base_path="/coding/v1",
    models=("kimi-for-coding", "k2p6", "kimi-k2-thinking"),
    error_body=kimi_error,
    unauthorized=Failure(
        401,
        "The API Key appears to be invalid or may have expired. "
        "Please verify your credentials and try again.",
        "invalid_authentication_error",
    ),
    not_found=lambda m: Failure(
        404, f"Not found the model {m} or Permission denied", "resource_not_found_error"
    ),
    quota=Failure(
        429,
        "You've reached your usage limit for this period. "
        "Please wait for the quota to refresh or upgrade your plan.",
        "rate_limit_reached_error",
    ),
    public_paths=frozenset(),
    reasoning_field="reasoning_content",
    reasoning_off=_thinking_disabled,
    # Kimi's own client folds max_tokens into max_completion_tokens.
    cap_fields=("max_completion_tokens", "max_tokens"),
    usage_in_choice=True,
    client_gate=KIMI_FORBIDDEN,
    owned_by="moonshot",
    # The Anthropic-compatible endpoint Claude Code uses, same base path.
    extra_dialects=("messages",),
    fixed_sampling={
        "temperature": 1.0,
        "top_p": 0.95,
        "n": 1,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
    },
)

FLAVOURS: Mapping[str, Flavour] = MappingProxyType(
    {f.name: f for f in (OLLAMA, OLLAMA_CLOUD, OPENROUTER, OPENCODE, OPENCODE_GO, KIMI)}
)


def find_flavour(name: str) -> Flavour:
    try:
        return FLAVOURS[name]
    except KeyError:
        raise ValueError(f"unknown stub flavour {name!r}; one of {sorted(FLAVOURS)}") from None
