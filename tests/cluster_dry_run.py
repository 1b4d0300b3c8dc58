"""The cluster rendering run on one embedded shard: `python -m tests.cluster_dry_run DIR` prints JSON.

The embedded engine runs neither Keeper nor the distributed DDL queue, so two
things of the cluster rendering cannot run here: `ON CLUSTER` and the
Replicated engines. The client below strips exactly those from each statement
(a Replicated engine becomes its single-node twin, same arguments less the
Keeper path and replica); everything else runs as rendered, through
`migrate.apply` itself: Distributed tables over the `_local` ones on a cluster
of one shard (this process, defined in a config file), the views on the local
tables, the re-sharding views writing through a Distributed table, the
backfills and schema_migrations through the Distributed names. Then spans go
into `otel_traces` the way the receiver writes them (JSONEachRow, with a
deduplication token) and what every table holds is read back by its public name.

It runs in its own process: the engine allows one data path per process, and
the tests' own store is already open in theirs.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import clickhouse_connect

from agentwatch.schemas import cluster, migrate

CLUSTER = "dry"
DATABASE = "agentwatch"
# tcp_port names this process as the shard's host (is_local); the embedded engine never listens on it.
CONFIG = f"""<clickhouse>
  <tcp_port>9000</tcp_port>
  <remote_servers>
    <{CLUSTER}>
      <shard><internal_replication>true</internal_replication>
        <replica><host>localhost</host><port>9000</port></replica></shard>
    </{CLUSTER}>
  </remote_servers>
  <macros><shard>01</shard><replica>r1</replica></macros>
</clickhouse>
"""
_ON_CLUSTER = re.compile(rf" ON CLUSTER '{CLUSTER}'")
_REPLICATED = re.compile(r"Replicated(\w*MergeTree)\('/clickhouse/tables/\{shard\}/[^']+', '\{replica\}'(?:, )?")
TABLES = ("otel_traces", "otel_traces_trace_id_ts", "trace_span_index", "agent_spans", "credential_events",
          "credential_uses_by_owner", "agent_minutes", "agent_hours", "trace_summaries")


class OneShard:
    """A client that runs cluster statements on a one-shard cluster without Keeper."""

    def __init__(self, client) -> None:
        self.client = client
        self.database = client.database
        self.statements: list[str] = []

    def command(self, sql: str, **kwargs):
        single = _REPLICATED.sub(r"\1(", _ON_CLUSTER.sub("", sql))
        self.statements.append(single)
        return self.client.command(single, **kwargs)

    def __getattr__(self, name):
        return getattr(self.client, name)


def spans() -> list[dict]:
    """Two tenants' traces as the receiver writes them: a model call, and a tool call using a credential."""
    def span(trace: str, span_id: str, tenant: str, name: str, attributes: dict, events: list) -> dict:
        return {"Timestamp": "2026-01-05 12:00:01.000000000", "TraceId": trace, "SpanId": span_id,
                "ParentSpanId": "", "SpanName": name, "SpanKind": "Internal", "ServiceName": f"{tenant}-bot",
                "ResourceAttributes": {"agentwatch.tenant.id": tenant},
                "SpanAttributes": {"gen_ai.agent.id": f"{tenant}-agent", **attributes},
                "Duration": 1_000_000, "StatusCode": "Ok",
                "Events.Timestamp": [e[0] for e in events], "Events.Name": [e[1] for e in events],
                "Events.Attributes": [e[2] for e in events]}
    use = ("2026-01-05 12:00:01.500000000", "agentwatch.credential.use",
           {"agentwatch.credential.id": "github-7", "agentwatch.credential.tenant.id": "acme",
            "agentwatch.resource.name": "repo:globex/api", "agentwatch.resource.tenant.id": "globex",
            "agentwatch.credential.action": "read"})
    # globex's agent with acme's credential: a use for acme (the owner) to see, copied to credential_uses_by_owner
    borrowed = (use[0], use[1], {**use[2], "agentwatch.resource.name": "repo:acme/api",
                                 "agentwatch.resource.tenant.id": "acme"})
    chat = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": "100",
            "gen_ai.usage.output_tokens": "20", "agentwatch.cost.usd": "0.5"}
    return [span("a" * 32, "1" * 16, "acme", "chat gpt-4o", chat, []),
            span("a" * 32, "2" * 16, "acme", "execute_tool search", {"gen_ai.operation.name": "execute_tool"}, [use]),
            span("b" * 32, "3" * 16, "globex", "chat gpt-4o", chat, []),
            span("b" * 32, "4" * 16, "globex", "execute_tool deploy", {"gen_ai.operation.name": "execute_tool"},
                 [borrowed])]


