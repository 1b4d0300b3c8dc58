"""An OTLP/HTTP exporter that keeps a ledger: which requests were acknowledged.

Each request carries `spans` model-call spans (GenAI attributes, an output
message of `payload_bytes`) whose ids encode the request's number, so the store
can be checked request by request. Threads post requests in turn as fast as
the receiver answers, over keep-alive connections. A request that fails (the
connection refused or reset, a 503) is retried with the same body after a
doubling backoff, as an OTLP exporter does, until it is acknowledged; or, at
each failure with probability `abandon`, given
up and recorded as never acknowledged, as an exporter whose retry budget ran
out.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from urllib.parse import urlparse

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

T0 = 1_764_547_200_000_000_000  # 2025-12-01 00:00 UTC in ns


def _attribute(key: str, value) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def trace_id(request: int) -> bytes:
    return (request + 1).to_bytes(16, "big")


def request_body(request: int, spans: int, payload_bytes: int, tenants: int = 3) -> bytes:
    tenant = f"tenant-{request % tenants}"
    text = (f"request {request} " * (payload_bytes // 8 + 1))[:payload_bytes]
    resource_spans = ResourceSpans()
    resource_spans.resource.attributes.extend([_attribute("service.name", f"agent-{request % 7}"),
                                               _attribute("agentwatch.tenant.id", tenant)])
    scope = ScopeSpans()
    scope.scope.name = "crash-sender"
    for i in range(spans):
        start = T0 + request * 1_000_000_000 + i * 1_000_000
        scope.spans.append(Span(
            trace_id=trace_id(request), span_id=(i + 1).to_bytes(8, "big"), name="chat gpt-4o-mini",
            kind=Span.SPAN_KIND_CLIENT, start_time_unix_nano=start, end_time_unix_nano=start + 900_000,
            attributes=[_attribute("gen_ai.operation.name", "chat"), _attribute("gen_ai.provider.name", "openai"),
                        _attribute("gen_ai.request.model", "gpt-4o-mini"),
                        _attribute("gen_ai.agent.id", f"agent-{request % 7}"),
                        _attribute("gen_ai.usage.input_tokens", 1000), _attribute("gen_ai.usage.output_tokens", 100),
                        _attribute("gen_ai.output.messages", json.dumps(
                            [{"role": "assistant", "parts": [{"type": "text", "content": text}]}]))]))
    resource_spans.scope_spans.append(scope)
    return ExportTraceServiceRequest(resource_spans=[resource_spans]).SerializeToString()


class RetryingSender:
    def __init__(self, endpoint: str, requests: int, *, spans: int = 50, payload_bytes: int = 512,
                 threads: int = 4, abandon: float = 0.1, seed: int = 0) -> None:
        parsed = urlparse(endpoint)
        self.host, self.port = parsed.hostname, parsed.port
        self.requests, self.spans, self.payload_bytes = requests, spans, payload_bytes
        self.abandon = abandon
        self.acknowledged: set[int] = set()
        self.abandoned: set[int] = set()
        self.failures = 0
        self._random = random.Random(seed)
        self._next = 0
        self._lock = threading.Condition()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self) -> RetryingSender:
        for thread in self._threads:
            thread.start()
        return self

    def join(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def wait_acknowledged(self, count: int, timeout_s: float) -> bool:
        """Until `count` requests in all are acknowledged (or the sender is done)."""
        with self._lock:
            return self._lock.wait_for(lambda: len(self.acknowledged) >= count or self._next >= self.requests
                                       and not any(t.is_alive() for t in self._threads), timeout_s)

    def _take(self) -> int | None:
        with self._lock:
            if self._next >= self.requests:
                return None
            self._next += 1
            return self._next - 1

    def _run(self) -> None:
        connection = None
        while (request := self._take()) is not None:
            body = request_body(request, self.spans, self.payload_bytes)
            backoff = 0.05
            while True:
                try:
                    if connection is None:
                        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
                    connection.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
                    response = connection.getresponse()
                    response.read()
                    status = response.status
                except (OSError, http.client.HTTPException):
                    connection.close()
                    connection = None
                    status = None
                if status == 200:
                    with self._lock:
                        self.acknowledged.add(request)
                        self._lock.notify_all()
                    break
                with self._lock:
                    self.failures += 1
                    give_up = self._random.random() < self.abandon
                    if give_up:
                        self.abandoned.add(request)
                if give_up:
                    break
                time.sleep(backoff)  # an exporter's retry backoff, doubling
                backoff = min(backoff * 2, 1.0)
        with self._lock:
            self._lock.notify_all()
