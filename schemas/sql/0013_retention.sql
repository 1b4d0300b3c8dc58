-- Retention in force: one row per table TTL (ColumnName '') and per payload column TTL that agentwatch set
-- from the AGENTWATCH_RETENTION_<CLASS>_DAYS settings. schemas/retention.py applies them at start with
-- ALTER TABLE ... MODIFY TTL (or REMOVE TTL once a setting goes back to 0, keep forever), and only when a
-- setting differs from the row here: a TTL change rewrites a table's parts, so it is never repeated.
-- Days 0 with an empty Expression: the TTL was removed.
CREATE TABLE IF NOT EXISTS {db}.retention_ttls (
    TableName String,
    ColumnName String,
    DataClass LowCardinality(String),
    Days UInt32,
    Expression String,
    AppliedAt DateTime64(6) DEFAULT now64(6)
) ENGINE = ReplacingMergeTree(AppliedAt)
ORDER BY (TableName, ColumnName)
