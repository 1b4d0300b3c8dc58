-- Tables the detectors, the alert dispatcher, the receiver's API keys and
-- the demo's incident labels live in.

CREATE TABLE IF NOT EXISTS {db}.anomalies (
    AnomalyId String,
    DetectedAt DateTime64(3),
    Kind LowCardinality(String),
    Severity LowCardinality(String),
    Tenant LowCardinality(String),
    AgentId String,
    TraceId String,
    Score Float64,
    Summary String,
    Evidence String CODEC(ZSTD(3)),
    Status LowCardinality(String),
    FirstSeen DateTime64(9),
    LastSeen DateTime64(9),
    UpdatedAt DateTime64(6) DEFAULT now64(6)
) ENGINE = ReplacingMergeTree(UpdatedAt)
ORDER BY AnomalyId;

CREATE TABLE IF NOT EXISTS {db}.detector_state (
    Detector LowCardinality(String),
    Shard String,
    Position String,
    State String CODEC(ZSTD(3)),
    UpdatedAt DateTime64(6) DEFAULT now64(6)
) ENGINE = ReplacingMergeTree(UpdatedAt)
ORDER BY (Detector, Shard);

CREATE TABLE IF NOT EXISTS {db}.alert_deliveries (
    DeliveryId String,
    AnomalyId String,
    Sink LowCardinality(String),
    Target String,
    Event LowCardinality(String),
    Attempt UInt16,
    HttpStatus Int32,
    Delivered Bool,
    Error String,
    Payload String CODEC(ZSTD(3)),
    SentAt DateTime64(6) DEFAULT now64(6)
) ENGINE = MergeTree
ORDER BY (AnomalyId, SentAt);

-- Receiver API keys: only a SHA-256 of each key is stored.
CREATE TABLE IF NOT EXISTS {db}.api_keys (
    KeyHash String,
    Tenant LowCardinality(String),
    Name String,
    CreatedAt DateTime64(3) DEFAULT now64(3),
    Revoked Bool DEFAULT false,
    UpdatedAt DateTime64(6) DEFAULT now64(6)
) ENGINE = ReplacingMergeTree(UpdatedAt)
ORDER BY KeyHash;

-- Ground truth written by `agentwatch demo`: the incidents it injected.
CREATE TABLE IF NOT EXISTS {db}.demo_incidents (
    RunId String,
    IncidentId String,
    Kind LowCardinality(String),
    Tenant LowCardinality(String),
    AgentId String,
    TraceId String,
    CredentialId String,
    StartedAt DateTime64(9),
    EndedAt DateTime64(9),
    Description String,
    RecordedAt DateTime64(6) DEFAULT now64(6)
) ENGINE = MergeTree
ORDER BY (RunId, StartedAt);
