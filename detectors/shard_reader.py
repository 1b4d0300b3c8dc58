"""What one detector shard reads in a batch: its tenants' new rows of each tailed table, and what they need.

`ShardReader(shard, cluster).read(client, positions, max_rows)` returns the new
span rows (with their tool calls' argument hashes from otel_traces), credential
events (with the parent of the span a use without an agent happened on) and
secret findings of the shard's tenants, and where each table resumes.

Sharding: shard (k, N) takes tenants with cityHash64(Tenant) % N = k, filtered
in SQL. cross_tenant belongs to the actor's tenant, credential_fanout to the
credential's tenant. On one server a shard reads, from credential_events, the
events of both. On a cluster (`cluster`), credential_events is sharded by the
actor and the shard reads its node's local tables by part ranges
(part_tail.py): its actors' events from credential_events, and the events of
its tenants' credentials used by other shards' tenants from
credential_uses_by_owner (migration 0015).

    >>> ShardReader((1, 4)).table_filter("credential_uses_by_owner")
    ' AND cityHash64(Tenant) % 4 != 1 AND cityHash64(CredentialTenant) % 4 = 1'
"""

from __future__ import annotations

from dataclasses import dataclass

from clickhouse_connect.driver.client import Client

from agentwatch.detectors import secret_exposure
from agentwatch.detectors.part_tail import PartTail
from agentwatch.detectors.stream import CredentialRow, SpanRow
from agentwatch.detectors.tailing import Batch, Tail
from agentwatch.schemas.attributes import TOOL_ARGUMENTS_KEYS
from agentwatch.schemas.cluster import local

TABLES = ("agent_spans", "credential_events", secret_exposure.TABLE)
# On a cluster, the credential events of this shard's tenants' credentials used by other shards' tenants
# (schemas/sql/0015): credential_events is sharded by the actor.
OWNER_TABLE = "credential_uses_by_owner"
# a tool call's arguments, wherever its convention writes them (GenAI, OpenInference, OpenLLMetry)
TOOL_ARGUMENTS = ("coalesce(" + ", ".join(f"nullIf(SpanAttributes['{key}'], '')" for key in TOOL_ARGUMENTS_KEYS)
                  + ", '')")
ARGS_PREVIEW_CHARS = 300
CREDENTIAL_OWNER = "if(CredentialTenant != '', CredentialTenant, Tenant)"  # credential_fanout's tenant
# the batch's (trace, span) pairs: as a subquery, since a literal list of tuples gets slow past ~10k of them
IN_PAIRS = "(TraceId, SpanId) IN (SELECT arrayJoin({pairs:Array(Tuple(String, String))}))"
# SpanRow's columns in order, less the three tool-argument fields (read from otel_traces, inserted after CostUSD)
SPAN_COLUMNS = ("toUnixTimestamp64Micro(IngestedAt), toUnixTimestamp64Nano(Timestamp), TraceId, SpanId, ParentSpanId, "
                "Tenant, AgentId, AgentName, Operation, ToolName, Model, ifNull(CostUSD, 0), InputTokens, "
                "OutputTokens, CachedInputTokens, ReasoningTokens, Duration, StatusCode = 'Error'")
CREDENTIAL_COLUMNS = ("toUnixTimestamp64Micro(IngestedAt), toUnixTimestamp64Nano(Timestamp), TraceId, SpanId, "
                      "Tenant, AgentId, Event, CredentialId, CredentialTenant, Resource, ResourceTenant, Action")


@dataclass
class ShardBatch:
    spans: list[SpanRow]
    credentials: list[CredentialRow]  # in the order to process them
    secrets: list[secret_exposure.SecretRow]
    rows: dict[str, int]  # rows read per table
    to: dict  # table -> where it resumes


