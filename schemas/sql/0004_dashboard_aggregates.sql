-- Aggregates the dashboard reads, so it answers in well under a second over
-- tens of millions of spans, and opens a 12,000-span trace without reading
-- its payloads. Each is filled by a materialized view (so it fills whoever
-- writes the spans) and backfilled once from what is already stored.

-- Per minute and per hour: spans, model and tool calls, tokens by kind, cost.
-- SummingMergeTree: read with sum() and GROUP BY (parts merge lazily).
CREATE TABLE IF NOT EXISTS {db}.agent_minutes (
    Minute DateTime CODEC(Delta, ZSTD(1)),
    Tenant LowCardinality(String),
    ServiceName LowCardinality(String),
    AgentId String,
    AgentName LowCardinality(String),
    Model LowCardinality(String),
    Spans UInt64,
    ModelCalls UInt64,
    ToolCalls UInt64,
    Errors UInt64,
    InputTokens UInt64,
    CachedInputTokens UInt64,
    OutputTokens UInt64,
    ReasoningTokens UInt64,
    CostUSD Float64,
    PricedCalls UInt64,
    UnpricedCalls UInt64,
    PayloadBytes UInt64
) ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(Minute)
ORDER BY (Minute, Tenant, ServiceName, AgentId, AgentName, Model);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.agent_minutes_mv TO {db}.agent_minutes AS
SELECT
    toStartOfMinute(Timestamp) AS Minute,
    Tenant, ServiceName, AgentId, AgentName, Model,
    count() AS Spans,
    countIf(Operation IN ('chat', 'text_completion', 'generate_content', 'embeddings')) AS ModelCalls,
    countIf(Operation = 'execute_tool') AS ToolCalls,
    countIf(StatusCode = 'Error') AS Errors,
    sum(Input) AS InputTokens,
    sum(CachedInputTokens) AS CachedInputTokens,
    sum(Output) AS OutputTokens,
    sum(ReasoningTokens) AS ReasoningTokens,
    sum(ifNull(Cost, 0)) AS CostUSD,
    countIf(Cost IS NOT NULL) AS PricedCalls,
    countIf(Cost IS NULL AND Input + Output > 0) AS UnpricedCalls,
    sum(PayloadBytes) AS PayloadBytes
FROM (SELECT *, CostUSD AS Cost, InputTokens AS Input, OutputTokens AS Output FROM {db}.agent_spans)
GROUP BY Minute, Tenant, ServiceName, AgentId, AgentName, Model;

INSERT INTO {db}.agent_minutes
SELECT
    toStartOfMinute(Timestamp) AS Minute,
    Tenant, ServiceName, AgentId, AgentName, Model,
    count(),
    countIf(Operation IN ('chat', 'text_completion', 'generate_content', 'embeddings')),
    countIf(Operation = 'execute_tool'),
    countIf(StatusCode = 'Error'),
    sum(InputTokens), sum(CachedInputTokens), sum(OutputTokens), sum(ReasoningTokens),
    sum(ifNull(CostUSD, 0)),
    countIf(CostUSD IS NOT NULL),
    countIf(CostUSD IS NULL AND InputTokens + OutputTokens > 0),
    sum(PayloadBytes)
FROM {db}.agent_spans
WHERE (SELECT count() FROM {db}.agent_minutes) = 0
GROUP BY Minute, Tenant, ServiceName, AgentId, AgentName, Model;

CREATE TABLE IF NOT EXISTS {db}.agent_hours AS {db}.agent_minutes
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(Minute)
ORDER BY (Minute, Tenant, ServiceName, AgentId, AgentName, Model);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.agent_hours_mv TO {db}.agent_hours AS
SELECT
    toStartOfHour(Timestamp) AS Minute,
    Tenant, ServiceName, AgentId, AgentName, Model,
    count() AS Spans,
    countIf(Operation IN ('chat', 'text_completion', 'generate_content', 'embeddings')) AS ModelCalls,
    countIf(Operation = 'execute_tool') AS ToolCalls,
    countIf(StatusCode = 'Error') AS Errors,
    sum(Input) AS InputTokens,
    sum(CachedInputTokens) AS CachedInputTokens,
    sum(Output) AS OutputTokens,
    sum(ReasoningTokens) AS ReasoningTokens,
    sum(ifNull(Cost, 0)) AS CostUSD,
    countIf(Cost IS NOT NULL) AS PricedCalls,
    countIf(Cost IS NULL AND Input + Output > 0) AS UnpricedCalls,
    sum(PayloadBytes) AS PayloadBytes
FROM (SELECT *, CostUSD AS Cost, InputTokens AS Input, OutputTokens AS Output FROM {db}.agent_spans)
GROUP BY Minute, Tenant, ServiceName, AgentId, AgentName, Model;

INSERT INTO {db}.agent_hours
SELECT
    toStartOfHour(Timestamp) AS Minute,
    Tenant, ServiceName, AgentId, AgentName, Model,
    count(),
    countIf(Operation IN ('chat', 'text_completion', 'generate_content', 'embeddings')),
    countIf(Operation = 'execute_tool'),
    countIf(StatusCode = 'Error'),
    sum(InputTokens), sum(CachedInputTokens), sum(OutputTokens), sum(ReasoningTokens),
    sum(ifNull(CostUSD, 0)),
    countIf(CostUSD IS NOT NULL),
    countIf(CostUSD IS NULL AND InputTokens + OutputTokens > 0),
    sum(PayloadBytes)
