-- Containment decisions: one row per decision to halt or release a trace, an agent or a whole tenant,
-- appended and never rewritten, so the table is also the record of who stopped what, when and why.
-- The row in force for a (Tenant, Scope, Target) is its latest (DecidedAt, then HaltId): schemas/halts.py
-- reads it with LIMIT 1 BY. Written by the detectors' containment policy (DecidedBy 'policy', with the
-- anomaly that made it) and by people (`agentwatch halt|release`, DecidedBy 'cli:<user>').
-- Scope: trace | agent | tenant; Target: the trace id, the agent id or the tenant; Action: halt | release;
-- Calls: all (model calls, tool calls, agent starts) | model (model calls only). Severity, AgentId, TraceId
-- and Summary are the anomaly's at the time of the decision (what an SDK shows in AgentHalted).
CREATE TABLE IF NOT EXISTS {db}.halts (
    HaltId String,
    DecidedAt DateTime64(6),
    Tenant LowCardinality(String),
    Scope LowCardinality(String),
    Target String,
    Action LowCardinality(String),
    Calls LowCardinality(String),
    AnomalyId String,
    Kind LowCardinality(String),
    Severity LowCardinality(String),
    AgentId String,
    TraceId String,
    Summary String,
    Reason String,
    DecidedBy String
) ENGINE = MergeTree
ORDER BY (Tenant, Scope, Target, DecidedAt)
