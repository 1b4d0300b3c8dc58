-- A trace's agents, as the trace finder lists them: with stock instrumentation only agent spans name an
-- agent, and OpenInference / OpenLLMetry agent spans carry a name but no id. The view no longer lists
-- the empty id of every other span as an agent, and names an agent span without an id by its agent name
-- and span id. Rows already stored keep their values.

DROP VIEW IF EXISTS {db}.trace_summaries_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.trace_summaries_mv TO {db}.trace_summaries AS
SELECT
    toStartOfHour(Timestamp) AS Hour,
    Tenant,
    TraceId,
    max(toString(ServiceName)) AS ServiceName,
    min(Timestamp) AS Start,
    max(fromUnixTimestamp64Nano(toUnixTimestamp64Nano(Timestamp) + toInt64(Duration))) AS End,
    max(if(ParentSpanId = '', AgentId, '')) AS RootAgentId,
    max(if(ParentSpanId = '', toString(AgentName), '')) AS RootAgentName,
    max(if(ParentSpanId = '', toString(SpanName), '')) AS RootSpanName,
    groupUniqArrayIf(if(AgentId != '', AgentId, concat(toString(AgentName), '/', SpanId)),
                     AgentId != '' OR (Operation = 'invoke_agent' AND AgentName != '')) AS Agents,
    count() AS Spans,
    countIf(Operation IN ('chat', 'text_completion', 'generate_content', 'embeddings')) AS ModelCalls,
    countIf(StatusCode = 'Error') AS Errors,
    sum(InputTokens + OutputTokens) AS Tokens,
    sum(ifNull(CostUSD, 0)) AS CostUSD,
    sum(PayloadBytes) AS PayloadBytes
FROM {db}.agent_spans
GROUP BY Hour, Tenant, TraceId
