-- Spans of the public instrumentations typed like our own: OpenLLMetry (Traceloop) decorator
-- spans (`traceloop.span.kind` workflow / agent / task / tool, named by `traceloop.entity.name`)
-- and its LLM spans (`llm.request.type`) get an Operation, agent spans their AgentName and tool
-- spans their ToolName. The view is recreated with the expressions of
-- agentwatch.schemas.attributes (as 0002 made it); rows already stored keep their values.

DROP VIEW IF EXISTS {db}.agent_spans_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.agent_spans_mv TO {db}.agent_spans AS
SELECT
    Timestamp,
    TraceId,
    SpanId,
    ParentSpanId,
    {tenant} AS Tenant,
    ServiceName,
    {agent_id} AS AgentId,
    {agent_name} AS AgentName,
    {operation} AS Operation,
    SpanName,
    {tool_name} AS ToolName,
    {provider} AS Provider,
    {model} AS Model,
    {input_tokens} AS InputTokens,
    {output_tokens} AS OutputTokens,
    {cached_input_tokens} AS CachedInputTokens,
    {reasoning_tokens} AS ReasoningTokens,
    {cost_usd} AS CostUSD,
    Duration,
    StatusCode,
    arraySum(arrayMap(v -> length(v), mapValues(SpanAttributes)))
        + arraySum(arrayMap(m -> arraySum(arrayMap(v -> length(v), mapValues(m))), Events.Attributes)) AS PayloadBytes,
    now64(6) AS IngestedAt
FROM {db}.otel_traces;
