"""What scanning payloads for secrets costs at ingest (collector/receiver/secrets.py).

Three measurements, scanning on and off in alternating runs:

1. convert: the conversion the receiver's workers run (OTLP protobuf to rows), in this
   process, on receiver_throughput.py's chat spans with 1 KB payloads: CPU-µs per span.
2. ingest: those spans through a real receiver in its own process (as `agentwatch
   collector` runs it: embedded store, write-ahead spool), posted over 4 connections:
   spans/s until every row is written, and the receiver's CPU-seconds.
3. large: one 8 MB payload (chain-of-thought prose with URLs and JSON), without a secret
   and with two (one in the middle, one at the end): the time to scan and redact the
   text alone, and to convert the one-span request that carries it.

Payloads (--payload): `words` (receiver_throughput.py's), `links` (each opens with a URL
and a JSON record of ids and a digest: none a secret), `secrets` (as links, and the first
span of every 512-span request holds a GitHub token). A protobuf request with no candidate
anywhere costs one pass over its body; in a request that holds one, every span is checked
on its own, so `secrets` is the upper bound.

"Off" is the conversion without a policy (the receiver has no setting for it: the
bench's own receiver process drops the policy it read at start).

    python bench/secret_scan.py                       # all three
    python bench/secret_scan.py --part convert --rounds 9 [--payload links|secrets]
    python bench/secret_scan.py --part ingest --spans 100000 --rounds 4 [--payload secrets]
    python bench/secret_scan.py --part large
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from receiver_throughput import build_requests, cpu_seconds, free_port, send_all, written_rows  # noqa: E402

from agentwatch.collector.receiver import otlp  # noqa: E402
from agentwatch.collector.receiver.secrets import SecretPolicy, scan  # noqa: E402

POLICY = SecretPolicy(key=os.urandom(32))
GITHUB_TOKEN = "ghp_16C7e42F292c6912E7710c838347Ae178B4a"
AWS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"


# What payloads hold besides prose: a link and a JSON record with ids (none of them a secret).
LINKS = ('See https://docs.example.com/api/v2/orders?page=3 and {"order_id": "3f2b9c4e-1d2a-4c8e-9b7a-2f1e0d9c8b7a", '
         '"trace": "4bf92f3577b34da6a3ce929d0e0e4736", '
         '"sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"} ')


def spans_1kb(spans: int, payload: str) -> list[bytes]:
    """receiver_throughput.py's requests (512 chat spans of 1 KB payload each); `links`: payloads open with LINKS;
    `secrets`: so do they, and the first span of each request holds a GitHub token (every span of the request is
    then scanned on its own: the upper bound of the cost)."""
    bodies = build_requests(spans, 512, 1024)
    if payload == "words":
        return bodies
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    out = []
    for body in bodies:
        request = ExportTraceServiceRequest.FromString(body)
        for index, span in enumerate(request.resource_spans[0].scope_spans[0].spans):
            for attribute in span.attributes:
                if attribute.key == "gen_ai.output.messages":
                    text = LINKS + (f"token {GITHUB_TOKEN} " if payload == "secrets" and index == 0 else "")
                    attribute.value.string_value = text + attribute.value.string_value[len(text):]
        out.append(request.SerializeToString())
    return out


def measure_convert(rounds: int, spans: int, payload: str) -> dict:
    bodies = spans_1kb(spans, payload)
    otlp.warm_up()
    cpu_us: dict[str, list[float]] = {"on": [], "off": []}
    for index in range(rounds):
        order = (("on", POLICY), ("off", None)) if index % 2 == 0 else (("off", None), ("on", POLICY))
        for label, policy in order:
            began = time.process_time()
            for body in bodies:
                otlp.convert("traces", body, False, None, None, policy)
            cpu_us[label].append((time.process_time() - began) / spans * 1e6)
    on, off = statistics.median(cpu_us["on"]), statistics.median(cpu_us["off"])
    return {"payload": payload, "spans_per_round": spans, "rounds": rounds,
            "cpu_us_per_span_on": [round(v, 2) for v in cpu_us["on"]],
            "cpu_us_per_span_off": [round(v, 2) for v in cpu_us["off"]],
            "median_on": round(on, 2), "median_off": round(off, 2),
            "conversion_cost_of_scanning_pct": round((on - off) / off * 100, 1)}


def serve(mode: str, port: int, data_dir: str) -> None:
    """The receiver process of the ingest measurement, until SIGTERM."""
    from agentwatch.collector.receiver import Receiver, ReceiverConfig
    from agentwatch.schemas import migrate, store

    dsn = f"chdb://{data_dir}/clickhouse"
    client = store.connect(dsn, "agentwatch")
    migrate.apply(client)
    receiver = Receiver(lambda: store.connect(dsn, "agentwatch"),
                        ReceiverConfig(http_port=port, grpc_port=None, spool_dir=f"{data_dir}/spool")).start()
    if mode == "off":
        receiver.secrets = None
    stopped = []
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(1))
    while not stopped:
        time.sleep(0.1)
    receiver.stop()


def ingest_once(mode: str, bodies: list[bytes], spans: int) -> dict:
    data_dir = tempfile.mkdtemp(prefix="agentwatch-bench-secrets-")
    port = free_port()
    child = subprocess.Popen([sys.executable, __file__, "--serve", mode, "--port", str(port), "--data", data_dir])
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                written_rows(port)
                break
            except OSError:
                if time.monotonic() > deadline or child.poll() is not None:
                    raise RuntimeError("the receiver did not start") from None
                time.sleep(0.1)
        cpu_before = cpu_seconds(child.pid)
        started = time.perf_counter()
        asyncio.run(send_all(f"http://127.0.0.1:{port}/v1/traces", bodies, 4))
        while written_rows(port) < spans:
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(child.pid) - cpu_before
    finally:
        child.send_signal(signal.SIGTERM)
        child.wait(300)
    return {"mode": mode, "spans_per_s": round(spans / elapsed), "receiver_cpu_s": round(cpu, 2),
            "receiver_cpu_us_per_span": round(cpu / spans * 1e6, 1)}


def measure_ingest(rounds: int, spans: int, payload: str) -> dict:
    bodies = spans_1kb(spans, payload)
    runs = []
    for index in range(rounds):
        for mode in (("on", "off") if index % 2 == 0 else ("off", "on")):
            runs.append(ingest_once(mode, bodies, spans))
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    rate = {mode: statistics.median(r["spans_per_s"] for r in runs if r["mode"] == mode) for mode in ("on", "off")}
    cpu = {mode: statistics.median(r["receiver_cpu_us_per_span"] for r in runs if r["mode"] == mode)
           for mode in ("on", "off")}
    return {"payload": payload, "spans_per_run": spans, "runs": runs, "median_spans_per_s": rate,
            "median_cpu_us_per_span": cpu,
            "throughput_change_pct": round((rate["on"] - rate["off"]) / rate["off"] * 100, 1),
            "cpu_change_pct": round((cpu["on"] - cpu["off"]) / cpu["off"] * 100, 1)}


def large_payload(size: int) -> str:
    paragraph = ("Step 14: the agent re-reads https://docs.example.com/api/v2/orders?page=3 and compares the totals "
                 "with the ledger; {\"order_id\": \"3f2b9c4e\", \"amount\": 1299, \"currency\": \"EUR\"} matches, so "
                 "it moves on to the refunds, noting the token budget and the key risks for the summary.\n")
    return (paragraph * (size // len(paragraph) + 1))[:size]


def one_span_request(payload: str) -> bytes:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    request = ExportTraceServiceRequest()
    span = Span(trace_id=os.urandom(16), span_id=os.urandom(8), name="chat", start_time_unix_nano=time.time_ns(),
                end_time_unix_nano=time.time_ns() + 1)
    span.attributes.append(KeyValue(key="gen_ai.output.messages", value=AnyValue(string_value=payload)))
    request.resource_spans.add().scope_spans.add().spans.append(span)
    return request.SerializeToString()


def best_of(repeats: int, work) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        work()
        times.append(time.perf_counter() - began)
    return min(times)


def measure_large(size: int, repeats: int) -> dict:
    clean = large_payload(size)
    middle = len(clean) // 2
    dirty = clean[:middle] + GITHUB_TOKEN + clean[middle + len(GITHUB_TOKEN):-len(AWS_KEY_ID)] + AWS_KEY_ID
    stored, found = scan(dirty, POLICY)
    assert [f.secret_type for f in found] == ["github_token", "aws_access_key"] and GITHUB_TOKEN not in stored
    out = {"payload_bytes": len(clean), "repeats": repeats, "seconds": {}}
    otlp.warm_up()
    for name, text in (("no_secret", clean), ("two_secrets", dirty)):
        body = one_span_request(text)
        out["seconds"][name] = {
            "scan_and_redact": round(best_of(repeats, lambda: scan(text, POLICY)), 4),
            "convert_on": round(best_of(repeats, lambda: otlp.convert("traces", body, False, None, None, POLICY)), 4),
            "convert_off": round(best_of(repeats, lambda: otlp.convert("traces", body, False, None, None, None)), 4),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("all", "convert", "ingest", "large"), default="all")
    parser.add_argument("--rounds", type=int, default=0, help="alternating rounds (default 9 convert, 2 ingest)")
    parser.add_argument("--spans", type=int, default=100_000, help="spans per ingest run")
    parser.add_argument("--large-bytes", type=int, default=8 << 20)
    parser.add_argument("--payload", choices=("words", "links", "secrets"), default="words",
                        help="1 KB payloads of words; opening with a link and a JSON record of ids; and with a "
                             "secret in one span of each request")
    parser.add_argument("--serve", choices=("on", "off"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.data)
        return
    result = {"cores": os.cpu_count()}
    if args.part in ("all", "convert"):
        result["convert_1kb"] = measure_convert(args.rounds or 9, 512 * 20, args.payload)
    if args.part in ("all", "large"):
        result["large"] = measure_large(args.large_bytes, 3)
    if args.part in ("all", "ingest"):
        result["ingest_1kb"] = measure_ingest(args.rounds or 2, args.spans, args.payload)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