def run(directory: Path) -> dict:
    (directory / "config.xml").write_text(CONFIG)
    raw = clickhouse_connect.get_client(interface="chdb", path=str(directory / "data"),
                                        chdb_options={"config-file": str(directory / "config.xml")})
    raw.command(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
    raw.database = DATABASE
    client = OneShard(raw)
    report: dict = {"applied": migrate.apply(client, DATABASE, cluster=CLUSTER),
                    "applied_again": migrate.apply(client, DATABASE, cluster=CLUSTER)}
    try:
        migrate.apply(client, DATABASE, cluster="")
        report["single_server_refused"] = False
    except RuntimeError:
        report["single_server_refused"] = True
    report["engines"] = dict(raw.query("SELECT name, engine FROM system.tables WHERE database = {d:String}",
                                       parameters={"d": DATABASE}).result_rows)
    # Replicated tables deduplicate inserts by default; their single-node twins here need a window for it.
    for table in report["engines"]:
        if table.endswith(cluster.LOCAL_SUFFIX):
            raw.command(f"ALTER TABLE {table} MODIFY SETTING non_replicated_deduplication_window = 1000")
    body = "\n".join(json.dumps(row) for row in spans()).encode()
    for _ in range(2):  # a batch repeated with its token, as the receiver does after a crash
        raw.raw_insert("otel_traces", None, insert_block=body, fmt="JSONEachRow",
                       settings={"insert_deduplication_token": "spool-1-1", **cluster.SETTINGS})
    report["rows"] = {t: raw.command(f"SELECT count() FROM {t}") for t in TABLES}
    report["local_rows"] = {t: raw.command(f"SELECT count() FROM {cluster.local(t)}") for t in TABLES}
    report["tenants"] = sorted(r[0] for r in raw.query("SELECT DISTINCT Tenant FROM agent_spans").result_rows)
    report["credential_uses"] = raw.query("SELECT Tenant, CredentialId, ResourceTenant FROM credential_events "
                                          "ORDER BY Tenant").result_rows
    report["uses_by_owner"] = raw.query("SELECT CredentialTenant, Tenant, CredentialId FROM credential_uses_by_owner"
                                        ).result_rows
    report["minutes"] = raw.query("SELECT Tenant, sum(Spans), sum(ModelCalls), sum(CostUSD) FROM agent_minutes "
                                  "GROUP BY Tenant ORDER BY Tenant").result_rows
    report.update(detect(raw))
    return report


class Unclosed:
    def __init__(self, client) -> None:
        self.client = client

    def close(self) -> None:
        pass

    def __getattr__(self, name):
        return getattr(self.client, name)


def detect(raw) -> dict:
    """The detector worker in cluster mode: its shard's local tables, by part ranges, on this node."""
    from agentwatch.detectors.cluster_shard import WrongShard
    from agentwatch.detectors.config import DetectorConfig
    from agentwatch.detectors.worker import DetectorWorker

    raw.set_client_setting("distributed_foreground_insert", 1)  # what cluster-users.xml's profile sets
    out: dict = {}
    try:  # a worker refused closes its connection: give it one whose close leaves the process's client open
        DetectorWorker(lambda: Unclosed(raw), DetectorConfig(), shard=(1, 2), cluster=CLUSTER).client
    except WrongShard as exc:
        out["wrong_shard"] = str(exc)
    worker = DetectorWorker(lambda: raw, DetectorConfig(), shard=(0, 1), cluster=CLUSTER)
    out["tails"] = sorted(tail.table for tail in worker.tails.values())
    out["detected_rows"] = worker.catch_up()
    out["audit"] = worker.audit()
    out["anomalies"] = raw.query("SELECT Kind, Tenant FROM anomalies FINAL ORDER BY Kind, Tenant").result_rows
    out["checkpoints"] = raw.command("SELECT count() FROM detector_state_local")
    restarted = DetectorWorker(lambda: raw, DetectorConfig(), shard=(0, 1), cluster=CLUSTER)
    out["read_again_after_restart"] = restarted.catch_up()
    return out


if __name__ == "__main__":
    print(json.dumps(run(Path(sys.argv[1])), default=str))
