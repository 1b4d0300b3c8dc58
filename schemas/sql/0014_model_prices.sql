-- Prices in the store, so that spans written straight into otel_traces (an OpenTelemetry Collector's
-- clickhouseexporter, no agentwatch receiver in between) are priced like the receiver prices them.
-- model_prices holds genai-prices' rates per provider name and exact model name ('' Provider: any
-- provider), one row per period of constant price (ValidFrom..ValidTo, inclusive). Tier arrays: a request
-- whose input tokens exceed a start pays that tier's rate for all its tokens of the kind. Rows are written by
-- agentwatch/schemas/prices.py (the whole genai-prices data at start, and names seen on unpriced spans);
-- ReplacingMergeTree keeps the latest row written for a key.
CREATE TABLE IF NOT EXISTS {db}.model_prices (
    Provider LowCardinality(String),
    Model String,
    ValidFrom Date,
    ValidTo Date,
    InputPerMTok Float64,
    CachedInputPerMTok Float64,
    OutputPerMTok Float64,
    InputTierStarts Array(UInt64),
    InputTierRates Array(Float64),
    CachedTierStarts Array(UInt64),
    CachedTierRates Array(Float64),
    OutputTierStarts Array(UInt64),
    OutputTierRates Array(Float64),
    Source LowCardinality(String),
    UpdatedAt DateTime64(3) DEFAULT now64(3)
) ENGINE = ReplacingMergeTree(UpdatedAt)
ORDER BY (Provider, Model, ValidFrom);

-- The typed view looks prices up in memory. A local ClickHouse source runs its query in the server
-- itself, as the user that created the dictionary; reloaded every 30-60 s and when prices.py writes rows.
CREATE DICTIONARY IF NOT EXISTS {db}.model_prices_dict (
    Provider String,
    Model String,
    ValidFrom Date,
    ValidTo Date,
    InputPerMTok Float64,
    CachedInputPerMTok Float64,
    OutputPerMTok Float64,
    InputTierStarts Array(UInt64),
    InputTierRates Array(Float64),
    CachedTierStarts Array(UInt64),
    CachedTierRates Array(Float64),
    OutputTierStarts Array(UInt64),
    OutputTierRates Array(Float64)
)
PRIMARY KEY Provider, Model
SOURCE(CLICKHOUSE(QUERY 'SELECT Provider, Model, ValidFrom, ValidTo, InputPerMTok, CachedInputPerMTok, OutputPerMTok, InputTierStarts, InputTierRates, CachedTierStarts, CachedTierRates, OutputTierStarts, OutputTierRates FROM {db}.model_prices FINAL'))
LIFETIME(MIN 30 MAX 60)
LAYOUT(COMPLEX_KEY_RANGE_HASHED())
RANGE(MIN ValidFrom MAX ValidTo);

-- The typed view of 0006, with CostUSD priced from the dictionary when the span carries no cost: the
-- span's provider name first, then the model under any provider (the receiver's fallback too). Its query
-- is replaced in place: no insert meets the view missing (spans lost) or twice (spans doubled).
ALTER TABLE {db}.agent_spans_mv MODIFY QUERY
WITH
    '{database}.model_prices_dict' AS prices,
    toDate(Timestamp, 'UTC') AS price_day,
    {model} AS price_model,
    if(isNull(dictGetOrNull(prices, 'InputPerMTok', (lower({provider}), price_model), price_day)),
       '', lower({provider})) AS price_provider,
    isNotNull(dictGetOrNull(prices, 'InputPerMTok', (price_provider, price_model), price_day)) AS price_known,
    dictGet(prices, ('InputPerMTok', 'CachedInputPerMTok', 'OutputPerMTok', 'InputTierStarts', 'InputTierRates',
                     'CachedTierStarts', 'CachedTierRates', 'OutputTierStarts', 'OutputTierRates'),
            (price_provider, price_model), price_day) AS rates,
    {input_tokens} AS price_input,
    least({cached_input_tokens}, price_input) AS price_cached,
    {output_tokens} AS price_output
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
    price_model AS Model,
    price_input AS InputTokens,
    price_output AS OutputTokens,
    {cached_input_tokens} AS CachedInputTokens,
    {reasoning_tokens} AS ReasoningTokens,
    coalesce({cost_usd}, if(price_known AND price_input + price_output > 0,
        ((price_input - price_cached)
            * if(arrayExists(s -> price_input > s, rates.4), rates.5[arrayLastIndex(s -> price_input > s, rates.4)], rates.1)
         + price_cached
            * if(arrayExists(s -> price_input > s, rates.6), rates.7[arrayLastIndex(s -> price_input > s, rates.6)], rates.2)
         + price_output
            * if(arrayExists(s -> price_input > s, rates.8), rates.9[arrayLastIndex(s -> price_input > s, rates.8)], rates.3)
        ) / 1000000, NULL)) AS CostUSD,
    Duration,
    StatusCode,
    arraySum(arrayMap(v -> length(v), mapValues(SpanAttributes)))
        + arraySum(arrayMap(m -> arraySum(arrayMap(v -> length(v), mapValues(m))), Events.Attributes)) AS PayloadBytes,
    now64(6) AS IngestedAt
FROM {db}.otel_traces;
