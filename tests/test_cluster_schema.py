"""The cluster rendering of the migrations (`AGENTWATCH_CLICKHOUSE_CLUSTER`, `agentwatch schema render`).

No ClickHouse cluster runs here: every statement of both renderings goes through
ClickHouse's own parser (the embedded engine's formatQuery), the shape of the
cluster schema is checked statement by statement, and the whole rendering runs
on a one-shard cluster of the embedded engine with only ON CLUSTER and the
Replicated engines stripped (tests/cluster_dry_run.py).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from agentwatch import cli, config
from agentwatch.schemas import cluster, migrate

DB, CLUSTER = "agentwatch", "aw"
REF = rf"`{DB}`\.(\w+)"


def all_statements(cluster_name: str = "") -> list[str]:
    return migrate.preamble(DB, cluster_name) + [
        s for m in migrate.migrations() for s in m.statements(DB, cluster_name)]


SINGLE, CLUSTERED = all_statements(), all_statements(CLUSTER)
SINGLE_TABLES = [m[1] for s in SINGLE if (m := re.match(rf"CREATE TABLE IF NOT EXISTS {REF}", s))]
VIEWS = [re.match(rf"CREATE MATERIALIZED VIEW IF NOT EXISTS {REF} ON CLUSTER '{CLUSTER}' TO {REF}", s)
         for s in CLUSTERED if s.startswith("CREATE MATERIALIZED VIEW")]


def test_every_statement_of_both_renderings_parses(client):
    for statement in SINGLE + CLUSTERED:
        formatted = client.query("SELECT formatQuery({q:String})", parameters={"q": statement}).result_rows[0][0]
        assert formatted.split()[:2] == statement.split()[:2], statement
    clustered = [client.query("SELECT formatQuery({q:String})", parameters={"q": s}).result_rows[0][0]
                 for s in CLUSTERED if not s.startswith("INSERT")]
    assert all(f"ON CLUSTER {CLUSTER}" in text for text in clustered)


def test_every_table_is_a_replicated_local_table_under_a_distributed_one():
    assert set(SINGLE_TABLES) == set(cluster.SHARDING), "every table has a sharding key, and no key is stale"
    for table in SINGLE_TABLES:
        local = [s for s in CLUSTERED if s.startswith(f"CREATE TABLE IF NOT EXISTS `{DB}`.{table}_local ON CLUSTER")]
        distributed = [s for s in CLUSTERED if s.startswith(f"CREATE TABLE IF NOT EXISTS `{DB}`.{table} ON CLUSTER")]
        assert len(local) == len(distributed) == 1, table
        assert re.search(r"ENGINE = Replicated\w*MergeTree\(", local[0]), table
        assert distributed[0].endswith(f"ENGINE = Distributed('{CLUSTER}', '{DB}', '{table}_local', "
                                       f"{cluster.SHARDING[table]})")


def test_replicated_paths_are_unique_per_table_and_shard():
    paths = re.findall(r"Replicated\w*MergeTree\('([^']+)', '\{replica\}'", "\n".join(CLUSTERED))
    assert len(paths) == len(SINGLE_TABLES) == len(set(paths))
    assert all(p.startswith("/clickhouse/tables/{shard}/agentwatch/") and p.endswith("_local") for p in paths)


def test_views_read_local_tables_and_reshard_traces_to_tenants():
    assert VIEWS and all(VIEWS), "every view renders ON CLUSTER with a TO table"
    targets = {}
    for view in VIEWS:
        statement = view.string
        sources = set(re.findall(REF, statement[view.end():]))
        assert sources and all(s.endswith("_local") for s in sources), statement
        targets[view[1]] = view[2]
    # Views from otel_traces that type rows by tenant write through the Distributed table (trace -> tenant
    # shard), as does the copy of cross-tenant credential events for their owner (actor -> owner shard);
    # every other view's rows already sit on their shard and go straight to the local table.
    assert targets == {
        "credential_uses_by_owner_mv": "credential_uses_by_owner",
        "otel_traces_trace_id_ts_mv": "otel_traces_trace_id_ts_local", "agent_spans_mv": "agent_spans",
        "credential_events_mv": "credential_events", "agent_minutes_mv": "agent_minutes_local",
        "agent_hours_mv": "agent_hours_local", "trace_summaries_mv": "trace_summaries_local",
        "trace_span_index_mv": "trace_span_index_local"}


def test_cluster_ddl_runs_on_every_node_and_backfills_once():
    for statement in CLUSTERED:
        if statement.startswith("INSERT"):
            assert "ON CLUSTER" not in statement and "_local" not in statement  # once, through Distributed
        else:
            assert f"ON CLUSTER '{CLUSTER}'" in statement, statement


def test_single_node_dedup_window_is_left_out_on_the_cluster():
    assert any("non_replicated_deduplication_window" in s for s in SINGLE)
    assert not any("non_replicated_deduplication_window" in s for s in CLUSTERED)
    assert f"ALTER TABLE `{DB}`.agent_spans_local ON CLUSTER '{CLUSTER}' MODIFY SETTING " \
           "enable_block_number_column = 1" in CLUSTERED


def test_sharding_keys_are_deterministic():
    # A batch repeated with its deduplication token must split into the same blocks as the first time.
    assert not [k for k in cluster.SHARDING.values() if re.search(r"rand|now|generateUUID", k, re.I)]
    assert cluster.SHARDING["otel_traces"] == "cityHash64(TraceId)"
    assert cluster.SHARDING["agent_spans"] == cluster.SHARDING["credential_events"] == "cityHash64(Tenant)"


def test_column_changes_and_dropped_tables_reach_both_tables(client):
    # Forms no migration uses yet, rendered as a later migration would need them.
    rendered = cluster.render(["ALTER TABLE `d`.anomalies ADD COLUMN IF NOT EXISTS Note String",
                               "DROP TABLE IF EXISTS `d`.demo_incidents"], "d", "c")
    assert rendered == ["ALTER TABLE `d`.anomalies_local ON CLUSTER 'c' ADD COLUMN IF NOT EXISTS Note String",
                        "ALTER TABLE `d`.anomalies ON CLUSTER 'c' ADD COLUMN IF NOT EXISTS Note String",
                        "DROP TABLE IF EXISTS `d`.demo_incidents ON CLUSTER 'c' SYNC",
                        "DROP TABLE IF EXISTS `d`.demo_incidents_local ON CLUSTER 'c' SYNC"]
    for statement in rendered:
        assert client.query("SELECT formatQuery({q:String})", parameters={"q": statement}).result_rows


def test_a_statement_or_table_without_a_rule_stops_the_rendering():
    with pytest.raises(ValueError, match="sharding key"):
        cluster.render(["CREATE TABLE IF NOT EXISTS `d`.new_table (x UInt8) ENGINE = MergeTree ORDER BY x"], "d", "c")
    with pytest.raises(ValueError, match="no cluster rule"):
        cluster.render(["RENAME TABLE `d`.anomalies TO `d`.old_anomalies"], "d", "c")
    with pytest.raises(ValueError, match="cluster name"):
        cluster.render([], "d", "c'; DROP")


def test_schema_render_prints_both_renderings_without_a_store(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AGENTWATCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("AGENTWATCH_CLICKHOUSE_CLUSTER", raising=False)
    monkeypatch.delenv("AGENTWATCH_CLICKHOUSE_DSN", raising=False)
    assert cli.main(["schema", "render", "--cluster", CLUSTER]) == 0
    printed = capsys.readouterr().out
    assert printed == migrate.render(DB, CLUSTER)
    body = "\n".join(line for line in printed.splitlines() if not line.startswith("--"))
    assert [s.strip() for s in body.split(";\n") if s.strip()] == CLUSTERED
    monkeypatch.setenv("AGENTWATCH_CLICKHOUSE_CLUSTER", CLUSTER)  # the setting, when --cluster is not given
    assert config.load().clickhouse_cluster == CLUSTER
    assert cli.main(["schema", "render"]) == 0 and capsys.readouterr().out == printed
    assert cli.main(["schema", "render", "--cluster", ""]) == 0
    assert "ON CLUSTER" not in capsys.readouterr().out
    assert not (tmp_path / "data").exists()


def test_apply_refuses_to_mix_the_renderings_in_one_database(client, database, monkeypatch):
    monkeypatch.setenv("AGENTWATCH_CLICKHOUSE_CLUSTER", CLUSTER)
    with pytest.raises(RuntimeError, match="single-server schema"):
        migrate.apply(client, database)
    with pytest.raises(RuntimeError, match="single-server schema"):
        migrate.apply(client, database, cluster=CLUSTER)
    assert migrate.apply(client, database, cluster="") == []


def test_cluster_rendering_runs_on_a_one_shard_embedded_cluster(tmp_path):
    done = subprocess.run([sys.executable, "-m", "tests.cluster_dry_run", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["applied"] == [f"{m.version:04d}_{m.name}" for m in migrate.migrations()]
    assert report["applied_again"] == [] and report["single_server_refused"]
    for table in SINGLE_TABLES:
        assert report["engines"][table] == "Distributed" and report["engines"][f"{table}_local"].endswith("MergeTree")
    # Four spans sent twice with one deduplication token: stored once, typed by tenant, rolled up,
    # every table read by its public name and holding its rows in its local table.
    assert report["rows"] == report["local_rows"]
    assert report["rows"]["otel_traces"] == report["rows"]["agent_spans"] == report["rows"]["trace_span_index"] == 4
    assert report["rows"]["otel_traces_trace_id_ts"] == report["rows"]["trace_summaries"] == 2
    assert report["tenants"] == ["acme", "globex"]
    assert report["credential_uses"] == [["acme", "github-7", "globex"], ["globex", "github-7", "acme"]]
    # acme's credential used by globex, copied for acme through the Distributed table sharded by owner
    assert report["uses_by_owner"] == [["acme", "globex", "github-7"]]
    assert report["minutes"] == [["acme", 2, 1, 0.5], ["globex", 2, 1, 0.5]]
    # The detector worker in cluster mode, on the same node: it tails its shard's local tables by part ranges,
    # raises the cross-tenant use, checkpoints, and a restarted worker reads nothing again.
    assert report["tails"] == ["agent_spans_local", "credential_events_local", "credential_uses_by_owner_local",
                               "secret_findings_local"]
    # one shard: every actor is its own, so the copies by owner are left to credential_events
    assert report["detected_rows"] == 6 and report["read_again_after_restart"] == 0
    assert all(a["stored"] == a["processed"] and a["pending"] == 0 for a in report["audit"].values())
    assert report["anomalies"] == [["cross_tenant", "acme"], ["cross_tenant", "globex"]]
    assert report["checkpoints"] >= 1
    # A worker whose shards do not match the cluster's is refused, with what to change.
    assert "has 1 shards, the detectors run 2" in report["wrong_shard"]
