"""record_usage: token counts, model and messages of a model call we did not instrument."""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from agentwatch.schemas.attributes import (
    COST_USD,
    GEN_AI_INPUT_MESSAGES,
    GEN_AI_OPERATION_NAME,
    GEN_AI_OUTPUT_MESSAGES,
    GEN_AI_PROVIDER_NAME,
    GEN_AI_REQUEST_MODEL,
    GEN_AI_RESPONSE_MODEL,
    GEN_AI_SYSTEM_INSTRUCTIONS,
    GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS,
    GEN_AI_USAGE_INPUT_TOKENS,
    GEN_AI_USAGE_OUTPUT_TOKENS,
    GEN_AI_USAGE_REASONING_OUTPUT_TOKENS,
)

from .capture import input_messages_json, output_messages_json, set_content, system_instructions_json
from .settings import now, settings, warn_once


def record_usage(
    *,
    model: str | None = None,
    response_model: str | None = None,
    provider: str | None = None,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    cached_input_tokens: int | None = None,
    reasoning_tokens: int | None = None,
    input_messages: Any = None,
    output_messages: Any = None,
    system_instructions: Any = None,
    cost_usd: float | None = None,
    span: trace.Span | None = None,
) -> None:
    """Set GenAI usage attributes on `span`, else on the current span.

    Token semantics follow OTel GenAI: input_tokens includes cached tokens,
    output_tokens includes reasoning tokens. Messages are captured whole (JSON,
    reasoning parts kept) unless content capture is off. With no span given and
    no recording current span, a short "chat {model}" span carries the usage,
    so that cost is never lost.
    """
    try:
        own_span = None
        if span is None:
            span = trace.get_current_span()
            if not span.is_recording():
                own_span = span = settings.tracer.start_span(
                    f"chat {model}" if model else "chat",
                    kind=SpanKind.CLIENT,
                    attributes={GEN_AI_OPERATION_NAME: "chat"},
                    start_time=now(),
                )
        if not span.is_recording():
            return
        values = {
            GEN_AI_REQUEST_MODEL: model,
            GEN_AI_RESPONSE_MODEL: response_model,
            GEN_AI_PROVIDER_NAME: provider,
            GEN_AI_USAGE_INPUT_TOKENS: input_tokens,
            GEN_AI_USAGE_OUTPUT_TOKENS: output_tokens,
            GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: cached_input_tokens,
            GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: reasoning_tokens,
            COST_USD: None if cost_usd is None else float(cost_usd),
        }
        span.set_attributes({name: value for name, value in values.items() if value is not None})
        if settings.capture_content:
            if input_messages is not None:
                set_content(span, GEN_AI_INPUT_MESSAGES, input_messages, input_messages_json)
            if output_messages is not None:
                set_content(span, GEN_AI_OUTPUT_MESSAGES, output_messages, output_messages_json)
            if system_instructions is not None:
                set_content(span, GEN_AI_SYSTEM_INSTRUCTIONS, system_instructions, system_instructions_json)
        if own_span is not None:
            own_span.end(end_time=now())
    except Exception:
        warn_once("usage", "agentwatch could not record usage")
