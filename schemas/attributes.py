"""Attribute names of the span contract (DESIGN.md, "Span conventions").

The OpenTelemetry GenAI semantic conventions come first; OpenInference and
OpenLLMetry spellings follow as fallbacks so spans from their
instrumentations are typed the same way. The receiver (pricing) and the
`agent_spans` materialized view (typing) both read these tuples, so the two
can never disagree on where a token count or a model name lives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# --- ours: only what the standard lacks --------------------------------------
TENANT_ID = "agentwatch.tenant.id"
COST_USD = "agentwatch.cost.usd"

CREDENTIAL_GRANT = "agentwatch.credential.grant"
CREDENTIAL_USE = "agentwatch.credential.use"
CREDENTIAL_REVOKE = "agentwatch.credential.revoke"
CREDENTIAL_EVENTS = (CREDENTIAL_GRANT, CREDENTIAL_USE, CREDENTIAL_REVOKE)
CREDENTIAL_ID = "agentwatch.credential.id"
CREDENTIAL_TENANT_ID = "agentwatch.credential.tenant.id"
CREDENTIAL_SCOPE = "agentwatch.credential.scope"
CREDENTIAL_ACTION = "agentwatch.credential.action"
RESOURCE_NAME = "agentwatch.resource.name"
RESOURCE_TENANT_ID = "agentwatch.resource.tenant.id"

# --- OpenTelemetry GenAI semantic conventions --------------------------------
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_AGENT_ID = "gen_ai.agent.id"
GEN_AI_AGENT_NAME = "gen_ai.agent.name"
GEN_AI_CONVERSATION_ID = "gen_ai.conversation.id"
GEN_AI_TOOL_NAME = "gen_ai.tool.name"
GEN_AI_TOOL_CALL_ID = "gen_ai.tool.call.id"
GEN_AI_TOOL_CALL_ARGUMENTS = "gen_ai.tool.call.arguments"
GEN_AI_TOOL_CALL_RESULT = "gen_ai.tool.call.result"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS = "gen_ai.usage.cache_read.input_tokens"
GEN_AI_USAGE_REASONING_OUTPUT_TOKENS = "gen_ai.usage.reasoning.output_tokens"
GEN_AI_INPUT_MESSAGES = "gen_ai.input.messages"
GEN_AI_OUTPUT_MESSAGES = "gen_ai.output.messages"
GEN_AI_SYSTEM_INSTRUCTIONS = "gen_ai.system_instructions"

# --- where each typed column may come from, first match wins -----------------
PROVIDER_KEYS = (GEN_AI_PROVIDER_NAME, "gen_ai.system", "llm.provider", "llm.system")
MODEL_KEYS = (GEN_AI_RESPONSE_MODEL, GEN_AI_REQUEST_MODEL, "llm.model_name")
INPUT_TOKENS_KEYS = (GEN_AI_USAGE_INPUT_TOKENS, "gen_ai.usage.prompt_tokens", "llm.token_count.prompt")
OUTPUT_TOKENS_KEYS = (GEN_AI_USAGE_OUTPUT_TOKENS, "gen_ai.usage.completion_tokens", "llm.token_count.completion")
CACHED_INPUT_TOKENS_KEYS = (
    GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS,
    "gen_ai.usage.cache_read_input_tokens",
    "llm.token_count.prompt_details.cache_read",
)
REASONING_TOKENS_KEYS = (
    GEN_AI_USAGE_REASONING_OUTPUT_TOKENS,
    "gen_ai.usage.reasoning_tokens",
    "llm.token_count.completion_details.reasoning",
)
AGENT_ID_KEYS = (GEN_AI_AGENT_ID, "agent.id")
AGENT_NAME_KEYS = (GEN_AI_AGENT_NAME, "agent.name")
TOOL_NAME_KEYS = (GEN_AI_TOOL_NAME, "tool.name")
# OpenInference marks the kind of span instead of naming the operation.
OPENINFERENCE_SPAN_KIND = "openinference.span.kind"
OPENINFERENCE_OPERATIONS = {
    "LLM": "chat",
    "AGENT": "invoke_agent",
    "TOOL": "execute_tool",
    "EMBEDDING": "embeddings",
    "RETRIEVER": "retrieval",
    "CHAIN": "chain",
}
# OpenLLMetry (Traceloop) marks the spans its decorators make (`@workflow`, `@agent`, `@task`,
# `@tool`) with a kind and names the entity; its LLM spans carry the request type instead.
TRACELOOP_SPAN_KIND = "traceloop.span.kind"
TRACELOOP_ENTITY_NAME = "traceloop.entity.name"
TRACELOOP_OPERATIONS = {
    "workflow": "invoke_workflow",
    "agent": "invoke_agent",
    "tool": "execute_tool",
    "task": "task",
}
LLM_REQUEST_TYPE = "llm.request.type"
LLM_REQUEST_TYPES = {
    "chat": "chat",
    "completion": "text_completion",
    "embedding": "embeddings",
    "rerank": "rerank",
}
# Where the arguments of a tool call are written: GenAI, OpenInference (the TOOL span's input),
# OpenLLMetry (the `@tool` function's {"args": [...], "kwargs": {...}}).
TOOL_ARGUMENTS_KEYS = (GEN_AI_TOOL_CALL_ARGUMENTS, "input.value", "traceloop.entity.input")

DEFAULT_TENANT = "default"


def first(attributes: Mapping[str, str], keys: Sequence[str]) -> str:
    """The first non-empty value among `keys`, or ''."""
    for key in keys:
        value = attributes.get(key)
        if value:
            return value
    return ""


def sql_first(keys: Sequence[str], column: str = "SpanAttributes") -> str:
    """The ClickHouse expression that does what `first` does, on a Map column."""
    parts = ", ".join(f"nullIf({column}['{key}'], '')" for key in keys)
    return f"coalesce({parts}, '')"


def _sql_transform(expression: str, mapping: Mapping[str, str]) -> str:
    """`mapping[value]`, else the value in lower case."""
    return (f"transform({expression}, [{', '.join(repr(k) for k in mapping)}], "
            f"[{', '.join(repr(v) for v in mapping.values())}], lower({expression}))")


def _sql_first_or_entity(keys: Sequence[str], traceloop_kind: str) -> str:
    """`sql_first(keys)`, else the Traceloop entity name on spans of that Traceloop kind."""
    parts = ", ".join(f"nullIf(SpanAttributes['{key}'], '')" for key in keys)
    entity = (f"if(SpanAttributes['{TRACELOOP_SPAN_KIND}'] = '{traceloop_kind}', "
              f"nullIf(SpanAttributes['{TRACELOOP_ENTITY_NAME}'], ''), NULL)")
    return f"coalesce({parts}, {entity}, '')"


def sql_templates() -> dict[str, str]:
    """Expressions the agent-table DDL refers to as {name}."""
    kind = f"SpanAttributes['{OPENINFERENCE_SPAN_KIND}']"
    operation = f"SpanAttributes['{GEN_AI_OPERATION_NAME}']"
    request_type = f"SpanAttributes['{LLM_REQUEST_TYPE}']"
    traceloop_kind = f"SpanAttributes['{TRACELOOP_SPAN_KIND}']"
    return {
        "tenant": (
            f"coalesce(nullIf(SpanAttributes['{TENANT_ID}'], ''), "
            f"nullIf(ResourceAttributes['{TENANT_ID}'], ''), '{DEFAULT_TENANT}')"
        ),
        "provider": sql_first(PROVIDER_KEYS),
        "model": sql_first(MODEL_KEYS),
        "input_tokens": f"toUInt64OrZero({sql_first(INPUT_TOKENS_KEYS)})",
        "output_tokens": f"toUInt64OrZero({sql_first(OUTPUT_TOKENS_KEYS)})",
        "cached_input_tokens": f"toUInt64OrZero({sql_first(CACHED_INPUT_TOKENS_KEYS)})",
        "reasoning_tokens": f"toUInt64OrZero({sql_first(REASONING_TOKENS_KEYS)})",
        "cost_usd": f"toFloat64OrNull(nullIf(SpanAttributes['{COST_USD}'], ''))",
        "agent_id": sql_first(AGENT_ID_KEYS),
        "agent_name": _sql_first_or_entity(AGENT_NAME_KEYS, "agent"),
        "tool_name": _sql_first_or_entity(TOOL_NAME_KEYS, "tool"),
        # GenAI names the operation; else OpenInference's span kind; else OpenLLMetry's request
        # type (LLM spans) or span kind (decorated spans); else ''.
        "operation": (
            f"multiIf({operation} != '', {operation}, "
            f"{kind} != '', {_sql_transform(kind, OPENINFERENCE_OPERATIONS)}, "
            f"{request_type} != '', {_sql_transform(request_type, LLM_REQUEST_TYPES)}, "
            f"{_sql_transform(traceloop_kind, TRACELOOP_OPERATIONS)})"
        ),
        "credential_events": ", ".join(f"'{name}'" for name in CREDENTIAL_EVENTS),
        "credential_id": CREDENTIAL_ID,
        "credential_tenant_id": CREDENTIAL_TENANT_ID,
        "credential_scope": CREDENTIAL_SCOPE,
        "credential_action": CREDENTIAL_ACTION,
        "resource_name": RESOURCE_NAME,
        "resource_tenant_id": RESOURCE_TENANT_ID,
        "gen_ai_agent_id": GEN_AI_AGENT_ID,
    }
