"""kill -9 the receiver again and again under full-rate ingest; count what survived.

`agentwatch collector` runs in its own process on a fresh embedded store; a
sender posts OTLP/HTTP requests from 4 connections, retrying failures with the
same body after a doubling backoff as exporters do, and giving a request up
at each failure with probability 0.1. Each
time a random further 20-200 requests are acknowledged, the receiver and its
workers are killed with SIGKILL and restarted. At the end the receiver is
stopped cleanly and the store is read back request by request.

    python bench/receiver_crash.py --kills 20 --requests 4000

Prints one JSON object: kills, requests acknowledged and given up, spans
acknowledged and stored, acknowledged spans lost or stored twice (both must
be 0), given-up requests stored in part (must be 0), and cost-rollup drift.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tests.crash_sender import RetryingSender, trace_id  # noqa: E402
from tests.receiver_process import ReceiverProcess, free_port, stored_spans  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--spans-per-request", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    data_dir = tempfile.mkdtemp(prefix="agentwatch-crash-")
    port = free_port()
    spans = args.spans_per_request
    receiver = ReceiverProcess(data_dir, port).start()
    started = time.monotonic()
    sender = RetryingSender(f"http://127.0.0.1:{port}", args.requests, spans=spans, seed=args.seed).start()
    kills = 0
    for _ in range(args.kills):
        if not sender.wait_acknowledged(len(sender.acknowledged) + rng.randint(20, 200), timeout_s=600):
            break
        if len(sender.acknowledged) + len(sender.abandoned) >= args.requests:
            break
        receiver.kill()
        kills += 1
        receiver.start()
    sender.join(timeout_s=3600)
    assert receiver.stop() == 0
    elapsed = time.monotonic() - started
    stored = stored_spans(data_dir)

    result = {"kills": kills, "seconds": round(elapsed, 1), "requests": args.requests,
              "acknowledged_requests": len(sender.acknowledged), "given_up_requests": len(sender.abandoned),
              "failed_attempts": sender.failures, "acknowledged_spans": len(sender.acknowledged) * spans}
    for table in ("otel_traces", "agent_spans"):
        rows = stored[table]
        result[table] = {
            "spans_stored": sum(count for count, _ in rows.values()),
            "acknowledged_lost": sum(max(0, spans - rows.get(trace_id(r).hex(), [0, 0])[1])
                                     for r in sender.acknowledged),
            "stored_twice": sum(count - distinct for count, distinct in rows.values()),
            "given_up_stored_whole": sum(1 for r in sender.abandoned
                                         if rows.get(trace_id(r).hex(), [0, 0]) == [spans, spans]),
            "given_up_stored_in_part": sum(1 for r in sender.abandoned
                                           if rows.get(trace_id(r).hex(), [0, 0]) not in ([0, 0], [spans, spans])),
        }
    result["agent_minutes_model_calls_minus_agent_spans"] = (
        stored["minute_model_calls"] - result["agent_spans"]["spans_stored"])
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