class ShardReader:
    def __init__(self, shard: tuple[int, int] = (0, 1), cluster: str = "") -> None:
        self.shard = shard
        self.tails = ({table: PartTail(local(table)) for table in TABLES + (OWNER_TABLE,)} if cluster
                      else {table: Tail(table) for table in TABLES})

    def read(self, client: Client, positions: dict, max_rows: int) -> ShardBatch:
        spans, to = self.spans(client, positions["agent_spans"], max_rows)
        to = {"agent_spans": to}
        credentials: dict[str, list[CredentialRow]] = {}
        for table in (t for t in ("credential_events", OWNER_TABLE) if t in self.tails):
            credentials[table], to[table] = self.credentials(client, table, positions[table], max_rows)
        secrets, to[secret_exposure.TABLE] = secret_exposure.read(
            self.tails[secret_exposure.TABLE], client, positions[secret_exposure.TABLE], max_rows,
            self.table_filter(secret_exposure.TABLE))
        in_order = credentials["credential_events"]
        if OWNER_TABLE in credentials:  # on a cluster: the two tables' events in event order
            in_order = sorted(in_order + credentials[OWNER_TABLE], key=lambda r: (
                r.ts, r.trace, r.span, r.event, r.credential, r.agent_id, r.resource))
        rows = {"agent_spans": len(spans), secret_exposure.TABLE: len(secrets)}
        rows.update((table, len(read)) for table, read in credentials.items())
        return ShardBatch(spans, in_order, secrets, rows, to)

    def shard_filter(self, expression: str) -> str:
        k, n = self.shard
        return "" if n == 1 else f" AND cityHash64({expression}) % {n} = {k}"

    def table_filter(self, table: str) -> str:
        """The SQL (` AND ...`) that keeps this shard's rows of `table`."""
        k, n = self.shard
        if table == OWNER_TABLE:  # the uses by other shards' tenants (this shard's own are in credential_events)
            return f" AND cityHash64(Tenant) % {n} != {k} AND cityHash64(CredentialTenant) % {n} = {k}"
        if table != "credential_events" or OWNER_TABLE in self.tails:  # on a cluster: the actor's tenants
            return self.shard_filter("Tenant")
        return "" if n == 1 else (f" AND (cityHash64(Tenant) % {n} = {k} "
                                  f"OR cityHash64({CREDENTIAL_OWNER}) % {n} = {k})")

    def spans(self, client: Client, position, max_rows: int) -> tuple[list[SpanRow], int | dict]:
        """The next span rows after `position`, and where to resume."""
        shard = self.shard_filter("Tenant")
        batch = self.tails["agent_spans"].read(
            client, position, SPAN_COLUMNS, "Timestamp, TraceId, SpanId", max_rows, shard)
        if not batch.rows:
            return [], batch.position
        arguments = self._tool_arguments(client, batch)
        out = []
        for r in batch.rows:
            args = arguments.get((r[3], r[4])) if r[9] == "execute_tool" else None
            out.append(SpanRow(*r[1:13], *(args or (0, 0, "")), *r[13:]))
        return out, batch.position

    def _tool_arguments(self, client: Client, batch: Batch) -> dict[tuple[str, str], tuple[int, int, str]]:
        """(trace, span) -> (cityHash64, bytes, preview) of the arguments of the batch's tool spans."""
        tools = [(r[3], r[4]) for r in batch.rows if r[9] == "execute_tool"]
        if not tools:
            return {}
        tool_ts = [r[2] for r in batch.rows if r[9] == "execute_tool"]
        result = client.query(
            f"SELECT TraceId, SpanId, cityHash64(a), length(a), substringUTF8(a, 1, {ARGS_PREVIEW_CHARS}) FROM ("
            f"SELECT TraceId, SpanId, {TOOL_ARGUMENTS} AS a FROM otel_traces "
            "WHERE Timestamp >= fromUnixTimestamp64Nano({lo:Int64}) "
            "AND Timestamp <= fromUnixTimestamp64Nano({hi:Int64}) "
            f"AND TraceId IN {{traces:Array(String)}} AND {IN_PAIRS}"
            ") WHERE a != ''",
            parameters={"lo": min(tool_ts), "hi": max(tool_ts), "traces": sorted({t for t, _ in tools}),
                        "pairs": tools}).result_rows
        return {(r[0], r[1]): (int(r[2]) or 1, int(r[3]), r[4]) for r in result}

    def credentials(self, client: Client, table: str, position,
                    max_rows: int) -> tuple[list[CredentialRow], int | dict]:
        """The next credential events of `table` after `position`, and where to resume."""
        k, n = self.shard
        mine = ("0, 1" if table == OWNER_TABLE else "1, 1" if n == 1
                else f"cityHash64(Tenant) % {n} = {k}, cityHash64({CREDENTIAL_OWNER}) % {n} = {k}")
        batch = self.tails[table].read(
            client, position, f"{CREDENTIAL_COLUMNS}, {mine}",
            "Timestamp, TraceId, SpanId, Event, CredentialId, AgentId, Resource", max_rows, self.table_filter(table))
        if not batch.rows:
            return [], batch.position
        parents = self._parents(client, [(r[3], r[4]) for r in batch.rows if not r[6]], [r[2] for r in batch.rows])
        return [CredentialRow(*r[1:13], bool(r[13]), bool(r[14]), parents.get((r[3], r[4]), ""))
                for r in batch.rows], batch.position

    def _parents(self, client: Client, spans: list[tuple[str, str]], ts: list[int]) -> dict[tuple[str, str], str]:
        """(trace, span) -> parent span, for the spans credential uses without an agent happened on."""
        if not spans:
            return {}
        rows = client.query(
            "SELECT TraceId, SpanId, ParentSpanId FROM agent_spans "
            "WHERE Timestamp >= fromUnixTimestamp64Nano({lo:Int64}) - toIntervalDay(1) "
            "AND Timestamp <= fromUnixTimestamp64Nano({hi:Int64}) "
            f"AND TraceId IN {{traces:Array(String)}} AND {IN_PAIRS}",
            parameters={"lo": min(ts), "hi": max(ts), "traces": sorted({t for t, _ in spans}),
                        "pairs": spans}).result_rows
        return {(r[0], r[1]): r[2] for r in rows}
