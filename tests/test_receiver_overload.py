"""Overload is refused early and in a way exporters retry: HTTP 503 + Retry-After before the
body is read, gRPC RESOURCE_EXHAUSTED with RetryInfo."""

from __future__ import annotations

import socket

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agentwatch.schemas import store
from tests.crash_sender import request_body
from tests.helpers import fresh_database, start_receiver, wait_for


def test_a_busy_receiver_refuses_before_reading_the_body(dsn, database):
    receiver = start_receiver(dsn, database, max_converting_bytes=1, grpc_port=None)
    slow = socket.create_connection(("127.0.0.1", receiver.http_port))
    try:
        # An exporter on a slow link: the headers and half of the body are in.
        body = request_body(1, 20, 256)
        slow.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:len(body) // 2])
        wait_for(lambda: receiver._converting_bytes > 0)
        refused = httpx.post(f"http://127.0.0.1:{receiver.http_port}/v1/traces", content=request_body(2, 20, 256),
                             headers={"Content-Type": "application/x-protobuf"})
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "1"
        assert status_pb2.Status.FromString(refused.content).message.startswith("receiver is busy")
        assert httpx.get(f"http://127.0.0.1:{receiver.http_port}/healthz").status_code == 200

        slow.sendall(body[len(body) // 2:])  # the slow request completes and is accepted
        assert b" 200 OK" in slow.recv(4096)
        accepted = httpx.post(f"http://127.0.0.1:{receiver.http_port}/v1/traces", content=request_body(3, 20, 256),
                              headers={"Content-Type": "application/x-protobuf"})
        assert accepted.status_code == 200
    finally:
        slow.close()
        receiver.stop()


def test_grpc_overload_is_resource_exhausted_with_retry_info(dsn):
    name = fresh_database(dsn, "t_receiver_grpc_overload")
    client = store.connect(dsn, name)
    receiver = start_receiver(dsn, name, max_queue_bytes=1)
    client.command("RENAME TABLE otel_traces TO otel_traces_away")  # inserts fail: the queue stays full
    try:
        with grpc.insecure_channel(f"127.0.0.1:{receiver.grpc_port}") as channel:
            export = trace_service_pb2_grpc.TraceServiceStub(channel).Export
            export(ExportTraceServiceRequest.FromString(request_body(4, 5, 64)), timeout=30)
            try:
                export(ExportTraceServiceRequest.FromString(request_body(5, 5, 64)), timeout=30)
                raise AssertionError("a full queue accepted the request")
            except grpc.RpcError as refused:
                assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                details = dict(refused.trailing_metadata())["grpc-status-details-bin"]
                retry = error_details_pb2.RetryInfo()
                assert status_pb2.Status.FromString(details).details[0].Unpack(retry)
                assert retry.retry_delay.seconds == 1
    finally:
        client.command("RENAME TABLE otel_traces_away TO otel_traces")
        assert receiver.flush(30)
        receiver.stop()
    assert client.query("SELECT count() FROM otel_traces").result_rows == [(5,)]


def test_over_its_memory_limit_the_receiver_refuses_until_memory_falls(dsn, database):
    """Memory the byte bounds do not count (the engine's, the allocators') is bounded by the process's own."""
    from agentwatch.collector.receiver.memory_limit import anonymous_resident_bytes

    limit = anonymous_resident_bytes() + (128 << 20)  # refusing starts 32 MiB below it
    receiver = start_receiver(dsn, database, max_memory_bytes=limit, max_memory_spike_bytes=32 << 20, grpc_port=None)
    url = f"http://127.0.0.1:{receiver.http_port}"

    def send(number: int) -> httpx.Response:
        return httpx.post(f"{url}/v1/traces", content=request_body(number, 20, 256),
                          headers={"Content-Type": "application/x-protobuf"})

    try:
        assert send(10).status_code == 200
        ballast = b"\x01" * (192 << 20)  # this process now holds more than the limit
        refused = wait_for(lambda: (r := send(11)).status_code == 503 and r)
        assert refused.headers["Retry-After"] == "1"
        assert "AGENTWATCH_MAX_MEMORY_BYTES" in status_pb2.Status.FromString(refused.content).message
        health = httpx.get(f"{url}/healthz")
        assert health.status_code == 200 and health.json()["memory_bytes"] > limit - (32 << 20)
        del ballast
        assert wait_for(lambda: send(12).status_code == 200)
        assert 'reason="memory"' in httpx.get(f"{url}/metrics").text
    finally:
        receiver.stop()


def test_over_its_memory_limit_the_allocator_is_asked_to_return_memory_at_most_once_a_second():
    from agentwatch.collector.receiver.memory_limit import MemoryLimit

    used, released = [50], []
    limit = MemoryLimit(125, interval_s=0, read=lambda: used[0], release=lambda: released.append(1))
    assert not limit.over() and not released  # under the limit: nothing to do
    used[0] = 150
    assert limit.over() and limit.over()
    wait_for(lambda: limit.releases == 1)
    assert released == [1]  # twice over within a second: asked once
    limit._released_at -= limit.release_interval_s
    assert limit.over()
    wait_for(lambda: limit.releases == 2)


EMBEDDED_ALLOCATOR = """
import re, sys
from agentwatch.schemas import store
client = store.connect("chdb://" + sys.argv[1])
stats = client.query("SELECT * FROM system.jemalloc_stats").result_rows[0][0]
print(re.search(r"opt.dirty_decay_ms: (-?\\d+)", stats).group(1))
"""


def test_the_embedded_engine_returns_freed_memory_at_once_unless_told_otherwise(tmp_path):
    """Its allocator as built keeps freed pages for 5 s: under overload hundreds of MB nothing uses."""
    import os
    import subprocess
    import sys

    def decay(**env: str) -> str:
        clean = {k: v for k, v in os.environ.items() if k not in ("JE_MALLOC_CONF", store.DIRTY_DECAY_ENV)}
        return subprocess.run([sys.executable, "-c", EMBEDDED_ALLOCATOR, str(tmp_path / "store")], check=True,
                              capture_output=True, text=True, env={**clean, **env}, timeout=120).stdout.strip()

    assert decay() == "0"
    assert decay(AGENTWATCH_EMBEDDED_DIRTY_DECAY_MS="1000") == "1000"
    assert decay(AGENTWATCH_EMBEDDED_DIRTY_DECAY_MS="-") == "5000"  # as the engine was built
    assert decay(JE_MALLOC_CONF="dirty_decay_ms:2000") == "2000"  # set by hand: that wins


def test_the_spike_headroom_must_leave_room_under_the_limit():
    from agentwatch.collector.receiver.memory_limit import MemoryLimit

    with pytest.raises(ValueError, match="AGENTWATCH_MAX_MEMORY_SPIKE_BYTES"):
        MemoryLimit(100, spike_bytes=100, read=lambda: 0)
    assert MemoryLimit(1000, spike_bytes=300, read=lambda: 0).refuse_above == 700
