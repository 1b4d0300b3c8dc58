"""The words the components share, defined once: anomaly kinds, model
operations, severities, anomaly statuses and what makes a credential use
cross-tenant.

Components talk to each other only through ClickHouse tables (DESIGN.md),
so they have to agree on the values in them: the detectors write `Kind`,
`Severity` and `Status` into `anomalies`, the alert sinks render them, the
dashboard filters, orders and counts by them, and the detectors and the
dashboard must flag the same credential uses as cross-tenant. Every
component imports these names from here instead of keeping its own list.

The values are stored in the tables and sent in alert JSON, so they are
public: rename one only with a migration.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

# --- anomaly kinds -----------------------------------------------------------------------------------
# `anomalies.Kind` holds one of these. Kinds whose detector is not written yet are listed as well:
# DESIGN.md names them, and the dashboard and the alert sinks must handle every kind a detector may write.
# Read-only mapping, in DESIGN.md's order: kind -> one line a person reads.
ANOMALY_KINDS: Mapping[str, str] = MappingProxyType({
    "fanout": "an agent forks far more sub-agents or model calls in one trace than its kind normally does",
    "cost_spike": "a tenant or agent spends far more per minute than its learned normal or its budget",
    "cross_tenant": "an agent uses another tenant's credential or touches another tenant's resource",
    "credential_fanout": "one credential is used by far more distinct agents within minutes than it normally is",
    "loop": "an agent calls the same tool with the same arguments over and over in one trace",
    "novel_trace": "a finished trace unlike any its agent kind has made",
    "secret_exposure": "credential material found in a captured payload",
    "budget_forecast": "a tenant on course to pass its budget",
})

# Kinds raised from agent_spans while the condition lasts and resolved after a quiet period of event time.
SPAN_KINDS = ("fanout", "cost_spike", "loop")
# Kinds about one credential, raised from credential_events; their evidence names it (`credential_id`).
CREDENTIAL_KINDS = ("cross_tenant", "credential_fanout")


def describe_kind(kind: str) -> str:
    """The one-line description of a kind ('' for a kind this version does not know).

    >>> describe_kind("loop")
    'an agent calls the same tool with the same arguments over and over in one trace'
    """
    return ANOMALY_KINDS.get(kind, "")


# --- operations (`gen_ai.operation.name`, `agent_spans.Operation`) ----------------------------------
# The OpenTelemetry GenAI semantic conventions' names. A model call is what costs tokens: the
# `ModelCalls` columns, the detectors' call counts and the replay's prompt/answer steps all count these.
# The rollups of schemas/sql/0004 spell the same list out in SQL (a migration cannot import it).
MODEL_OPERATIONS = ("chat", "text_completion", "generate_content", "embeddings")
INVOKE_AGENT_OPERATION = "invoke_agent"  # one agent run: the nodes of a trace's agent tree
AGENT_OPERATIONS = (INVOKE_AGENT_OPERATION, "create_agent")
TOOL_OPERATION = "execute_tool"


def sql_list(values: Iterable[str]) -> str:
    """A tuple of string literals for SQL `IN`.

    >>> sql_list(MODEL_OPERATIONS)
    "('chat', 'text_completion', 'generate_content', 'embeddings')"
    """
    quoted = ("'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'" for v in values)
    return "(" + ", ".join(quoted) + ")"


# --- severities ------------------------------------------------------------------------------------
# Least severe first. An anomaly's severity only rises while it is open, an alert is escalated when it
# rises, and lists show the most severe first: all three compare by `severity_rank`.
SEVERITIES = ("info", "warning", "critical")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}
# '' is "no severity yet" (below info). A word this version does not know (a newer detector's) ranks as a
# warning: neither lost at the bottom of a list nor paging anyone as critical.
_UNKNOWN_RANK = _RANK["warning"]


def severity_rank(severity: str) -> int:
    """Position of a severity in SEVERITIES, for comparing and sorting.

    >>> [severity_rank(s) for s in ("", "info", "warning", "critical", "fatal")]
    [-1, 0, 1, 2, 1]
    """
    if not severity:
        return -1
    return _RANK.get(severity, _UNKNOWN_RANK)


def max_severity(a: str, b: str) -> str:
    """The more severe of two (the first on a tie).

    >>> max_severity("warning", "critical"), max_severity("info", "")
    ('critical', 'info')
    """
    return a if severity_rank(a) >= severity_rank(b) else b


def severity_rank_sql(column: str = "Severity") -> str:
    """The ClickHouse expression that computes `severity_rank` of a column."""
    known = "[" + ", ".join(f"'{s}'" for s in SEVERITIES) + "]"
    return f"if(indexOf({known}, {column}) > 0, indexOf({known}, {column}) - 1, if({column} = '', -1, {_UNKNOWN_RANK}))"


# --- anomaly statuses (`anomalies.Status`) ----------------------------------------------------------
# A detector writes open and resolved; a person acknowledges or resolves.
ANOMALY_STATUSES = ("open", "acknowledged", "resolved")
UNRESOLVED_STATUSES = ("open", "acknowledged")  # what the on-call still has to look at

# --- cross-tenant credential use --------------------------------------------------------------------
# A use (credential_events.Event = 'use') is cross-tenant when the actor's tenant touches another
# tenant's credential or another tenant's resource. An empty CredentialTenant or ResourceTenant means
# the instrumentation did not state it: that is missing evidence, not evidence of a crossing, so on its
# own it never makes a use cross-tenant (otherwise every use from an SDK that leaves the owner unset would
# be flagged). The detector, the dashboard and anything else that counts such uses go through the
# predicate or the SQL expression below, which a test keeps in agreement case by case.
CROSS_TENANT_RULE = ("credential tenant stated and not the actor's, or resource tenant stated and not the "
                     "actor's (an empty tenant is not stated, not a crossing)")


def is_cross_tenant(actor_tenant: str, credential_tenant: str, resource_tenant: str) -> bool:
    """Whether a credential use by `actor_tenant` crosses into another tenant.

    >>> is_cross_tenant("acme", "globex", "")        # another tenant's credential
    True
    >>> is_cross_tenant("acme", "acme", "globex")    # own credential, another tenant's resource
    True
    >>> is_cross_tenant("acme", "acme", "acme")
    False
    >>> is_cross_tenant("acme", "", "")              # owner and resource not stated
    False
    >>> is_cross_tenant("acme", "", "globex")
    True
    """
    return credential_tenant not in ("", actor_tenant) or resource_tenant not in ("", actor_tenant)


def cross_tenant_sql(actor: str = "Tenant", credential: str = "CredentialTenant",
                     resource: str = "ResourceTenant") -> str:
    """`is_cross_tenant` as a ClickHouse expression over three String columns (or expressions)."""
    return (f"(({credential} != '' AND {credential} != {actor}) "
            f"OR ({resource} != '' AND {resource} != {actor}))")


# Over credential_events' columns; CROSS_TENANT_USE_SQL also requires the row to be a use.
CROSS_TENANT_SQL = cross_tenant_sql()
CROSS_TENANT_USE_SQL = f"(Event = 'use' AND {CROSS_TENANT_SQL})"

# --- containment (`halts`) ----------------------------------------------------------------------------
# A halt stops the calls of a trace, of one agent (everywhere it runs) or of a whole tenant; a release lifts
# it. The latest decision per (Tenant, Scope, Target) is the one in force. `Calls` says which calls a halt
# stops: every model call, tool call and agent start ('all'), or model calls only ('model', what a tenant
# over its budget gets: the money stops, the agents may still finish what costs nothing).
HALT_SCOPES = ("trace", "agent", "tenant")
HALT_ACTIONS = ("halt", "release")
HALT_CALLS = ("all", "model")
POLICY_DECIDER = "policy"  # `halts.DecidedBy` of the detectors' containment policy; a person's is 'cli:<user>'
DASHBOARD_DECIDER = "dashboard:"  # `halts.DecidedBy` of a person acting in the dashboard: 'dashboard:<viewer name>'

# --- audit log (`audit_log.Action`) -----------------------------------------------------------------------
# Who did what with the fleet's data: signed in, opened a trace or a payload, changed an anomaly's status,
# halted or released, created or revoked an API key. Rows are appended and never changed.
AUDIT_SIGN_IN = "sign_in"
AUDIT_TRACE_OPENED = "trace_opened"
AUDIT_PAYLOAD_OPENED = "payload_opened"
AUDIT_ANOMALY_STATUS = {"acknowledged": "anomaly_acknowledged", "resolved": "anomaly_resolved",
                        "open": "anomaly_reopened"}  # by the anomaly's new status
AUDIT_HALT = "halt"
AUDIT_RELEASE = "release"
AUDIT_KEY_CREATED = "api_key_created"
AUDIT_KEY_REVOKED = "api_key_revoked"
AUDIT_TENANT_DELETED = "tenant_deleted"  # `agentwatch tenant delete`: every row of the tenant removed
AUDIT_ACTIONS = (AUDIT_SIGN_IN, AUDIT_TRACE_OPENED, AUDIT_PAYLOAD_OPENED, *AUDIT_ANOMALY_STATUS.values(), AUDIT_HALT,
                 AUDIT_RELEASE, AUDIT_KEY_CREATED, AUDIT_KEY_REVOKED, AUDIT_TENANT_DELETED)

# --- retention (`AGENTWATCH_RETENTION_<CLASS>_DAYS`, `retention_ttls.DataClass`) ---------------------------
# The classes of stored data, each kept for its own number of days (0: forever); schemas/retention.py says
# which tables and columns belong to each. Read-only mapping: class -> what it holds.
RETENTION_CLASSES: Mapping[str, str] = MappingProxyType({
    "payload": "captured text: raw OTel span and log rows, and the short attribute values the replay index copies",
    "spans": "typed span and credential rows, the replay index and the per-minute, per-hour and per-trace rollups",
    "metrics": "OTel metric points (GPU and others)",
    "anomalies": "anomalies, their alert deliveries and the secret findings (type, fingerprint) behind them",
    "audit": "the audit log",
})
