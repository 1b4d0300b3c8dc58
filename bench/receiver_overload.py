"""Overload: a sender offering several times what the receiver can write, for minutes.

`agentwatch collector` runs in its own process on a fresh embedded store (spool
on). First the rate it can absorb is measured (closed loop, 4 connections).
Then requests are offered open loop at `--factor` times that rate for
`--duration` seconds; a refused request (503 + Retry-After) is retried after
the time the receiver asked for, at most `--retries` times, as an exporter
does, then given up. /healthz is probed throughout. When the offer stops, the
time until the receiver has written everything it accepted is measured, then
it is stopped and the store is read back request by request.

    python bench/receiver_overload.py --duration 120 --factor 3
    python bench/receiver_overload.py --duration 60 --factor 3 --max-memory-mb 600   # a bounded process

Prints one JSON object: offered, acknowledged, refused and given-up requests
and spans, spans stored (and any acknowledged span missing or stored twice),
peak RSS of the receiver's processes against its configured bounds, /healthz
latency under overload, and the recovery time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request

import aiohttp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tests.crash_sender import request_body, trace_id  # noqa: E402
from tests.receiver_process import ReceiverProcess, free_port, stored_spans  # noqa: E402

PLACEHOLDER = 0  # request number whose trace id is patched into each copy of the template


def rss_bytes(pid: int, descendants: bool = True, field: str = "VmRSS") -> int:
    """Resident memory of a process and (by default) its descendants (Linux /proc). `RssAnon` counts the
    process's own memory only: VmRSS also counts the pages of mapped files (the embedded engine's
    library alone keeps ~300 MB of its code resident), which the kernel shares and may drop."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            for line in open(f"/proc/{current}/status"):
                if line.startswith(field + ":"):
                    total += int(line.split()[1]) * 1024
            for task in os.listdir(f"/proc/{current}/task") if descendants else ():
                pending.extend(int(c) for c in open(f"/proc/{current}/task/{task}/children").read().split())
        except OSError:
            continue
    return total


class Requests:
    """Request bodies made by patching a fresh trace id into one encoded template (cheap to make)."""

    def __init__(self, spans: int, payload_bytes: int) -> None:
        self.template = request_body(PLACEHOLDER, spans, payload_bytes, tenants=1)
        self.placeholder = trace_id(PLACEHOLDER)
        assert self.template.count(self.placeholder) == spans  # the trace id of each span, and nothing else
        self.spans = spans
        self.made = 0

    def next(self) -> tuple[int, bytes]:
        self.made += 1
        return self.made, self.template.replace(self.placeholder, trace_id(self.made))


async def post(session, url: str, body: bytes) -> tuple[int, float]:
    async with session.post(url, data=body, headers={"Content-Type": "application/x-protobuf"}) as response:
        await response.read()
        return response.status, float(response.headers.get("Retry-After", "1"))


async def closed_loop(url: str, requests: Requests, seconds: float, acknowledged: set[int]) -> None:
    deadline = time.monotonic() + seconds

    async def worker(session):
        while time.monotonic() < deadline:
            number, body = requests.next()
            status, retry_after = await post(session, url, body)
            if status == 200:
                acknowledged.add(number)
            else:
                await asyncio.sleep(retry_after)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(4)))


async def open_loop(url: str, requests: Requests, rate_per_s: float, seconds: float, retries: int,
                    ledger: dict) -> None:
    """Start a request every 1/rate seconds whatever the answers; retry refusals after Retry-After."""

    async def deliver(session, number: int, body: bytes):
        for attempt in range(retries + 1):
            try:
                status, retry_after = await post(session, url, body)
            except aiohttp.ClientError:
                status, retry_after = None, 1.0
            except asyncio.TimeoutError:  # no answer in time: an exporter gives up on the attempt and resends
                ledger["timed_out"] += 1
                status, retry_after = None, 1.0
            if status == 200:
                ledger["acknowledged"].add(number)
                return
            ledger["refused"] += 1
            if attempt < retries:
                await asyncio.sleep(retry_after)
        ledger["given_up"].add(number)

    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        tasks, started = [], time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            due = int(elapsed * rate_per_s) + 1
            while ledger["offered"] < due:
                number, body = requests.next()
                ledger["offered"] += 1
                tasks.append(asyncio.create_task(deliver(session, number, body)))
            await asyncio.sleep(0.005)
        await asyncio.gather(*tasks)


def health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
        return json.loads(response.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=120)
    parser.add_argument("--factor", type=float, default=3.0)
    parser.add_argument("--spans-per-request", type=int, default=100)
    parser.add_argument("--payload-bytes", type=int, default=1024)
    parser.add_argument("--retries", type=int, default=5)
    parser.add_argument("--max-queue-mb", type=int, default=64)
    parser.add_argument("--max-converting-mb", type=int, default=32)
    parser.add_argument("--embedded-max-memory", default="",
                        help="AGENTWATCH_EMBEDDED_MAX_MEMORY of the receiver's embedded engine, e.g. 256M (default: none)")
    parser.add_argument("--max-memory-mb", type=int, default=0,
                        help="AGENTWATCH_MAX_MEMORY_BYTES: the receiver process's resident anonymous memory (0: none)")
    parser.add_argument("--memory-spike-mb", type=int, default=0,
                        help="AGENTWATCH_MAX_MEMORY_SPIKE_BYTES: refusing starts this far below --max-memory-mb "
                             "(0: the receiver's default)")
    parser.add_argument("--embedded-dirty-decay-ms", default="",
                        help="AGENTWATCH_EMBEDDED_DIRTY_DECAY_MS: how long the engine's allocator keeps freed memory "
                             "(default: the receiver's, 0; '-': as the engine was built, 5000)")
    args = parser.parse_args()

    data_dir = tempfile.mkdtemp(prefix="agentwatch-overload-")
    port = free_port()
    receiver = ReceiverProcess(data_dir, port, max_queue_bytes=str(args.max_queue_mb << 20),
                               max_converting_bytes=str(args.max_converting_mb << 20),
                               max_memory_bytes=str(args.max_memory_mb << 20),
                               max_memory_spike_bytes=str(args.memory_spike_mb << 20),
                               embedded_max_memory=args.embedded_max_memory,
                               **({"embedded_dirty_decay_ms": args.embedded_dirty_decay_ms}
                                  if args.embedded_dirty_decay_ms else {})).start()
    try:
        measure(args, receiver, data_dir, port)
    finally:
        if receiver.process.poll() is None:  # the run failed half way: leave no receiver behind
            receiver.kill()


