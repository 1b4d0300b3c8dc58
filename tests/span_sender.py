"""Agents in another process, sending spans as fast as a stock OpenTelemetry SDK exports them.

    python -m tests.span_sender --endpoint http://127.0.0.1:4318 [--endpoint URL ...] --spans 40000

Each thread stands for one agent service: its own TracerProvider (resource
`service.name`, `agentwatch.tenant.id`: tenants in turn) with a
BatchSpanProcessor and an OTLPSpanExporter (OTLP/HTTP protobuf) to one of the
endpoints in turn (`--first` numbers the threads on from another sender
process), so the traffic is split between the receivers. The threads make agent traces (`invoke_agent` root, `chat` and
`execute_tool` children); every third tool call carries an
`agentwatch.credential.use` event. Nothing else is imported: no agentwatch
code runs here.

The export queue holds a thread's whole share, so the SDK drops nothing; the
exporter counts what the receivers acknowledged (HTTP 200; 503 is retried by
the exporter). Prints one JSON object on stdout: spans and credential events
created, exported, failed, dropped, seconds.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
from opentelemetry.trace import SpanKind

CREDENTIAL_USE = "agentwatch.credential.use"
TOOLS = ("search", "read_file", "sql_query", "http_get")


class CountingExporter(OTLPSpanExporter):
    """The stock exporter, counting the spans and credential events of acknowledged requests."""

    def __init__(self, endpoint: str, totals: dict, lock: threading.Lock) -> None:
        super().__init__(endpoint=endpoint, timeout=60)
        self.totals = totals
        self.lock = lock

    def export(self, spans):
        result = super().export(spans)
        events = sum(1 for s in spans for e in s.events if e.name == CREDENTIAL_USE)
        with self.lock:
            outcome = "exported" if result is SpanExportResult.SUCCESS else "failed"
            self.totals[f"spans_{outcome}"] += len(spans)
            self.totals[f"credential_events_{outcome}"] += events
            self.totals["requests"] += 1
        return result


def agent_traces(tracer, tenant: str, thread: int, quota: int, payload_bytes: int, made: dict) -> None:
    """Agent traces until `quota` spans are made: a root, then model and tool calls under it (the model
    calls with their output message, `payload_bytes` of text)."""
    words = "the agent read the ticket and decided to search the knowledge base again because".split()
    text = " ".join(words[(thread + i) % len(words)] for i in range(payload_bytes // 5 + 1))[:payload_bytes]
    n = 0
    trace_no = 0
    while n < quota:
        trace_no += 1
        agent = f"agent-{tenant}-{thread}-{trace_no % 25}"
        calls = min(quota - n - 1, 5 + trace_no % 10)
        with tracer.start_as_current_span("invoke_agent triage", kind=SpanKind.INTERNAL, attributes={
                "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.id": agent,
                "gen_ai.agent.name": "triage"}):
            n += 1
            for call in range(calls):
                if call % 2 == 0:
                    with tracer.start_as_current_span("chat gpt-4o-mini", kind=SpanKind.CLIENT, attributes={
                            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                            "gen_ai.request.model": "gpt-4o-mini", "gen_ai.response.model": "gpt-4o-mini",
                            "gen_ai.usage.input_tokens": 800 + (n * 37) % 900,
                            "gen_ai.usage.output_tokens": 100 + (n * 13) % 300,
                            "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [
                                {"type": "text", "content": f"{n} {text}"}]}])}):
                        pass
                else:
                    tool = TOOLS[(n + call) % len(TOOLS)]
                    with tracer.start_as_current_span(f"execute_tool {tool}", attributes={
                            "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool,
                            "gen_ai.tool.call.arguments": json.dumps({"q": f"{thread}-{trace_no}-{call}"})}) as span:
                        if call % 3 == 1:
                            span.add_event(CREDENTIAL_USE, {
                                "agentwatch.credential.id": f"key-{tenant}-{thread}",
                                "agentwatch.credential.tenant.id": tenant,
                                "agentwatch.credential.scope": "read",
                                "agentwatch.resource.name": f"s3://{tenant}/docs/{call}",
                                "agentwatch.resource.tenant.id": tenant,
                                "agentwatch.credential.action": "read"})
                            made["credential_events"] += 1
                n += 1
    made["spans"] += n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", action="append", required=True,
                        help="receiver base URL (repeat to split the threads between receivers)")
    parser.add_argument("--spans", type=int, default=40_000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--tenants", type=int, default=3)
    parser.add_argument("--payload-bytes", type=int, default=1024, help="text of each model call's output")
    parser.add_argument("--batch-spans", default="512", help="the processors' max_export_batch_size (a "
                        "comma-separated list: to the threads in turn)")
    parser.add_argument("--first", type=int, default=0, help="number of the first thread (several processes)")
    args = parser.parse_args()

    lock = threading.Lock()
    totals = dict.fromkeys(("spans_exported", "spans_failed", "credential_events_exported",
                            "credential_events_failed", "requests"), 0)
    made = [{"spans": 0, "credential_events": 0} for _ in range(args.threads)]
    batch_sizes = [int(size) for size in args.batch_spans.split(",")]
    providers = []
    threads = []
    for i in range(args.threads):
        number = args.first + i
        tenant = f"tenant-{number % args.tenants}"
        endpoint = args.endpoint[number % len(args.endpoint)].rstrip("/") + "/v1/traces"
        quota = args.spans // args.threads + (1 if i < args.spans % args.threads else 0)
        provider = TracerProvider(resource=Resource.create({"service.name": f"agent-service-{number}",
                                                            "agentwatch.tenant.id": tenant}))
        processor = BatchSpanProcessor(CountingExporter(endpoint, totals, lock), max_queue_size=quota + 1,
                                       max_export_batch_size=batch_sizes[number % len(batch_sizes)],
                                       schedule_delay_millis=100)
        provider.add_span_processor(processor)
        providers.append(provider)
        threads.append(threading.Thread(target=agent_traces, args=(provider.get_tracer("agents"), tenant, number,
                                                                     quota, args.payload_bytes, made[i])))
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    created = time.perf_counter() - started
    for provider in providers:
        provider.shutdown()  # exports what is queued
    spans = sum(m["spans"] for m in made)
    events = sum(m["credential_events"] for m in made)
    print(json.dumps({
        **totals, "spans_created": spans, "credential_events_created": events,
        "spans_dropped": spans - totals["spans_exported"] - totals["spans_failed"],
        "seconds_creating": round(created, 2), "seconds": round(time.perf_counter() - started, 2)}), flush=True)


if __name__ == "__main__":
    main()