FROM {db}.agent_spans
WHERE (SELECT count() FROM {db}.agent_hours) = 0
GROUP BY Minute, Tenant, ServiceName, AgentId, AgentName, Model;

-- One row per trace and hour it was active in (read with GROUP BY TraceId):
-- the trace finder lists traces of a time range, tenant or agent from here.
CREATE TABLE IF NOT EXISTS {db}.trace_summaries (
    Hour DateTime CODEC(Delta, ZSTD(1)),
    Tenant LowCardinality(String),
    TraceId String,
    ServiceName SimpleAggregateFunction(max, String),
    Start SimpleAggregateFunction(min, DateTime64(9)),
    End SimpleAggregateFunction(max, DateTime64(9)),
    RootAgentId SimpleAggregateFunction(max, String),
    RootAgentName SimpleAggregateFunction(max, String),
    RootSpanName SimpleAggregateFunction(max, String),
    Agents SimpleAggregateFunction(groupUniqArrayArray, Array(String)),
    Spans SimpleAggregateFunction(sum, UInt64),
    ModelCalls SimpleAggregateFunction(sum, UInt64),
    Errors SimpleAggregateFunction(sum, UInt64),
    Tokens SimpleAggregateFunction(sum, UInt64),
    CostUSD SimpleAggregateFunction(sum, Float64),
    PayloadBytes SimpleAggregateFunction(sum, UInt64)
) ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(Hour)
ORDER BY (Hour, Tenant, TraceId);

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
    groupUniqArray(AgentId) AS Agents,
    count() AS Spans,
    countIf(Operation IN ('chat', 'text_completion', 'generate_content', 'embeddings')) AS ModelCalls,
    countIf(StatusCode = 'Error') AS Errors,
    sum(InputTokens + OutputTokens) AS Tokens,
    sum(ifNull(CostUSD, 0)) AS CostUSD,
    sum(PayloadBytes) AS PayloadBytes
FROM {db}.agent_spans
GROUP BY Hour, Tenant, TraceId;

INSERT INTO {db}.trace_summaries
SELECT
    toStartOfHour(Timestamp) AS Hour,
    Tenant,
    TraceId,
    max(toString(ServiceName)),
    min(Timestamp),
    max(fromUnixTimestamp64Nano(toUnixTimestamp64Nano(Timestamp) + toInt64(Duration))),
    max(if(ParentSpanId = '', AgentId, '')),
    max(if(ParentSpanId = '', toString(AgentName), '')),
    max(if(ParentSpanId = '', toString(SpanName), '')),
    groupUniqArray(AgentId),
    count(),
    countIf(Operation IN ('chat', 'text_completion', 'generate_content', 'embeddings')),
    countIf(StatusCode = 'Error'),
    sum(InputTokens + OutputTokens),
    sum(ifNull(CostUSD, 0)),
    sum(PayloadBytes)
FROM {db}.agent_spans
WHERE (SELECT count() FROM {db}.trace_summaries) = 0
GROUP BY Hour, Tenant, TraceId;

-- The replay index: per span, its small attributes (values up to 256 bytes),
-- the names and sizes of its payloads (longer values: never copied here),
-- its events and status message, ordered by trace. Opening a trace reads this
-- and agent_spans only; a payload is read from otel_traces when opened.
CREATE TABLE IF NOT EXISTS {db}.trace_span_index (
    TraceId String CODEC(ZSTD(1)),
    Timestamp DateTime64(9) CODEC(Delta, ZSTD(1)),
    SpanId String CODEC(ZSTD(1)),
    ServiceName LowCardinality(String),
    SpanName LowCardinality(String),
    StatusMessage String CODEC(ZSTD(1)),
    Attributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    PayloadKeys Array(LowCardinality(String)),
    PayloadSizes Array(UInt64),
    Events Nested (
        Timestamp DateTime64(9),
        Name LowCardinality(String),
        Attributes Map(LowCardinality(String), String)
    ) CODEC(ZSTD(1))
) ENGINE = MergeTree
PARTITION BY toDate(Timestamp)
ORDER BY (TraceId, Timestamp);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.trace_span_index_mv TO {db}.trace_span_index AS
SELECT
    TraceId,
    Timestamp,
    SpanId,
    ServiceName,
    SpanName,
    StatusMessage,
    mapFilter((k, v) -> length(v) <= 256, SpanAttributes) AS Attributes,
    arrayFilter((k, v) -> length(v) > 256, mapKeys(SpanAttributes), mapValues(SpanAttributes)) AS PayloadKeys,
    arrayFilter(n -> n > 256, arrayMap(v -> toUInt64(length(v)), mapValues(SpanAttributes))) AS PayloadSizes,
    Events.Timestamp AS `Events.Timestamp`,
    Events.Name AS `Events.Name`,
    Events.Attributes AS `Events.Attributes`
FROM {db}.otel_traces;

INSERT INTO {db}.trace_span_index
SELECT
    TraceId, Timestamp, SpanId, ServiceName, SpanName, StatusMessage,
    mapFilter((k, v) -> length(v) <= 256, SpanAttributes),
    arrayFilter((k, v) -> length(v) > 256, mapKeys(SpanAttributes), mapValues(SpanAttributes)),
    arrayFilter(n -> n > 256, arrayMap(v -> toUInt64(length(v)), mapValues(SpanAttributes))),
    Events.Timestamp, Events.Name, Events.Attributes
FROM {db}.otel_traces
WHERE (SELECT count() FROM {db}.trace_span_index) = 0
