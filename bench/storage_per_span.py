"""Bytes stored per span for realistic multi-turn agent traces.

Runs `agentwatch demo` (a fast-forwarded hour of the simulated fleet: planner
agents, sub-agents, tool calls, model calls with whole multi-turn messages and
reasoning) into a fresh embedded store, merges the parts, and reads the sizes
ClickHouse reports per table.

    python bench/storage_per_span.py [--duration 3600]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=3600)
    args = parser.parse_args()
    data_dir = tempfile.mkdtemp(prefix="agentwatch-storage-")
    env = {**os.environ, "AGENTWATCH_DATA_DIR": data_dir, "AGENTWATCH_CLICKHOUSE_DSN": ""}
    subprocess.run([sys.executable, "-m", "agentwatch.cli", "demo", "--duration", str(args.duration)], env=env,
                   check=True, stdout=subprocess.DEVNULL)

    from agentwatch.schemas import store

    client = store.connect(f"chdb://{data_dir}/clickhouse", "agentwatch", create=False)
    tables = ["otel_traces", "agent_spans", "credential_events", "otel_traces_trace_id_ts"]
    for table in tables:
        client.command(f"OPTIMIZE TABLE {table} FINAL")
    spans = client.query("SELECT count() FROM otel_traces").result_rows[0][0]
    sizes = {}
    for table, compressed, uncompressed in client.query(
            "SELECT table, sum(data_compressed_bytes), sum(data_uncompressed_bytes) FROM system.parts "
            "WHERE database = 'agentwatch' AND active AND table IN {tables:Array(String)} GROUP BY table",
            parameters={"tables": tables}).result_rows:
        sizes[table] = {"compressed_bytes_per_span": round(compressed / spans),
                        "uncompressed_bytes_per_span": round(uncompressed / spans)}
    payload = client.query("SELECT avg(PayloadBytes), quantile(0.99)(PayloadBytes), max(PayloadBytes) "
                           "FROM agent_spans").result_rows[0]
    turns = client.query("SELECT avg(c) FROM (SELECT TraceId, countIf(Operation = 'chat') AS c FROM agent_spans "
                         "GROUP BY TraceId)").result_rows[0][0]
    total = sum(size["compressed_bytes_per_span"] for size in sizes.values())
    print(json.dumps({
        "spans": spans, "model_calls_per_trace": round(turns, 1),
        "attribute_payload_bytes_per_span": {"mean": round(payload[0]), "p99": round(payload[1]), "max": payload[2]},
        "tables": sizes, "total_compressed_bytes_per_span": total,
    }, indent=2))


if __name__ == "__main__":
    main()
