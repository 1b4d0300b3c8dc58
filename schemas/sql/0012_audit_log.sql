-- The audit log: who signed in to the dashboard, opened which trace and which payload, acknowledged,
-- resolved or reopened which anomaly, halted or released what, created or revoked which API key.
-- Appended, never updated (plain MergeTree): schemas/audit.py writes and reads it. Kept whole by
-- `tenant delete`; kept forever unless the audit retention class says otherwise (schemas/retention.py).
-- Actor: 'dashboard:<name>' for a person in the dashboard (the name sign-in gives), 'cli:<os user>' for a command.
-- Role: the actor's dashboard role (viewer | responder | admin; '' for the command line).
-- Action: one of the vocabulary's AUDIT_ACTIONS. Tenant: the tenant of the object ('' when none).
-- Target: its id (trace id, anomaly id, 'trace/span/key' of a payload, halt target, API key hash).
-- Detail: JSON with the rest (the new status, a halt's scope and reason, a key's name).
CREATE TABLE IF NOT EXISTS {db}.audit_log (
    At DateTime64(6),
    Actor String,
    Role LowCardinality(String),
    Action LowCardinality(String),
    Tenant LowCardinality(String),
    Target String,
    Detail String
) ENGINE = MergeTree
PARTITION BY toYYYYMM(At)
ORDER BY (At, Actor)
