-- The credential events whose credential belongs to another tenant than the actor's, a second time, for the
-- credential's owner. credential_fanout is the owner's detector (how widely its credential is used) while
-- credential_events is kept, and on a cluster sharded, by the actor: detector shard k on a cluster reads
-- only its own shard's tables, so it finds its tenants' credentials used by other shards' tenants here
-- (sharded by CredentialTenant). On one server the worker reads both sides from credential_events and
-- this table is a small copy of the cross-tenant events. Events stored before this migration are not copied.
-- The columns are spelled out rather than taken `AS credential_events`: this table keeps the shape it was
-- created with whatever later migrations do to that one.
CREATE TABLE IF NOT EXISTS {db}.credential_uses_by_owner (
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
    IngestedAt DateTime64(6) CODEC(Delta, ZSTD(1))
) ENGINE = MergeTree
PARTITION BY toDate(Timestamp)
ORDER BY (CredentialTenant, Timestamp)
SETTINGS enable_block_number_column = 1, non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.credential_uses_by_owner_mv TO {db}.credential_uses_by_owner AS
SELECT Timestamp, TraceId, SpanId, Tenant, AgentId, Event, CredentialId, CredentialTenant, Scope, Resource,
       ResourceTenant, Action, IngestedAt
FROM {db}.credential_events
WHERE CredentialTenant != '' AND CredentialTenant != Tenant
