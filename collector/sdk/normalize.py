"""What an instrumentation writes unlike the GenAI conventions, put right before export.

Each fix names the instrumentation and the releases it was found in; a later
release is left as it writes.

- OpenLLMetry's LangChain instrumentation (0.62) writes a tool span's
  `gen_ai.tool.call.arguments` as the whole callback envelope: the arguments
  (`inputs`) with LangChain's run metadata around them (`input_str`, `tags`,
  `metadata` with the graph step and checkpoint of that run, `kwargs`). The
  envelope differs on every call, so two calls with the same arguments would not
  look the same; the arguments are what is exported.
- OpenLLMetry's Bedrock instrumentation (0.62) writes Bedrock's `inputTokens` as
  `gen_ai.usage.input_tokens`; Bedrock counts the cache reads and writes apart,
  and the GenAI input tokens include them: they are added back, so the call is
  priced whole.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from agentwatch.schemas.attributes import (
    GEN_AI_TOOL_CALL_ARGUMENTS,
    GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS,
    GEN_AI_USAGE_INPUT_TOKENS,
)

from .capture import to_json

_ENVELOPE = frozenset({"input_str", "tags", "metadata", "inputs", "kwargs"})
GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS = "gen_ai.usage.cache_creation.input_tokens"


def _langchain_tool_arguments(attributes: Mapping[str, Any]) -> dict | None:
    value = attributes.get(GEN_AI_TOOL_CALL_ARGUMENTS)
    if not isinstance(value, str) or not value.startswith('{"input_str"'):
        return None
    try:
        envelope = json.loads(value)
    except ValueError:
        return None
    if not isinstance(envelope, dict) or set(envelope) != _ENVELOPE:
        return None
    inputs = envelope["inputs"]
    if isinstance(inputs, dict) and inputs:
        return {GEN_AI_TOOL_CALL_ARGUMENTS: to_json(inputs)}
    text = envelope["input_str"]
    return {GEN_AI_TOOL_CALL_ARGUMENTS: text} if isinstance(text, str) else None


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _bedrock_input_tokens(attributes: Mapping[str, Any]) -> dict | None:
    tokens = attributes.get(GEN_AI_USAGE_INPUT_TOKENS)
    cached = _count(attributes.get(GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS))
    written = _count(attributes.get(GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS))
    if not isinstance(tokens, int) or not (cached or written):
        return None
    return {GEN_AI_USAGE_INPUT_TOKENS: tokens + cached + written}


# instrumentation scope name -> (the releases that need it, the fix)
FIXES: dict[str, tuple[str, Callable[[Mapping[str, Any]], dict | None]]] = {
    "opentelemetry.instrumentation.langchain": ("0.62.", _langchain_tool_arguments),
    "opentelemetry.instrumentation.bedrock": ("0.62.", _bedrock_input_tokens),
}


def rewrite(scope: Any, attributes: Mapping[str, Any]) -> dict | None:
    """The attributes to export instead; None where nothing changes."""
    fix = FIXES.get(getattr(scope, "name", None) or "")
    if fix is None or not (getattr(scope, "version", None) or "").startswith(fix[0]):
        return None
    changed = fix[1](attributes)
    return {**attributes, **changed} if changed else None
