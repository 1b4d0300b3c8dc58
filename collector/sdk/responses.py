"""Usage, model and output messages read from what a model client returned.

`@agentwatch.llm` reads them from its function's return value when that is a
response of a known client: OpenAI chat completions and responses, Anthropic
messages, Gemini (google-genai) generate_content. The objects are recognised
by their attributes, never by importing the client libraries, so the SDK
stays light and works with whichever version the agent uses.

Token semantics are the OTel GenAI ones the receiver prices by: input tokens
include cached reads (Anthropic reports them apart; they are added back),
output tokens include reasoning (Gemini reports thoughts apart; added back).
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from agentwatch.schemas.attributes import (
    GEN_AI_OUTPUT_MESSAGES,
    GEN_AI_PROVIDER_NAME,
    GEN_AI_RESPONSE_MODEL,
    GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS,
    GEN_AI_USAGE_INPUT_TOKENS,
    GEN_AI_USAGE_OUTPUT_TOKENS,
    GEN_AI_USAGE_REASONING_OUTPUT_TOKENS,
)

from .capture import output_messages_json, set_content

GEN_AI_RESPONSE_ID = "gen_ai.response.id"
GEN_AI_RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
USAGE_KEYS = (
    GEN_AI_USAGE_INPUT_TOKENS,
    GEN_AI_USAGE_OUTPUT_TOKENS,
    GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS,
    GEN_AI_USAGE_REASONING_OUTPUT_TOKENS,
)


class Reading(NamedTuple):
    attributes: dict  # GenAI span attributes: usage, response model and id, finish reasons, provider
    messages: list | None  # GenAI output messages


def _get(value: Any, *names: str) -> Any:
    """value.a.b... (attributes or mapping keys), None where any step is missing."""
    for name in names:
        if value is None:
            return None
        value = value.get(name) if isinstance(value, dict) else getattr(value, name, None)
    return value


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _arguments(text: Any) -> Any:
    """Tool call arguments: the JSON object they spell, else the text as it came."""
    if isinstance(text, str):
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def _plain(value: Any) -> Any:
    """Client objects (pydantic models) as plain data, for JSON."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump()
    to_dict = getattr(value, "to_json_dict", None)
    return to_dict() if callable(to_dict) else value


def reading(
    provider: str,
    *,
    model: Any = None,
    response_id: Any = None,
    input_tokens: Any = None,
    output_tokens: Any = None,
    cached: Any = None,
    reasoning: Any = None,
    finish_reasons: list | None = None,
    messages: list | None = None,
) -> Reading:
    values = {
        GEN_AI_PROVIDER_NAME: provider,
        GEN_AI_RESPONSE_MODEL: model if isinstance(model, str) and model else None,
        GEN_AI_RESPONSE_ID: response_id if isinstance(response_id, str) and response_id else None,
        GEN_AI_USAGE_INPUT_TOKENS: _int(input_tokens),
        GEN_AI_USAGE_OUTPUT_TOKENS: _int(output_tokens),
        GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: _int(cached),
        GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: _int(reasoning),
        GEN_AI_RESPONSE_FINISH_REASONS: [str(r) for r in finish_reasons if r] if finish_reasons else None,
    }
    return Reading({k: v for k, v in values.items() if v is not None}, messages)


# --- OpenAI ------------------------------------------------------------------------------------
def openai_chat_usage(usage: Any) -> dict:
    return {
        "input_tokens": _get(usage, "prompt_tokens"),
        "output_tokens": _get(usage, "completion_tokens"),
        "cached": _get(usage, "prompt_tokens_details", "cached_tokens"),
        "reasoning": _get(usage, "completion_tokens_details", "reasoning_tokens"),
    }


def openai_tool_call_part(call: Any) -> dict:
    return {"type": "tool_call", "id": _get(call, "id"), "name": _get(call, "function", "name"),
            "arguments": _arguments(_get(call, "function", "arguments"))}


def _openai_chat(response: Any) -> Reading:
    messages, reasons = [], []
    for choice in _get(response, "choices") or ():
        message = _get(choice, "message")
        parts = []
        reasoning_text = _get(message, "reasoning_content")  # OpenAI-compatible servers with reasoning
        if reasoning_text:
            parts.append({"type": "reasoning", "content": reasoning_text})
        if _get(message, "content"):
            parts.append({"type": "text", "content": _get(message, "content")})
        if _get(message, "refusal"):
            parts.append({"type": "text", "content": _get(message, "refusal")})
        parts.extend(openai_tool_call_part(call) for call in _get(message, "tool_calls") or ())
        reason = _get(choice, "finish_reason")
        reasons.append(reason)
        messages.append({"role": _get(message, "role") or "assistant", "parts": parts, "finish_reason": reason})
    return reading("openai", model=_get(response, "model"), response_id=_get(response, "id"),
                   finish_reasons=reasons, messages=messages, **openai_chat_usage(_get(response, "usage")))


def _openai_response(response: Any) -> Reading:
    """The Responses API's Response (also what a stream's response.completed event carries)."""
    parts = []
    for item in _get(response, "output") or ():
        kind = _get(item, "type")
        if kind == "message":
            for content in _get(item, "content") or ():
                text = _get(content, "text") if _get(content, "type") == "output_text" else _get(content, "refusal")
                if text:
                    parts.append({"type": "text", "content": text})
        elif kind == "reasoning":
            for summary in _get(item, "summary") or ():
                parts.append({"type": "reasoning", "content": _get(summary, "text")})
        elif kind == "function_call":
            parts.append({"type": "tool_call", "id": _get(item, "call_id"), "name": _get(item, "name"),
                          "arguments": _arguments(_get(item, "arguments"))})
        elif kind is not None:
            parts.append({"type": kind, "content": _plain(item)})
    status = _get(response, "status")
    reason = "stop" if status == "completed" else (_get(response, "incomplete_details", "reason") or status)
    usage = _get(response, "usage")
    return reading(
        "openai", model=_get(response, "model"), response_id=_get(response, "id"), finish_reasons=[reason],
        messages=[{"role": "assistant", "parts": parts, "finish_reason": reason}],
        input_tokens=_get(usage, "input_tokens"), output_tokens=_get(usage, "output_tokens"),
        cached=_get(usage, "input_tokens_details", "cached_tokens"),
        reasoning=_get(usage, "output_tokens_details", "reasoning_tokens"),
    )