def measure(args, receiver: ReceiverProcess, data_dir: str, port: int) -> None:
    url = f"http://127.0.0.1:{port}/v1/traces"
    requests = Requests(args.spans_per_request, args.payload_bytes)
    idle_rss = rss_bytes(receiver.process.pid)
    idle_main = rss_bytes(receiver.process.pid, descendants=False)
    idle_anon = rss_bytes(receiver.process.pid, descendants=False, field="RssAnon")

    capacity_acknowledged: set[int] = set()
    started = time.monotonic()
    asyncio.run(closed_loop(url, requests, 20, capacity_acknowledged))
    while health(port)["queue_rows"]:
        time.sleep(0.05)
    capacity = len(capacity_acknowledged) * args.spans_per_request / (time.monotonic() - started)

    peak = {"rss": 0, "main": 0, "anon": 0}
    probes: list[float] = []
    probe_failures = {"count": 0}
    overloaded = threading.Event()

    def watch():
        while not overloaded.is_set():
            peak["rss"] = max(peak["rss"], rss_bytes(receiver.process.pid))
            peak["main"] = max(peak["main"], rss_bytes(receiver.process.pid, descendants=False))
            peak["anon"] = max(peak["anon"], rss_bytes(receiver.process.pid, descendants=False, field="RssAnon"))
            began = time.perf_counter()
            try:
                health(port)
                probes.append(time.perf_counter() - began)
            except OSError:
                probe_failures["count"] += 1
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    ledger = {"offered": 0, "acknowledged": set(), "refused": 0, "timed_out": 0, "given_up": set()}
    offered_rate = args.factor * capacity / args.spans_per_request
    overload_started = time.monotonic()
    asyncio.run(open_loop(url, requests, offered_rate, args.duration, args.retries, ledger))
    offer_ended = time.monotonic()  # the last retry answered
    while health(port)["queue_rows"]:
        time.sleep(0.05)
    recovered_s = time.monotonic() - offer_ended
    overloaded.set()
    watcher.join()
    assert receiver.stop() == 0
    stored = stored_spans(data_dir)["otel_traces"]

    acknowledged = capacity_acknowledged | ledger["acknowledged"]
    spans = args.spans_per_request
    missing = sum(1 for number in acknowledged if stored.get(trace_id(number).hex()) != [spans, spans])
    partial = sum(1 for number in ledger["given_up"]
                  if stored.get(trace_id(number).hex(), [0, 0]) not in ([0, 0], [spans, spans]))
    print(json.dumps({
        "capacity_spans_per_s": round(capacity),
        "offered_spans_per_s": round(offered_rate * spans),
        "offer_seconds": args.duration,
        "seconds_until_every_request_answered": round(offer_ended - overload_started, 1),
        "offered_requests": ledger["offered"],
        "acknowledged_requests": len(ledger["acknowledged"]),
        "acknowledged_spans_per_s": round(len(ledger["acknowledged"]) * spans / (offer_ended - overload_started)),
        "refusals_503": ledger["refused"] - ledger["timed_out"],
        "attempts_timed_out": ledger["timed_out"],
        "given_up_requests": len(ledger["given_up"]),
        "spans_stored": sum(count for count, _ in stored.values()),
        "acknowledged_spans": len(acknowledged) * spans,
        "acknowledged_requests_missing_or_duplicated": missing,
        "given_up_requests_partly_stored": partial,
        "rss_idle_mb": round(idle_rss / 2**20),
        "rss_idle_main_process_mb": round(idle_main / 2**20),
        "rss_peak_mb": round(peak["rss"] / 2**20),
        "rss_peak_main_process_mb": round(peak["main"] / 2**20),
        "anonymous_idle_main_process_mb": round(idle_anon / 2**20),
        "anonymous_peak_main_process_mb": round(peak["anon"] / 2**20),
        "bounds_mb": {"max_queue": args.max_queue_mb, "max_converting": args.max_converting_mb,
                      "max_memory": args.max_memory_mb,
                      "memory_spike": args.memory_spike_mb or "default",
                      "embedded_engine": args.embedded_max_memory or "unset",
                      "embedded_dirty_decay_ms": args.embedded_dirty_decay_ms or "default (0)"},
        "healthz_ms": {"p50": round(statistics.median(probes) * 1000, 1),
                       "p99": round(statistics.quantiles(probes, n=100)[98] * 1000, 1),
                       "max": round(max(probes) * 1000, 1), "failed": probe_failures["count"]},
        "seconds_to_write_the_queue_after": round(recovered_s, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
