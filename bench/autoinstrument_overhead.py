"""Per-call overhead of an auto-instrumented model call, beside a bare call and beside other
projects' instrumentation of the same client, measured in the same run.

The `openai` client calls a provider on loopback (tests/provider_server.py: an OpenAI-compatible
chat completions endpoint, whole and streamed with usage in the final chunk) through its own HTTP
client. Contenders, one at a time, on the same client:

  bare                  no instrumentation (the reference)
  agentwatch            what `agentwatch.init()` enables for openai (the official openai-v2
                        instrumentation, content captured, on agentwatch's provider and processors)
  agentwatch_llm        the same, the call inside an `@agentwatch.llm` function (the decorator reads
                        the response; the instrumentation's span is folded into the decorator's)
  openllmetry           OpenLLMetry's openai instrumentor (opentelemetry-instrumentation-openai)
  openinference         OpenInference's openai instrumentor

Fairness: every contender's spans go through a BatchSpanProcessor (agentwatch's own subclass for
agentwatch) into an in-process exporter that counts and discards them; content capture is on for
all. The instrumentors patch the `openai` module, so contenders cannot run at once: each
repetition instruments one, makes N calls, flushes and uninstruments it. Each repetition is
bracketed by a fresh bare repetition; the overhead is the median over repetitions of (contender -
mean of its two bare brackets), per call. OpenLLMetry's instrumentor cannot be removed once
applied (its uninstrument leaves its wrappers in place, still recording), so it runs last, once
applied, against the median of the bare repetitions before it. OpenLIT is not measured: its SDK
instruments every installed library at once and brings its own exporters; OpenLLMetry's
instrumentor stands for that family.

    python bench/autoinstrument_overhead.py [--calls 300] [--repeats 7]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

os.environ["OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"] = "SPAN_ONLY"
os.environ["TRACELOOP_TRACE_CONTENT"] = "true"
os.environ["TRACELOOP_METRICS_ENABLED"] = "false"  # spans only, for every contender

import openai  # noqa: E402
from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import SpanLimits, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult  # noqa: E402

import agentwatch  # noqa: E402
from agentwatch.collector.sdk import instrumentors  # noqa: E402
from agentwatch.collector.sdk.telemetry import DropCountingBatchSpanProcessor  # noqa: E402
from tests.provider_server import ANSWER, ProviderServer  # noqa: E402

QUEUE_SIZE = 1 << 16
MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Summarise the incident report for ticket 4711."}]


class DiscardingExporter(SpanExporter):
    def __init__(self) -> None:
        self.exported = 0

    def export(self, spans) -> SpanExportResult:
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


@dataclass
class Contender:
    name: str
    setup: Callable[[], None]
    teardown: Callable[[], None]
    provider: object = None
    exporter: DiscardingExporter | None = None
    wrap: Callable | None = None  # a decorator put around the call
    samples: list[float] = field(default_factory=list)  # ns per call
    overheads: list[float] = field(default_factory=list)  # ns per call over the bracketing bare runs
    spans_per_call: float = 0.0


def batch_provider(provider: TracerProvider | None = None) -> tuple[TracerProvider, DiscardingExporter]:
    exporter = DiscardingExporter()
    provider = provider or TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=QUEUE_SIZE, max_export_batch_size=512))
    return provider, exporter


def build() -> list[Contender]:
    nothing = lambda: None  # noqa: E731
    contenders = [Contender("bare", nothing, nothing)]

    # agentwatch: the provider init() builds, its processors, the OTLP exporter swapped for ours.
    aw_exporter = DiscardingExporter()
    aw_provider = TracerProvider(resource=Resource.create({"service.name": "bench"}), span_limits=SpanLimits(
        max_attribute_length=SpanLimits.UNSET, max_span_attribute_length=SpanLimits.UNSET,
        max_events=SpanLimits.UNSET))
    telemetry = agentwatch.init("bench", tracer_provider=aw_provider, gpu_interval=None, instrument=False)
    telemetry.folder.fold = True  # our exporter is added below, as init adds it when it exports
    aw_provider.add_span_processor(DropCountingBatchSpanProcessor(aw_exporter, QUEUE_SIZE, telemetry.folder))
    choice = instrumentors.wanted(["openai"])

    def aw_setup():
        done = instrumentors.instrument(choice, aw_provider)
        assert done == {"openai": "opentelemetry-instrumentation-openai-v2"}, done

    for name, wrap in (("agentwatch", None), ("agentwatch_llm", agentwatch.llm())):
        contenders.append(Contender(name, aw_setup, instrumentors.uninstrument, aw_provider, aw_exporter, wrap))

    from openinference.instrumentation.openai import OpenAIInstrumentor as OpenInference
    from opentelemetry.instrumentation.openai import OpenAIInstrumentor as OpenLLMetry

    oi_provider, oi_exporter = batch_provider()
    contenders.append(Contender("openinference", lambda: OpenInference().instrument(tracer_provider=oi_provider),
                                lambda: OpenInference().uninstrument(), oi_provider, oi_exporter))
    # Last (see the module's doc): applied once, never removed.
    ollm_provider, ollm_exporter = batch_provider()
    applied = []

    def openllmetry_setup():
        if not applied:
            OpenLLMetry().instrument(tracer_provider=ollm_provider)
            applied.append(True)

    contenders.append(Contender("openllmetry", openllmetry_setup, nothing, ollm_provider, ollm_exporter))
    return contenders


def make_call(client: openai.OpenAI, stream: bool) -> Callable[[], str]:
    if not stream:
        def whole(messages):
            return client.chat.completions.create(model=MODEL, messages=messages)
        return whole

    def streamed(messages):
        return client.chat.completions.create(model=MODEL, messages=messages, stream=True,
                                              stream_options={"include_usage": True})
    return streamed


def answer(result, stream: bool) -> str:
    if stream:
        return "".join(c.choices[0].delta.content or "" for c in result if c.choices)
    return result.choices[0].message.content


def run_one(contender: Contender, client: openai.OpenAI, stream: bool, calls: int) -> float:
    contender.setup()
    try:
        call = make_call(client, stream)
        if contender.wrap is not None:
            call = contender.wrap(call)
        assert answer(call(MESSAGES), stream) == ANSWER  # warm: connection, instrumentation caches
        before = contender.exporter.exported if contender.exporter else 0
        if contender.provider is not None:
            contender.provider.force_flush()
            before = contender.exporter.exported
        started = time.perf_counter_ns()
        for _ in range(calls):
            answer(call(MESSAGES), stream)
        elapsed = time.perf_counter_ns() - started
        if contender.provider is not None:
            contender.provider.force_flush()
            contender.spans_per_call = (contender.exporter.exported - before) / calls
    finally:
        contender.teardown()
    return elapsed / calls


def measure(stream: bool, calls: int, repeats: int) -> list[Contender]:
    contenders = build()
    bare, others, last = contenders[0], contenders[1:-1], contenders[-1]
    server = ProviderServer()
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="bench", max_retries=0)
    try:
        for _ in range(repeats):
            for contender in others:
                before = run_one(bare, client, stream, calls)
                value = run_one(contender, client, stream, calls)
                after = run_one(bare, client, stream, calls)
                bare.samples.extend((before, after))
                contender.samples.append(value)
                contender.overheads.append(value - (before + after) / 2)
        reference = statistics.median(bare.samples)
        for _ in range(repeats):
            value = run_one(last, client, stream, calls)
            last.samples.append(value)
            last.overheads.append(value - reference)
    finally:
        server.stop()
        agentwatch.shutdown()
    return contenders


def report(stream: bool, calls: int, repeats: int) -> None:
    contenders = measure(stream, calls, repeats)
    print(f"\n{'streamed' if stream else 'whole'} chat completion, loopback provider")
    print(f"{'contender':<16}{'µs/call':>10}{'overhead µs':>14}{'spans/call':>12}")
    for contender in contenders:
        overhead = statistics.median(contender.overheads) / 1000 if contender.overheads else 0.0
        spans = "" if contender.provider is None else f"{contender.spans_per_call:.2f}"
        print(f"{contender.name:<16}{statistics.median(contender.samples) / 1000:>10.0f}{overhead:>14.1f}{spans:>12}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--streamed-only", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.streamed_only:
        report(True, options.calls, options.repeats)
        return
    versions = {name: importlib.metadata.version(name) for name in (
        "openai", "opentelemetry-sdk", "opentelemetry-instrumentation-openai-v2",
        "opentelemetry-instrumentation-openai", "openinference-instrumentation-openai")}
    print(json.dumps({"python": platform.python_version(), "cpus": os.cpu_count(), "calls": options.calls,
                      "repeats": options.repeats, "versions": versions}))
    report(False, options.calls, options.repeats)
    sys.stdout.flush()
    # OpenLLMetry stays applied once it ran: the streamed measurements start in a fresh process.
    subprocess.run([sys.executable, __file__, "--calls", str(options.calls), "--repeats", str(options.repeats),
                    "--streamed-only"], check=True)


if __name__ == "__main__":
    main()