# --- Anthropic ---------------------------------------------------------------------------------
def anthropic_usage(usage: Any) -> dict:
    """Anthropic's input_tokens leave out cache reads and writes; GenAI's input tokens hold all three."""
    fresh = _int(_get(usage, "input_tokens"))
    cached = _int(_get(usage, "cache_read_input_tokens")) or 0
    written = _int(_get(usage, "cache_creation_input_tokens")) or 0
    return {
        "input_tokens": None if fresh is None else fresh + cached + written,
        "output_tokens": _get(usage, "output_tokens"),
        "cached": cached if fresh is not None else None,
    }


def anthropic_part(block: Any) -> dict | None:
    kind = _get(block, "type")
    if kind == "text":
        return {"type": "text", "content": _get(block, "text")}
    if kind == "thinking":
        return {"type": "reasoning", "content": _get(block, "thinking")}
    if kind == "tool_use":
        return {"type": "tool_call", "id": _get(block, "id"), "name": _get(block, "name"),
                "arguments": _plain(_get(block, "input"))}
    return {"type": kind, "content": _plain(block)} if kind else None


def _anthropic(message: Any) -> Reading:
    parts = [part for part in map(anthropic_part, _get(message, "content") or ()) if part is not None]
    reason = _get(message, "stop_reason")
    return reading("anthropic", model=_get(message, "model"), response_id=_get(message, "id"),
                   finish_reasons=[reason], messages=[{"role": "assistant", "parts": parts, "finish_reason": reason}],
                   **anthropic_usage(_get(message, "usage")))


# --- Gemini (google-genai) ---------------------------------------------------------------------
def gemini_usage(usage: Any) -> dict:
    """Gemini counts thoughts apart from the candidates; GenAI's output tokens hold both."""
    candidates = _int(_get(usage, "candidates_token_count"))
    thoughts = _int(_get(usage, "thoughts_token_count"))
    output = None if candidates is None and thoughts is None else (candidates or 0) + (thoughts or 0)
    return {
        "input_tokens": _get(usage, "prompt_token_count"),
        "output_tokens": output,
        "cached": _get(usage, "cached_content_token_count"),
        "reasoning": thoughts,
    }


def gemini_reason(candidate: Any) -> str | None:
    reason = _get(candidate, "finish_reason")
    reason = getattr(reason, "value", reason)  # an enum in google-genai
    return str(reason).lower() if reason else None


def gemini_parts(content: Any) -> list:
    parts = []
    for part in _get(content, "parts") or ():
        text = _get(part, "text")
        call = _get(part, "function_call")
        if text is not None:
            parts.append({"type": "reasoning" if _get(part, "thought") else "text", "content": text})
        elif call is not None:
            parts.append({"type": "tool_call", "id": _get(call, "id"), "name": _get(call, "name"),
                          "arguments": _plain(_get(call, "args"))})
    return parts


def _gemini(response: Any) -> Reading:
    messages, reasons = [], []
    for candidate in _get(response, "candidates") or ():
        reason = gemini_reason(candidate)
        reasons.append(reason)
        messages.append({"role": "assistant", "parts": gemini_parts(_get(candidate, "content")),
                         "finish_reason": reason})
    return reading("gcp.gen_ai", model=_get(response, "model_version"), response_id=_get(response, "response_id"),
                   finish_reasons=reasons, messages=messages, **gemini_usage(_get(response, "usage_metadata")))


def read(value: Any) -> Reading | None:
    """What a known client's response says; None for anything else."""
    if value is None or isinstance(value, (str, bytes, int, float, bool, dict)):
        return None
    kind = getattr(value, "object", None)
    if kind == "chat.completion":
        return _openai_chat(value)
    if kind == "response":
        return _openai_response(value)
    if getattr(value, "type", None) == "message" and hasattr(value, "stop_reason"):
        return _anthropic(value)
    if hasattr(value, "usage_metadata") and hasattr(value, "candidates"):
        return _gemini(value)
    if isinstance(value, list) and value:  # what a decorated generator yielded: stream chunks
        from .streams import StreamReader

        reader = StreamReader()
        for item in value:
            if not reader.feed(item):
                return None
        return reader.result()
    return None


def record(span: Any, found: Reading, capture: bool, folder: Any = None) -> None:
    """Set what was read on the model call's span, never over what it already has.

    An instrumentation's span folded into this one, or `record_usage` inside the
    function, said it first; where a model span of an instrumentation ended
    under this one without being folded, that span carries the call's usage.
    """
    present = getattr(span, "_attributes", None) or getattr(span, "attributes", None) or {}
    leave_usage = folder is not None and not folder.fold and folder.took_model_child(span)
    span.set_attributes({
        key: value for key, value in found.attributes.items()
        if key not in present and not (leave_usage and key in USAGE_KEYS)
    })
    if capture and found.messages is not None and GEN_AI_OUTPUT_MESSAGES not in present:
        set_content(span, GEN_AI_OUTPUT_MESSAGES, found.messages, output_messages_json)
