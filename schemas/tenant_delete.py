"""Deleting a tenant: every row of it, from every table that holds any (`agentwatch tenant delete TENANT`).

The tables are found in system.columns when the command runs, not listed here, so a table a
later migration adds is covered by what its columns say:

- a `Tenant` column: the rows of the tenant (typed spans, credential events, rollups, anomalies,
  halts, API keys, secret findings, ...). Rollups are per tenant, so their rows go whole;
- OTel attribute maps (`ResourceAttributes`): raw span, log and metric rows whose tenant, read
  as the typed views read it (the row's own attribute, else its resource's, else 'default'), is it;
- no tenant, but a trace and span (`TraceId`, `SpanId`; the replay index): the rows of the
  tenant's spans; a trace only (`TraceId`; trace start/end): the traces no other tenant has spans in;
- no tenant, but an anomaly (`AnomalyId`; alert deliveries): the rows of the tenant's anomalies.

Tables with none of these hold no tenant's data (migrations, leases, prices, retention) and
are left alone. The detectors' checkpoints (`detector_state`) hold learned models: per-tenant
aggregates (rates, counts, the trace ids of a few open cases), never payload text. They are
not rewritten here; emptying `detector_state` while the detectors are stopped removes them,
and the detectors then learn every tenant afresh. `audit_log` is kept whole: it is the record of who did what
to the tenant's data, and this deletion is added to it.

Rows go with ALTER TABLE ... DELETE (a mutation that rewrites the parts, so the data is gone
from disk, not only hidden) and `mutations_sync = 2`: the command returns once every replica has
done it. On a cluster each statement runs ON CLUSTER on the local tables (schemas/cluster.py).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from clickhouse_connect.driver.client import Client

from agentwatch.schemas import audit
from agentwatch.schemas import cluster as cluster_form
from agentwatch.schemas.attributes import DEFAULT_TENANT, TENANT_ID
from agentwatch.schemas.vocabulary import AUDIT_TENANT_DELETED, sql_list

log = logging.getLogger(__name__)

# The tenant's API keys go first: its agents are refused (once receivers reload their keys) while the rest goes.
FIRST = ("api_keys",)
# Tables with a tenant column that the deletion keeps, and why.
KEPT = {"audit_log": "the record of who did what with the tenant's data, this deletion included"}
OWN_ATTRIBUTES = ("SpanAttributes", "LogAttributes", "Attributes")  # a raw row's own map, before its resource's
# Mutations whose condition reads another table (the tenant's spans, its anomalies) are refused on
# Replicated tables unless allowed: those tables do not change under the deletion.
CLUSTER_SETTINGS = {**cluster_form.SETTINGS, "allow_nondeterministic_mutations": 1}


@dataclass(frozen=True)
class Scope:
    """How one table's rows of a tenant are found: `condition` is SQL over the table's columns."""

    table: str
    how: str  # "tenant" | "attributes" | "spans" | "traces" | "anomalies"
    condition: str
    order: int  # tables keyed through another table's rows go before that table's rows do


@dataclass(frozen=True)
class Deleted:
    table: str
    how: str
    rows: int


def scopes(columns: dict[str, set[str]], tenant: str, database: str) -> tuple[list[Scope], list[str]]:
    """(the tables holding rows of `tenant`, how; the tables holding no tenant's rows), from each table's columns."""
    t, db = sql_list([tenant]), f"`{database}`"
    spans_of_tenant = f"SELECT TraceId, SpanId FROM {db}.agent_spans WHERE Tenant IN {t}"
    spans_of_tenant_at = f"SELECT TraceId, SpanId, Timestamp FROM {db}.agent_spans WHERE Tenant IN {t}"
    found, untouched = [], []
    for table in sorted(columns):
        names = columns[table]
        if table in KEPT:
            untouched.append(table)
        elif "Tenant" in names:
            found.append(Scope(table, "tenant", f"Tenant IN {t}", -1 if table in FIRST else 1))
        elif "ResourceAttributes" in names:
            own = next((m for m in OWN_ATTRIBUTES if m in names), None)
            read = ([f"nullIf({own}['{TENANT_ID}'], '')"] if own else []) + [
                f"nullIf(ResourceAttributes['{TENANT_ID}'], '')", f"'{DEFAULT_TENANT}'"]
            found.append(Scope(table, "attributes", f"coalesce({', '.join(read)}) IN {t}", 1))
        elif {"TraceId", "SpanId", "Timestamp"} <= names:
            # Another tenant may export a span under the same trace and span id (both travel in trace
            # context headers): the start time pins the tenant's own row.
            found.append(Scope(table, "spans", f"(TraceId, SpanId, Timestamp) IN ({spans_of_tenant_at})", 0))
        elif {"TraceId", "SpanId"} <= names:
            found.append(Scope(table, "spans", f"(TraceId, SpanId) IN ({spans_of_tenant})", 0))
        elif "TraceId" in names:
            found.append(Scope(table, "traces",
                               f"TraceId IN (SELECT TraceId FROM {db}.agent_spans WHERE Tenant IN {t}) AND TraceId "
                               f"NOT IN (SELECT TraceId FROM {db}.agent_spans WHERE Tenant NOT IN {t})", 0))
        elif "AnomalyId" in names:
            found.append(Scope(table, "anomalies",
                               f"AnomalyId IN (SELECT AnomalyId FROM {db}.anomalies WHERE Tenant IN {t})", 0))
        else:
            untouched.append(table)
    return sorted(found, key=lambda s: (s.order, s.table)), untouched


def statements(scope: Scope, database: str, cluster: str = "") -> list[str]:
    """The ALTER TABLE ... DELETE for one table, rendered for the cluster when given."""
    statement = f"ALTER TABLE `{database}`.{scope.table} DELETE WHERE {scope.condition}"
    return cluster_form.render([statement], database, cluster) if cluster else [statement]


def table_columns(client: Client, database: str, cluster: str = "") -> dict[str, set[str]]:
    """Each table's columns (on a cluster: the local tables', by their public names)."""
    suffix = cluster_form.LOCAL_SUFFIX if cluster else ""
    rows = client.query(
        "SELECT table, groupArray(name) FROM system.columns WHERE database = {d:String} AND table IN "
        "(SELECT name FROM system.tables WHERE database = {d:String} AND endsWith(engine, 'MergeTree')) GROUP BY table",
        parameters={"d": database}).result_rows
    return {table.removesuffix(suffix): set(names) for table, names in rows if table.endswith(suffix)}


def count(client: Client, tenant: str, database: str | None = None, cluster: str | None = None) -> list[Deleted]:
    """The rows of `tenant` each table holds now (what `delete` would remove), tables without any left out."""
    database = database or client.database
    cluster = _cluster(cluster)
    found, _ = scopes(table_columns(client, database, cluster), tenant, database)
    counted = [Deleted(s.table, s.how, _count(client, database, s, cluster)) for s in found]
    return [c for c in counted if c.rows]


def delete(client: Client, tenant: str, actor: str, database: str | None = None,
           cluster: str | None = None) -> list[Deleted]:
    """Remove every row of `tenant`; returns the rows removed per table (all tables, zeros included).

    The audit log gets one entry for the deletion, by `actor`, with the counts. Raises if any row of
    the tenant is still there afterwards.
    """
    if not tenant:
        raise ValueError("name the tenant to delete")
    database = database or client.database
    cluster = _cluster(cluster)
    found, _ = scopes(table_columns(client, database, cluster), tenant, database)
    # Counted first: the keyed tables' conditions read rows that are deleted later.
    deleted = [Deleted(s.table, s.how, _count(client, database, s, cluster)) for s in found]
    settings = CLUSTER_SETTINGS if cluster else {}
    for scope, removed in zip(found, deleted):
        if removed.rows:
            for statement in statements(scope, database, cluster):
                client.command(statement, settings={**settings, "mutations_sync": 2})
            log.info("tenant %s: %d rows deleted from %s", tenant, removed.rows, scope.table)
    left = {s.table: n for s in found if (n := _count(client, database, s, cluster))}
    if left:
        raise RuntimeError(f"rows of tenant {tenant!r} are stored after the deletion: {left}; sent meanwhile? "
                           "its API keys are gone, so once the receivers reload theirs (10 s) run it again")
    _record(client, actor, tenant, deleted)
    return deleted


def _count(client: Client, database: str, scope: Scope, cluster: str) -> int:
    # On a cluster the count reads the Distributed tables, and so do its subqueries: GLOBAL IN, once.
    settings = {"distributed_product_mode": "global"} if cluster else None
    return client.query(f"SELECT count() FROM `{database}`.{scope.table} WHERE {scope.condition}",
                        settings=settings).result_rows[0][0]


def _cluster(cluster: str | None) -> str:
    return os.environ.get("AGENTWATCH_CLICKHOUSE_CLUSTER", "") if cluster is None else cluster


def _record(client: Client, actor: str, tenant: str, deleted: list[Deleted]) -> None:
    audit.record(client, actor, AUDIT_TENANT_DELETED, tenant=tenant, target=tenant,
                 detail={"rows": {d.table: d.rows for d in deleted if d.rows}, "total": sum(d.rows for d in deleted)})
