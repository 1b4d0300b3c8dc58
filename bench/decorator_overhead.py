"""Per-call overhead of tracing decorators, as a ratio to a bare OpenTelemetry SDK span.

Contenders, measured in the same run, on the same decorated function
(`work(query, k) -> small dict`), called once per iteration:

  bare_call            the undecorated function (reference floor)
  otel_span            `with tracer.start_as_current_span("x"): return work(...)`
                       on an SDK TracerProvider (the 1.0x reference)
  otel_span_manual_tool  the same span written by hand with the attributes
                       @agentwatch.tool records (what the attributes cost in OTel)
  agentwatch_*         @agentwatch.agent / tool / llm / span, content capture on
                       (default) and off (capture=False), and on async functions
  langfuse_observe*    langfuse's @observe (runs on OpenTelemetry)
  phoenix_*            OpenInference tracer.agent / tool / chain (arize-phoenix-otel)

Fairness: every contender gets its own TracerProvider whose only exporting
processor is a BatchSpanProcessor (the library's own subclass where it has one:
agentwatch's DropCountingBatchSpanProcessor, langfuse's LangfuseSpanProcessor)
with the same large queue and batch size, feeding an in-process exporter that
counts and discards spans. Nothing reaches the network. agentwatch is set up
the way `agentwatch.init()` sets up its own provider (same SpanLimits, its
AgentScopeSpanProcessor, then its batch processor); only the OTLP exporter is
replaced. Repetitions are interleaved across contenders; each is N calls,
timed as a whole, then the provider is flushed so no queue ever fills. Each
is bracketed by fresh measurements of the reference span, and the ratio is
the median of the per-repetition ratios (robust to the machine's speed
drifting during the run); ns per call is the median repetition. Spans
missing from the exporter after a flush are reported as dropped.

    python bench/decorator_overhead.py [--calls 1500] [--repeats 11]
    python bench/decorator_overhead.py --profile agentwatch_tool   # cProfile one contender (stderr)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

QUEUE_SIZE = 1 << 17  # far above --calls: a repetition never fills a queue
BATCH_SIZE = 512
# langfuse builds its BatchSpanProcessor without a max_queue_size argument: it reads these.
os.environ["OTEL_BSP_MAX_QUEUE_SIZE"] = str(QUEUE_SIZE)
os.environ["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"] = str(BATCH_SIZE)
os.environ.setdefault("LANGFUSE_MEDIA_UPLOAD_ENABLED", "false")
UNREACHABLE = "http://127.0.0.1:9"  # discard port on loopback; nothing is ever sent there

from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import SpanLimits, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult  # noqa: E402

QUERY = "weather in Paris"
K = 3


def work(query: str, k: int) -> dict:
    return {"query": query, "k": k, "ok": True}


async def awork(query: str, k: int) -> dict:
    return {"query": query, "k": k, "ok": True}


class DiscardingExporter(SpanExporter):
    """Counts spans and drops them, in-process. Keeps the last one to report its attribute count."""

    def __init__(self) -> None:
        self.exported = 0
        self.last = None

    def export(self, spans) -> SpanExportResult:
        self.exported += len(spans)
        if spans:
            self.last = spans[-1]
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


@dataclass
class Contender:
    name: str
    fn: Callable
    is_async: bool = False
    provider: object = None  # flushed after each repetition
    exporter: DiscardingExporter | None = None
    samples: list[float] = field(default_factory=list)  # ns per call, one per repetition
    ratios: list[float] = field(default_factory=list)  # to the bracketing otel_span measurements
    async_ratios: list[float] = field(default_factory=list)  # to the bracketing otel_span_async ones
    dropped: int = 0
    attributes: int | None = None


def otel_provider(provider_cls=TracerProvider, **kwargs) -> tuple[object, DiscardingExporter]:
    exporter = DiscardingExporter()
    provider = provider_cls(**kwargs)
    provider.add_span_processor(
        BatchSpanProcessor(exporter, max_queue_size=QUEUE_SIZE, max_export_batch_size=BATCH_SIZE)
    )
    return provider, exporter


def build_contenders(only: str | None) -> tuple[list[Contender], dict]:
    contenders: list[Contender] = []
    versions: dict = {}

    def add(c: Contender) -> None:
        if only is None or c.name == only or c.name in ("bare_call", "otel_span"):
            contenders.append(c)

    # -- references -----------------------------------------------------------
    add(Contender("bare_call", work))

    otel_tp, otel_exp = otel_provider()
    otel_tracer = otel_tp.get_tracer("bench")

    def otel_span(query, k):
        with otel_tracer.start_as_current_span("x"):
            return work(query, k)

    async def otel_span_async(query, k):
        with otel_tracer.start_as_current_span("x"):
            return await awork(query, k)

    add(Contender("otel_span", otel_span, provider=otel_tp, exporter=otel_exp))
    import orjson

    def otel_span_manual_tool(query, k):
        # What @agentwatch.tool records, written by hand against the OTel API:
        # the cost of the attributes themselves, without any decorator.
        with otel_tracer.start_as_current_span("execute_tool search", attributes={
                "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"}) as span:
            span.set_attribute("gen_ai.tool.call.arguments", orjson.dumps({"query": query, "k": k}).decode())
            result = work(query, k)
            span.set_attribute("gen_ai.tool.call.result", orjson.dumps(result).decode())
            return result

    add(Contender("otel_span_manual_tool", otel_span_manual_tool, provider=otel_tp, exporter=otel_exp))
    add(Contender("bare_call_async", awork, is_async=True))
    add(Contender("otel_span_async", otel_span_async, True, otel_tp, otel_exp))

    # -- agentwatch: the provider init() would build, with the OTLP exporter swapped for ours ----------
    import agentwatch
    from agentwatch.collector.sdk.telemetry import DropCountingBatchSpanProcessor

    aw_exp = DiscardingExporter()
    aw_tp = TracerProvider(
        resource=Resource.create({"service.name": "bench"}),
        span_limits=SpanLimits(
            max_attribute_length=SpanLimits.UNSET,
            max_span_attribute_length=SpanLimits.UNSET,
            max_events=SpanLimits.UNSET,
        ),
    )
    agentwatch.init("bench", tracer_provider=aw_tp, gpu_interval=None)  # adds AgentScopeSpanProcessor
    aw_tp.add_span_processor(DropCountingBatchSpanProcessor(aw_exp, QUEUE_SIZE))  # as init() adds it, after

    kinds = {
        "agent": lambda **kw: agentwatch.agent("planner", **kw),
        "tool": lambda **kw: agentwatch.tool("search", **kw),
        "llm": lambda **kw: agentwatch.llm(model="gpt-4o-mini", provider="openai", **kw),
        "span": lambda **kw: agentwatch.span("step", **kw),
    }
    for kind, make in kinds.items():
        add(Contender(f"agentwatch_{kind}", make()(work), provider=aw_tp, exporter=aw_exp))
    for kind, make in kinds.items():
        add(Contender(f"agentwatch_{kind}_nocapture", make(capture=False)(work), provider=aw_tp, exporter=aw_exp))
    for kind, make in kinds.items():
        add(Contender(f"agentwatch_{kind}_async", make()(awork), True, aw_tp, aw_exp))

    # -- langfuse @observe: its own LangfuseSpanProcessor (a BatchSpanProcessor) on our provider ------
    from langfuse import Langfuse, observe

    lf_exp = DiscardingExporter()
    lf_tp = TracerProvider()
    Langfuse(
        public_key="pk-lf-bench",
        secret_key="sk-lf-bench",
        base_url=UNREACHABLE,
        tracer_provider=lf_tp,
        span_exporter=lf_exp,
        flush_at=BATCH_SIZE,
    )
    add(Contender("langfuse_observe", observe(name="step")(work), provider=lf_tp, exporter=lf_exp))
    add(Contender("langfuse_observe_tool", observe(name="search", as_type="tool")(work), provider=lf_tp,
                  exporter=lf_exp))
    add(Contender("langfuse_observe_nocapture", observe(name="step", capture_input=False,
                                                        capture_output=False)(work),
                  provider=lf_tp, exporter=lf_exp))
    add(Contender("langfuse_observe_async", observe(name="step")(awork), True, lf_tp, lf_exp))

    # -- OpenInference decorators through phoenix.otel's TracerProvider --------------------------------
    from phoenix.otel import TracerProvider as PhoenixTracerProvider

    # The endpoint only builds the default (Simple) processor, which add_span_processor replaces.
    ph_tp, ph_exp = otel_provider(PhoenixTracerProvider, endpoint=f"{UNREACHABLE}/v1/traces", verbose=False)
    ph_tracer = ph_tp.get_tracer("bench")
    add(Contender("phoenix_agent", ph_tracer.agent(name="planner")(work), provider=ph_tp, exporter=ph_exp))
    add(Contender("phoenix_tool", ph_tracer.tool(name="search")(work), provider=ph_tp, exporter=ph_exp))
    add(Contender("phoenix_chain", ph_tracer.chain(name="step")(work), provider=ph_tp, exporter=ph_exp))
    add(Contender("phoenix_agent_async", ph_tracer.agent(name="planner")(awork), True, ph_tp, ph_exp))

    v = importlib.metadata.version
    versions = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "opentelemetry_sdk": v("opentelemetry-sdk"),
        "langfuse": v("langfuse"),
        "arize_phoenix_otel": v("arize-phoenix-otel"),
        "openinference_instrumentation": v("openinference-instrumentation"),
        "agentwatch": v("agentwatch"),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }
    return contenders, versions


def run_sync(fn: Callable, n: int) -> int:
    start = time.perf_counter_ns()
    for _ in range(n):
        fn(QUERY, K)
    return time.perf_counter_ns() - start


async def _run_async(fn: Callable, n: int) -> int:
    start = time.perf_counter_ns()
    for _ in range(n):
        await fn(QUERY, K)
    return time.perf_counter_ns() - start


def run(c: Contender, n: int, loop: asyncio.AbstractEventLoop) -> int:
    if c.is_async:
        return loop.run_until_complete(_run_async(c.fn, n))
    return run_sync(c.fn, n)


def flush_and_count(c: Contender, before: int, expected: int) -> None:
    if c.provider is None:
        return
    c.provider.force_flush(60_000)
    got = c.exporter.exported - before
    c.dropped += max(0, expected - got)
    if c.exporter.last is not None:
        c.attributes = len(c.exporter.last.attributes or {})


def measure(c: Contender, n: int, loop) -> float:
    before = c.exporter.exported if c.exporter else 0
    gc.collect()
    elapsed = run(c, n, loop)
    flush_and_count(c, before, n)
    return elapsed / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1_500, help="calls per repetition")
    parser.add_argument("--repeats", type=int, default=11, help="repetitions per contender (median reported)")
    parser.add_argument("--warmup", type=int, default=1_000, help="untimed calls per contender first")
    parser.add_argument("--profile", metavar="CONTENDER", help="cProfile this contender's calls to stderr instead")
    args = parser.parse_args()
    if args.calls > QUEUE_SIZE:
        parser.error(f"--calls must be at most {QUEUE_SIZE} (the queue size), so no queue can fill")

    warnings.simplefilter("ignore")
    contenders, versions = build_contenders(args.profile)
    loop = asyncio.new_event_loop()
    wall = time.perf_counter()

    for c in contenders:  # warm-up: imports, caches, first-call paths, exporter threads
        measure(c, args.warmup, loop)
        c.dropped = 0

    if args.profile:
        import cProfile
        import pstats

        (c,) = [c for c in contenders if c.name == args.profile]
        profiler = cProfile.Profile()
        profiler.enable()
        run(c, args.calls, loop)
        profiler.disable()
        c.provider.force_flush(60_000)
        print(f"{c.name}: {args.calls} calls profiled; divide seconds by that for per-call cost", file=sys.stderr)
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(30)
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats("collector/sdk")
        return

    by_name = {c.name: c for c in contenders}
    refs = (by_name["otel_span"], by_name["otel_span_async"])
    ref_calls = args.calls  # same batch length as the contenders: same GC and export rhythm

    def measure_refs() -> tuple[float, float]:
        return measure(refs[0], ref_calls, loop), measure(refs[1], ref_calls, loop)

    # Interleaved rounds, order rotated; every measurement is bracketed by fresh measurements of the
    # reference spans (sync and async) so its ratio is taken against the machine as it was right then:
    # on a shared VM the speed drifts by up to 2x over seconds, which would otherwise skew the ratios.
    for rep in range(args.repeats):
        shift = rep % len(contenders)
        before = measure_refs()
        for c in contenders[shift:] + contenders[:shift]:
            ns = measure(c, args.calls, loop)
            after = measure_refs()
            c.samples.append(ns)
            c.ratios.append(ns / ((before[0] + after[0]) / 2))
            c.async_ratios.append(ns / ((before[1] + after[1]) / 2))
            before = after

    results = {}
    for c in contenders:
        row = {
            "ns_per_call": round(statistics.median(c.samples), 1),
            "ratio_to_otel_span": round(statistics.median(c.ratios), 3),
        }
        if c.is_async:
            row["ratio_to_otel_span_async"] = round(statistics.median(c.async_ratios), 3)
        row["spread_ns"] = [round(min(c.samples), 1), round(max(c.samples), 1)]
        if c.provider is not None:
            row["span_attributes"] = c.attributes
            row["dropped_spans"] = c.dropped
        results[c.name] = row

    target = 1.3
    agentwatch_rows = {
        name: row["ratio_to_otel_span_async" if name.endswith("_async") else "ratio_to_otel_span"]
        for name, row in results.items()
        if name.startswith("agentwatch_")
    }
    worst = max(agentwatch_rows, key=agentwatch_rows.get)
    report = {
        "calls_per_repeat": args.calls,
        "repeats": args.repeats,
        "statistic": "ns_per_call: median over repeats (loop included); ratio_*: median over repeats of "
                     "ns_per_call / the reference span measured just before and after it (async contenders "
                     "also against the span in an async function)",
        "processor": f"BatchSpanProcessor(max_queue_size={QUEUE_SIZE}, max_export_batch_size={BATCH_SIZE}) "
                     "-> in-process discarding exporter, one TracerProvider per library",
        "environment": versions,
        "results": results,
        "agentwatch_target": {
            "max_ratio": target,
            "worst": worst,
            "worst_ratio": agentwatch_rows[worst],
            "met": agentwatch_rows[worst] <= target,
            "over_target": sorted(n for n, r in agentwatch_rows.items() if r > target),
        },
        "total_dropped_spans": sum(c.dropped for c in contenders),
        "wall_s": round(time.perf_counter() - wall, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
