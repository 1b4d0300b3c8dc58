-- Typed agent tables, filled by materialized views from otel_traces, so
-- spans are typed whoever writes them (our receiver or a stock
-- otelcol-contrib). Brace placeholders are expressions from
-- agentwatch.schemas.attributes, shared with the receiver.

CREATE TABLE IF NOT EXISTS {db}.agent_spans (
    Timestamp DateTime64(9) CODEC(Delta, ZSTD(1)),
    TraceId String CODEC(ZSTD(1)),
    SpanId String CODEC(ZSTD(1)),
    ParentSpanId String CODEC(ZSTD(1)),
    Tenant LowCardinality(String),
    ServiceName LowCardinality(String),
    AgentId String CODEC(ZSTD(1)),
    AgentName LowCardinality(String),
    Operation LowCardinality(String),
    SpanName LowCardinality(String),
    ToolName LowCardinality(String),
    Provider LowCardinality(String),
    Model LowCardinality(String),
    InputTokens UInt64 CODEC(T64, ZSTD(1)),
    OutputTokens UInt64 CODEC(T64, ZSTD(1)),
    CachedInputTokens UInt64 CODEC(T64, ZSTD(1)),
    ReasoningTokens UInt64 CODEC(T64, ZSTD(1)),
    CostUSD Nullable(Float64),
    Duration UInt64 CODEC(T64, ZSTD(1)),
    StatusCode LowCardinality(String),
    PayloadBytes UInt64 CODEC(T64, ZSTD(1)),
    IngestedAt DateTime64(6) CODEC(Delta, ZSTD(1)),
    INDEX idx_trace_id TraceId TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_agent_id AgentId TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_ingested IngestedAt TYPE minmax GRANULARITY 1,
    PROJECTION by_trace (SELECT * ORDER BY TraceId, Timestamp)
) ENGINE = MergeTree
PARTITION BY toDate(Timestamp)
ORDER BY (Tenant, Timestamp)
SETTINGS index_granularity = 8192, deduplicate_merge_projection_mode = 'rebuild';

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

CREATE TABLE IF NOT EXISTS {db}.credential_events (
    Timestamp DateTime64(9) CODEC(Delta, ZSTD(1)),
    TraceId String CODEC(ZSTD(1)),
    SpanId String CODEC(ZSTD(1)),
    Tenant LowCardinality(String),
    AgentId String CODEC(ZSTD(1)),
    Event LowCardinality(String),
    CredentialId String CODEC(ZSTD(1)),
    CredentialTenant LowCardinality(String),
    Scope String CODEC(ZSTD(1)),
    Resource String CODEC(ZSTD(1)),
    ResourceTenant LowCardinality(String),
    Action LowCardinality(String),
    IngestedAt DateTime64(6) CODEC(Delta, ZSTD(1)),
    INDEX idx_trace_id TraceId TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_credential CredentialId TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_ingested IngestedAt TYPE minmax GRANULARITY 1
) ENGINE = MergeTree
PARTITION BY toDate(Timestamp)
ORDER BY (Tenant, Timestamp)
SETTINGS index_granularity = 8192;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.credential_events_mv TO {db}.credential_events AS
SELECT
    event.1 AS Timestamp,
    TraceId,
    SpanId,
    {tenant} AS Tenant,
    if(event.3['{gen_ai_agent_id}'] != '', event.3['{gen_ai_agent_id}'], {agent_id}) AS AgentId,
    replaceOne(event.2, 'agentwatch.credential.', '') AS Event,
    event.3['{credential_id}'] AS CredentialId,
    event.3['{credential_tenant_id}'] AS CredentialTenant,
    event.3['{credential_scope}'] AS Scope,
    event.3['{resource_name}'] AS Resource,
    event.3['{resource_tenant_id}'] AS ResourceTenant,
    event.3['{credential_action}'] AS Action,
    now64(6) AS IngestedAt
FROM {db}.otel_traces
ARRAY JOIN arrayZip(Events.Timestamp, Events.Name, Events.Attributes) AS event
WHERE event.2 IN ({credential_events});
