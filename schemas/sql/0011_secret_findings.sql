-- Credential material the receiver found in captured payloads (collector/receiver/secrets.py): one row per
-- secret found, written with the spans (or log records) it was found in, in the same insert batch. Where:
-- Signal (traces | logs), Location (attributes | events[i] | links[i] | status | name | body | resource |
-- scope), EventName, Attribute, and
-- CharOffset and CharLength, in characters of the text as sent. Fingerprint: HMAC-SHA256 of the value
-- under the key in secret_keys, 16 hex characters; Redacted: the stored payload holds the marker instead.
-- The secret_exposure detector tails this table by block number, like agent_spans.
CREATE TABLE IF NOT EXISTS {db}.secret_findings (
    Timestamp DateTime64(9) CODEC(Delta, ZSTD(1)),
    TraceId String CODEC(ZSTD(1)),
    SpanId String CODEC(ZSTD(1)),
    ParentSpanId String CODEC(ZSTD(1)),
    Tenant LowCardinality(String),
    AgentId String CODEC(ZSTD(1)),
    ServiceName LowCardinality(String),
    Signal LowCardinality(String),
    Location LowCardinality(String),
    EventName LowCardinality(String),
    Attribute LowCardinality(String),
    CharOffset UInt64,
    CharLength UInt32,
    SecretType LowCardinality(String),
    Fingerprint String,
    Redacted Bool,
    IngestedAt DateTime64(6) DEFAULT now64(6) CODEC(Delta, ZSTD(1))
) ENGINE = MergeTree
ORDER BY (Tenant, Timestamp, TraceId)
SETTINGS enable_block_number_column = 1, non_replicated_deduplication_window = 1000;
-- The store's fingerprint key: 32 random bytes in hex, made once here. Every receiver on the store reads
-- the first row, so one secret has one fingerprint across receivers. Whoever can read this table and a
-- fingerprint can test guesses of the value: grant SELECT on it to the receivers' user only.
CREATE TABLE IF NOT EXISTS {db}.secret_keys (
    Key String,
    CreatedAt DateTime64(3) DEFAULT now64(3)
) ENGINE = MergeTree
ORDER BY CreatedAt;
INSERT INTO {db}.secret_keys (Key) SELECT hex(randomString(32)) WHERE (SELECT count() FROM {db}.secret_keys) = 0
