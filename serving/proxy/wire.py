"""The OpenAI wire format as the proxy reads and writes it: the request, the prompt view, the error shape.

Only what tierwise reads is declared; every other field (tools, tool_choice, temperature, response_format, ...)
is kept as sent and passed to the upstream untouched.
"""

from __future__ import annotations

import json
import math
import urllib.parse
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator, model_validator
from pydantic_core import PydanticCustomError
from starlette.responses import JSONResponse

from router.text import MAX_TOKENS
from serving.schemas import RouteOptions

MODEL = "tierwise"
TIER_PREFIX = "tierwise/"
KNOB_HEADERS: dict[str, str] = {
    "x-tierwise-session-id": "session_id",
    "x-tierwise-quality-target": "quality_target",
    "x-tierwise-cost-weight": "cost_weight_per_usd",
    "x-tierwise-min-tier": "min_tier",
    "x-tierwise-max-cost-usd": "max_cost_usd",
    "x-tierwise-task": "task",
}
"""Request headers carrying /route's options, for clients that can set headers but not body fields."""


MAX_CHOICES = 128  # OpenAI's own limit on `n`


def non_finite_number(value: Any, path: tuple[str | int, ...] = ()) -> tuple[tuple[str | int, ...], float] | None:
    """The path and value of the first NaN or infinity in a parsed JSON body, None if it has none (Python's JSON
    reader takes them, but no JSON number is one: passed on, they make a body the upstream cannot read)."""
    if isinstance(value, float) and not math.isfinite(value):
        return path, value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = non_finite_number(item, (*path, key))
        if found is not None:
            return found
    return None


class TextPart(BaseModel):
    """One part of a multimodal message; only `text` parts reach the router."""

    model_config = ConfigDict(extra="allow")
    type: StrictStr
    text: StrictStr | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: StrictStr | list[TextPart] | None = None


class ChatCompletionRequest(BaseModel):
    """A chat completion request; `model` is `tierwise` or `tierwise/<tier>`, `tierwise` holds /route's options."""

    model_config = ConfigDict(extra="allow")
    model: StrictStr = Field(  # another name is a 404 model_not_found naming the ones there are, as OpenAI's
        description="`tierwise` (routed), or `tierwise/<tier>` (routed, at least that tier)"
    )
    messages: list[ChatMessage] = Field(min_length=1)
    stream: StrictBool = False
    stream_options: dict[str, Any] | None = Field(
        None, description="as OpenAI's (`include_usage`); tierwise always asks the upstream for usage"
    )
    # Read by the door: what an answer may cost depends on them (serving.proxy.answer_bound).
    n: StrictInt | None = Field(None, ge=1, le=MAX_CHOICES, description="choices to generate, as OpenAI's")
    max_tokens: StrictInt | None = Field(
        None, ge=1, le=MAX_TOKENS, description="as OpenAI's; lowered in a capped session"
    )
    max_completion_tokens: StrictInt | None = Field(
        None, ge=1, le=MAX_TOKENS, description="as OpenAI's; lowered in a capped session"
    )
    tierwise: RouteOptions | None = Field(
        None, description="routing options (OpenAI SDK: `extra_body={'tierwise': {...}}`); stripped before the upstream"
    )

    @model_validator(mode="before")
    @classmethod
    def _json_numbers_only(cls, data: Any) -> Any:
        """NaN and infinities anywhere in the body (`temperature`, a tool's schema) are refused, named by their path
        in the error's ctx `param` (a model-wide check has no field location of its own)."""
        found = non_finite_number(data)
        if found is not None:
            param = ".".join(str(p) for p in found[0])  # "" when the whole body is NaN
            raise PydanticCustomError(
                "non_finite_number",
                "{where}: {value} is not a JSON number (NaN and Infinity are not JSON)",
                {"param": param, "where": param or "body", "value": str(found[1])},
            )
        return data

    @field_validator("stream", mode="before")
    @classmethod
    def _null_stream_is_false(cls, value: Any) -> Any:
        """OpenAI's spec lets `stream` be null (not streamed), as `n` or `stream_options`."""
        return False if value is None else value


class ChatCompletionOut(BaseModel):
    """The upstream's chat completion as it answered, plus the `tierwise` field."""

    model_config = ConfigDict(extra="allow")
    id: str
    object: str
    choices: list[dict[str, Any]]
    tierwise: dict[str, Any]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "tierwise"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    code: str | None = None
    param: str | None = None


class OpenAIError(BaseModel):
    """OpenAI's error shape; a 402 also carries the session (spent, reserved, cap, status) in `error.session`."""

    error: OpenAIErrorBody


def text_of(message: ChatMessage) -> str:
    """The text of a message: a string content, or its text parts joined (images and audio are left out)."""
    if isinstance(message.content, str):
        return message.content
    if not message.content:
        return ""
    return "\n".join(p.text for p in message.content if p.type == "text" and p.text)


def parts_named(message: ChatMessage) -> str:
    """A message with no text but other parts (an image alone) as their types, e.g. `[image_url]`; else ""."""
    if isinstance(message.content, str) or not message.content:
        return ""
    return " ".join(f"[{p.type}]" for p in message.content if p.type != "text")


def prompt_view(messages: list[ChatMessage]) -> str:
    """What the router scores: the system (and developer) messages, then the last user turn, blank-line separated.

    The router was trained on single prompts; the last user turn is the request being answered now, and the system
    message says what kind of work it is. Earlier turns are not scored (they would drown the question). A last user
    turn with no text (an image alone) is scored as its parts' types (`parts_named`), which the novelty check
    judges like any prompt.
    """
    system = [text_of(m) for m in messages if m.role in ("system", "developer")]
    users = [m for m in messages if m.role == "user"]
    last_user = text_of(users[-1]) if users else ""
    if users and not last_user.strip():
        last_user = parts_named(users[-1])
    return "\n\n".join(t for t in (*system, last_user) if t.strip())


def upstream_body(req: ChatCompletionRequest) -> dict[str, Any]:
    """The request as the upstream gets it: every field the caller sent but `tierwise`, `model` set per call."""
    return req.model_dump(exclude={"tierwise"}, exclude_unset=True)


# What a header value may hold as it is: printable ASCII but "%" (RFC 9110's field-vchar and space, without obs-text).
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def header_text(value: str) -> str:
    """`value` fit for a response header: printable ASCII as it is, anything else (a tier or model named in another
    script, a control character) percent-encoded as UTF-8. Starlette encodes header values as Latin-1, so a tier
    named "günstig-千" failed every answer with a 500 after it was charged."""
    return urllib.parse.quote(value, safe=_HEADER_SAFE)


def error_body(
    message: str, type_: str, code: str | None = None, param: str | None = None, **extra: Any
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "code": code, "param": param, **extra}}


class DoorJSONResponse(JSONResponse):
    """The door's JSON answers and errors, escaped to ASCII as its stream's events are (`sse`): an upstream's answer
    or a caller's text holding a lone surrogate (half an emoji) is no UTF-8, and Starlette's JSONResponse, which
    writes UTF-8, failed on it with a 500 after the answer was charged."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def sse(payload: dict[str, Any] | str) -> bytes:
    """One server-sent event carrying `payload` (a dict is sent as JSON)."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()
