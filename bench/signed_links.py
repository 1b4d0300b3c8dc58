"""Signed halt/release links in alerts: how soon a confirmed link takes effect, and what links cost an alert.

Part 1 (`--confirms` times): a receiver on a fresh embedded store with a signing key; a halt link for
a new agent is confirmed (POST, as the confirm button does), then GET /v1/verdicts is polled until the
halt is served. Prints p50/p95/max milliseconds from the POST to the verdict being served (what a
guard's next poll then sees).

Part 2: an alert storm of `--storm` anomalies, half of them halted by the policy: the time to build
the records the sinks render (anomalies, their halts, their links), without and with signed links.

    python bench/signed_links.py [--confirms 20] [--storm 500]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from agentwatch.detectors.alerting import records  # noqa: E402
from agentwatch.detectors.alerting.links import ActionSigner  # noqa: E402
from agentwatch.schemas import halts, store  # noqa: E402
from tests.helpers import fresh_database, start_receiver  # noqa: E402

KEY = "bench-signing-key-of-at-least-32-characters"


def confirm_to_served(base: str, signer: ActionSigner, count: int) -> list[float]:
    latencies = []
    for i in range(count):
        [halt] = [link for link in signer.links("acme", f"{i:032x}", [("agent", f"agent-{i}")])
                  if link.action == "halt"]
        started = time.perf_counter()
        urllib.request.urlopen(urllib.request.Request(halt.url, data=b"reason=bench", method="POST")).read()
        while True:
            served = json.loads(urllib.request.urlopen(base + "/v1/verdicts?tenant=acme").read())["verdicts"]
            if any(verdict["target"] == f"agent-{i}" for verdict in served):
                break
            time.sleep(0.005)
        latencies.append((time.perf_counter() - started) * 1000)
    return sorted(latencies)


def storm_records(client, signer: ActionSigner, size: int) -> dict[str, float]:
    now = datetime.now(UTC)
    ids = [f"{i:032x}" for i in range(size)]
    client.insert("anomalies", [[anomaly_id, now, "fanout", "warning", "acme", f"a{i}", anomaly_id, 1.0, "s", "{}",
                                 "open", now, now, now] for i, anomaly_id in enumerate(ids)],
                  column_names=["AnomalyId", "DetectedAt", "Kind", "Severity", "Tenant", "AgentId", "TraceId",
                                "Score", "Summary", "Evidence", "Status", "FirstSeen", "LastSeen", "UpdatedAt"])
    halts.record(client, [halts.decision("acme", "trace", anomaly_id, "halt", anomaly_id=anomaly_id,
                                         decided_by="policy") for anomaly_id in ids[::2]])
    medians = {}
    for label, links in (("halts_no_links_ms", None), ("halts_and_links_ms", signer)):
        times = []
        for _ in range(5):
            started = time.perf_counter()
            records.read(client, set(ids), links)
            times.append((time.perf_counter() - started) * 1000)
        medians[label] = round(statistics.median(times), 1)
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--confirms", type=int, default=20)
    parser.add_argument("--storm", type=int, default=500)
    args = parser.parse_args()
    dsn = f"chdb://{tempfile.mkdtemp()}"
    database = fresh_database(dsn, "bench_links")
    client = store.connect(dsn, database)
    receiver = start_receiver(dsn, database, actions_key=KEY)
    base = f"http://127.0.0.1:{receiver.http_port}"
    signer = ActionSigner(KEY, base, 3600)
    try:
        latencies = confirm_to_served(base, signer, args.confirms)
        result = {
            "confirm_to_served_ms": {"n": len(latencies), "p50": round(statistics.median(latencies)),
                                     "p95": round(latencies[int(0.95 * (len(latencies) - 1))]),
                                     "max": round(latencies[-1])},
            f"storm_of_{args.storm}_records": storm_records(client, signer, args.storm),
        }
    finally:
        receiver.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
