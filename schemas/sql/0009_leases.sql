-- Leases: one holder at a time of a role (the alert dispatcher) among the processes on one store.
-- A claim inserts the next epoch with insert_deduplication_token '<role>:<epoch>': of two claims of the
-- same epoch, only the first row is stored (detectors/lease.py).
CREATE TABLE IF NOT EXISTS {db}.leases (
    Role LowCardinality(String),
    Epoch UInt64,
    Holder String,
    ExpiresAt DateTime64(3)
) ENGINE = MergeTree
ORDER BY (Role, Epoch)
TTL toDateTime(ExpiresAt) + INTERVAL 1 DAY
SETTINGS non_replicated_deduplication_window = 1000
