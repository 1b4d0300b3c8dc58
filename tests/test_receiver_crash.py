"""An acknowledged span survives kill -9, a retried one is stored once, a refused one all or nothing.

`agentwatch collector` runs in its own process on an embedded store; a sender
in this process posts OTLP requests at full rate and retries failures with
the same body, as exporters do (giving some up). The receiver is killed with
SIGKILL, with its conversion workers, each time some more requests were
acknowledged, and restarted; then stopped cleanly and the store read back.
"""

from __future__ import annotations

import random
import urllib.request

import pytest

from tests.crash_sender import RetryingSender, request_body, trace_id
from tests.receiver_process import ReceiverProcess, free_port, stored_spans

SPANS = 40


@pytest.mark.parametrize("seed", [3])
def test_kill_9_loses_nothing_acknowledged_and_stores_nothing_twice(tmp_path, seed):
    rng = random.Random(seed)
    port = free_port()
    receiver = ReceiverProcess(str(tmp_path), port).start()
    sender = RetryingSender(f"http://127.0.0.1:{port}", requests=360, spans=SPANS, threads=4, seed=seed).start()
    kills = 3
    for _ in range(kills):
        assert sender.wait_acknowledged(len(sender.acknowledged) + rng.randint(15, 60), timeout_s=180)
        receiver.kill()
        receiver.start()
    assert sender.join(timeout_s=300), "the sender did not finish"
    assert receiver.stop() == 0
    stored = stored_spans(str(tmp_path))

    assert sender.failures > 0, "the kills interrupted no request: the test proved nothing"
    assert len(sender.acknowledged) + len(sender.abandoned) == 360
    for table in ("otel_traces", "agent_spans"):
        rows = stored[table]
        for request in sender.acknowledged:
            assert rows.get(trace_id(request).hex()) == [SPANS, SPANS], (table, request)
        for request in sender.abandoned:
            # Never acknowledged: stored whole (spooled before the kill) or not at all.
            assert rows.get(trace_id(request).hex(), [0, 0]) in ([0, 0], [SPANS, SPANS]), (table, request)
        sent = {trace_id(request).hex() for request in range(360)}
        assert set(rows) <= sent
    # The cost rollup counts each model call once.
    assert stored["minute_model_calls"] == sum(count for count, _ in stored["agent_spans"].values())


def test_a_request_sent_again_is_acknowledged_and_stored_once(receiver, client):
    """An exporter that timed out, or lost the answer, sends the same request again."""
    body = request_body(9_000, SPANS, 256)
    for _ in range(3):
        answer = urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{receiver.http_port}/v1/traces", data=body,
            headers={"Content-Type": "application/x-protobuf"}), timeout=30)
        assert answer.status == 200
    # Another request with other spans is not taken for a retry.
    other = request_body(9_001, SPANS, 256)
    urllib.request.urlopen(urllib.request.Request(
        f"http://127.0.0.1:{receiver.http_port}/v1/traces", data=other,
        headers={"Content-Type": "application/x-protobuf"}), timeout=30)
    assert receiver.flush()
    for table in ("otel_traces", "agent_spans"):
        counts = dict(client.query(f"SELECT TraceId, count() FROM {table} GROUP BY TraceId").result_rows)
        assert counts == {trace_id(9_000).hex(): SPANS, trace_id(9_001).hex(): SPANS}, table
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{receiver.http_port}/metrics").read().decode()
    assert f'agentwatch_receiver_duplicate_items_total{{signal="traces"}} {2 * SPANS}.0' in metrics
