"""Receiver throughput: spans/s (1 KB payloads) and MB/s (1 MB payloads), zero loss.

The receiver runs as `agentwatch collector` in its own process on a fresh
embedded store; this process is the sender, posting pre-encoded OTLP/HTTP
protobuf requests over several connections. Throughput is measured from the
first request to the moment the receiver reports every row written; then the
collector is stopped (SIGTERM) and the rows in the store are counted.

    python bench/receiver_throughput.py --payload-bytes 1024 --spans 300000
    python bench/receiver_throughput.py --payload-bytes 1048576 --spans 400 --spans-per-request 4
    python bench/receiver_throughput.py --spool off   # answered once queued in memory, for comparison

With the spool on (the default), a request is answered once it is fsynced to
the receiver's write-ahead spool.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import aiohttp
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kv(key: str, value) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def build_requests(total_spans: int, per_request: int, payload_bytes: int, seed: int = 1) -> list[bytes]:
    """Realistic chat spans: GenAI attributes, tokens, and a message payload of the given size."""
    rng = random.Random(seed)
    words = "the agent read a document and decided to call the search tool again because".split()
    payload = (" ".join(rng.choice(words) for _ in range(payload_bytes // 4)))[:payload_bytes]
    requests = []
    now = time.time_ns()
    made = 0
    while made < total_spans:
        request = ExportTraceServiceRequest()
        resource_spans = request.resource_spans.add()
        resource_spans.resource.attributes.extend([kv("service.name", "bench-agent"),
                                                   kv("agentwatch.tenant.id", f"tenant-{len(requests) % 8}")])
        scope = resource_spans.scope_spans.add()
        scope.scope.name = "agentwatch"
        trace_id = rng.randbytes(16)
        for _ in range(min(per_request, total_spans - made)):
            start = now + made * 1000
            span = Span(trace_id=trace_id, span_id=rng.randbytes(8), parent_span_id=rng.randbytes(8),
                        name="chat gpt-4o-mini", kind=Span.SPAN_KIND_CLIENT,
                        start_time_unix_nano=start, end_time_unix_nano=start + 800_000_000)
            span.attributes.extend([
                kv("gen_ai.operation.name", "chat"), kv("gen_ai.provider.name", "openai"),
                kv("gen_ai.request.model", "gpt-4o-mini"), kv("gen_ai.agent.id", f"agent-{made % 50}"),
                kv("gen_ai.usage.input_tokens", 1200 + made % 300), kv("gen_ai.usage.output_tokens", 250),
                kv("gen_ai.output.messages", payload),
            ])
            scope.spans.append(span)
            made += 1
        requests.append(request.SerializeToString())
    return requests


async def send_all(url: str, bodies: list[bytes], concurrency: int) -> tuple[int, int]:
    """Post every body; retry 429/503 after Retry-After, as OTLP exporters do."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    retries = 0

    async def worker(session: aiohttp.ClientSession):
        nonlocal retries
        while not queue.empty():
            body = queue.get_nowait()
            while True:
                async with session.post(url, data=body, headers={"Content-Type": "application/x-protobuf"}) as r:
                    await r.read()
                    if r.status == 200:
                        break
                    if r.status in (429, 503):
                        retries += 1
                        await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                        continue
                    raise RuntimeError(f"unexpected HTTP {r.status}")

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return len(bodies), retries


def cpu_seconds(pid: int, children: bool = True) -> float:
    """CPU time of a process (and its children) so far (Linux /proc)."""
    total = 0.0
    pids = [pid]
    while pids:
        current = pids.pop()
        try:
            fields = open(f"/proc/{current}/stat").read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for task in os.listdir(f"/proc/{current}/task") if children else ():
                pids.extend(int(c) for c in open(f"/proc/{current}/task/{task}/children").read().split())
        except OSError:
            continue
    return total


def written_rows(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz") as response:
        return json.loads(response.read())["written_rows"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=300_000)
    parser.add_argument("--spans-per-request", type=int, default=512)
    parser.add_argument("--payload-bytes", type=int, default=1024)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--spool", choices=("on", "off"), default="on")
    args = parser.parse_args()

    bodies = build_requests(args.spans, args.spans_per_request, args.payload_bytes)
    body_bytes = sum(len(b) for b in bodies)
    data_dir = tempfile.mkdtemp(prefix="agentwatch-bench-")
    port = free_port()
    env = {**os.environ, "AGENTWATCH_DATA_DIR": data_dir, "AGENTWATCH_OTLP_HTTP_PORT": str(port),
           "AGENTWATCH_OTLP_GRPC_PORT": str(free_port()), "AGENTWATCH_CLICKHOUSE_DSN": "",
           "AGENTWATCH_SPOOL_DIR": "" if args.spool == "on" else "off"}
    collector = subprocess.Popen([sys.executable, "-m", "agentwatch.cli", "collector"], env=env)
    try:
        for _ in range(600):
            try:
                written_rows(port)
                break
            except OSError:
                time.sleep(0.1)
        collector_cpu_before = cpu_seconds(collector.pid)
        main_cpu_before = cpu_seconds(collector.pid, children=False)
        sender_cpu_before = time.process_time()
        started = time.perf_counter()
        _, retries = asyncio.run(send_all(f"http://127.0.0.1:{port}/v1/traces", bodies, args.concurrency))
        accepted = time.perf_counter() - started
        while written_rows(port) < args.spans:
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
        collector_cpu = cpu_seconds(collector.pid) - collector_cpu_before
        main_cpu = cpu_seconds(collector.pid, children=False) - main_cpu_before
        sender_cpu = time.process_time() - sender_cpu_before
    finally:
        collector.send_signal(signal.SIGTERM)
        collector.wait(300)

    from agentwatch.schemas import store

    client = store.connect(f"chdb://{data_dir}/clickhouse", "agentwatch", create=False)
    stored = client.query("SELECT count() FROM otel_traces").result_rows[0][0]
    typed = client.query("SELECT count() FROM agent_spans").result_rows[0][0]
    print(json.dumps({
        "spool": args.spool, "spans_sent": args.spans, "spans_in_otel_traces": stored, "spans_in_agent_spans": typed,
        "lost": args.spans - stored, "payload_bytes": args.payload_bytes, "requests": len(bodies),
        "request_mb": round(body_bytes / 1e6, 1), "retries_after_503": retries,
        "seconds_until_accepted": round(accepted, 2), "seconds_until_written": round(elapsed, 2),
        "spans_per_s": round(args.spans / elapsed), "mb_per_s": round(body_bytes / 1e6 / elapsed, 1),
        "collector_cpu_s": round(collector_cpu, 2),
        "collector_main_process_cpu_s": round(main_cpu, 2), "sender_cpu_s": round(sender_cpu, 2),
        "cores": os.cpu_count(),
    }, indent=2))


if __name__ == "__main__":
    main()
