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


def sql_templates() -> dict[str, str]:
    """Expressions the agent-table DDL refers to as {name}."""
    kind = f"SpanAttributes['{OPENINFERENCE_SPAN_KIND}']"
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
        "agent_name": sql_first(AGENT_NAME_KEYS),
        "tool_name": sql_first(TOOL_NAME_KEYS),
        "operation": (
            f"if(SpanAttributes['{GEN_AI_OPERATION_NAME}'] != '', SpanAttributes['{GEN_AI_OPERATION_NAME}'], "
            f"transform({kind}, [{', '.join(repr(k) for k in OPENINFERENCE_OPERATIONS)}], "
            f"[{', '.join(repr(v) for v in OPENINFERENCE_OPERATIONS.values())}], lower({kind})))"
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
