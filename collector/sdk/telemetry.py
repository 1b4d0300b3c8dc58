"""OpenTelemetry setup for an agent process: `init`, `flush`, `shutdown`.

Export goes through the OpenTelemetry SDK's BatchSpanProcessor: a bounded
queue drained by a background thread, so the agent never waits on the network
and an export failure never reaches its code.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from agentwatch.schemas.attributes import GEN_AI_AGENT_ID, GEN_AI_AGENT_NAME, GEN_AI_OPERATION_NAME, TENANT_ID

from . import guard as guarding
from . import instrumentors, normalize, redaction
from .folding import ModelSpanFolder, with_attributes
from .forwarding import FRAMEWORK_TRACERS
from .gpu import GpuSampler
from .settings import AGENT_PARENT_ID, TRACER_NAME, current_scope, settings, warn_once

DEFAULT_HTTP_ENDPOINT = "http://127.0.0.1:4318"
DEFAULT_GRPC_ENDPOINT = "http://127.0.0.1:4317"
PROTOCOLS = ("http/protobuf", "grpc")
MAX_EXPORT_BATCH_SIZE = 512
EXPORT_DELAY_MS = 500  # batch export delay (OTel default 5000): spans leave within half a second


class AgentScopeSpanProcessor(SpanProcessor):
    """Stamps every span started inside an agent, ours or any instrumentation's
    (openai-v2, OpenInference, ...), with that agent and the tenant."""

    def __init__(self, default_tenant: str | None = None) -> None:
        self.default_tenant = default_tenant  # tenant of init() when joining an app's provider

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        try:
            scope = current_scope(parent_context)
            tenant = scope.tenant or self.default_tenant
            if tenant is None and scope.agent_id is None:
                return  # outside agentwatch.tenant() and any agent: nothing to stamp
            attributes = span.attributes
            if tenant is not None and TENANT_ID not in attributes:
                span.set_attribute(TENANT_ID, tenant)
            if scope.agent_id is None:
                return
            own_agent_id = attributes.get(GEN_AI_AGENT_ID)
            if attributes.get(GEN_AI_OPERATION_NAME) == "invoke_agent":
                # A sub-agent: link it to the agent that started it.
                if own_agent_id and own_agent_id != scope.agent_id and AGENT_PARENT_ID not in attributes:
                    span.set_attribute(AGENT_PARENT_ID, scope.agent_id)
            elif not own_agent_id:
                span.set_attribute(GEN_AI_AGENT_ID, scope.agent_id)
                if scope.agent_name and GEN_AI_AGENT_NAME not in attributes:
                    span.set_attribute(GEN_AI_AGENT_NAME, scope.agent_name)
        except Exception:
            warn_once("stamp", "agentwatch could not stamp a span with its agent")


class DropCountingBatchSpanProcessor(BatchSpanProcessor):
    """The SDK's BatchSpanProcessor, counting the spans it drops when its queue is full.

    The SDK's queue is a bounded deque that discards on overflow instead of
    blocking the caller, and only logs it; we add the count, read from that queue.
    What it queues is what the folder leaves (folding.py), instrumentations'
    spans put right (normalize.py) and their content redacted (redaction.py).
    """

    def __init__(self, span_exporter: SpanExporter, max_queue_size: int, folder: ModelSpanFolder | None = None) -> None:
        # The SDK's 5 s default delay would be most of the time from a span's end to an alert;
        # OTEL_BSP_SCHEDULE_DELAY, when set, still wins.
        delay_ms = None if os.environ.get("OTEL_BSP_SCHEDULE_DELAY") else EXPORT_DELAY_MS
        super().__init__(
            span_exporter,
            max_queue_size=max_queue_size,
            schedule_delay_millis=delay_ms,
            max_export_batch_size=min(MAX_EXPORT_BATCH_SIZE, max_queue_size),
        )
        self.dropped_spans = 0
        self.folder = folder  # model spans it folded into their parent are not exported
        self._drop_lock = threading.Lock()
        self._queue = getattr(getattr(self, "_batch_processor", None), "_queue", None)

    def on_end(self, span: ReadableSpan) -> None:
        for span in self.folder.take(span) if self.folder is not None else (span,):
            self._queue_span(span)

    def _queue_span(self, span: ReadableSpan) -> None:
        scope = span.instrumentation_scope
        if scope is None or scope.name != TRACER_NAME:  # ours were redacted as they were captured
            try:
                attributes = normalize.rewrite(scope, span.attributes)
                attributes = redaction.rewrite(attributes or span.attributes, settings.redact,
                                               settings.capture_content) or attributes
            except Exception:
                warn_once("redact", "agentwatch could not redact a span; not exported")
                return
            if attributes is not None:
                span = with_attributes(span, attributes)
        queue = self._queue
        if queue is not None and queue.maxlen is not None and len(queue) >= queue.maxlen:
            with self._drop_lock:
                self.dropped_spans += 1
        super().on_end(span)


class Telemetry:
    """What `init` set up. Keep it to flush or shut down explicitly; exit does both anyway."""

    def __init__(
        self,
        tracer_provider: Any,
        meter_provider: Any,
        batch_processors: list[DropCountingBatchSpanProcessor],
        owns_tracer_provider: bool,
        owns_meter_provider: bool,
    ) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.gpu_sampler: GpuSampler | None = None
        self.instrumented: dict[str, str] = {}  # client -> the instrumentation init enabled for it
        self.folder: ModelSpanFolder | None = None
        self.guard: guarding.Guard = guarding.Guard(None)  # containment (guard.py): state 'off' until init(guard=)
        self._batch_processors = batch_processors
        self._owns_tracer_provider = owns_tracer_provider
        self._owns_meter_provider = owns_meter_provider

    @property
    def dropped_spans(self) -> int:
        """Spans dropped because the export queue was full."""
        return sum(processor.dropped_spans for processor in self._batch_processors)

    def flush(self, timeout_s: float = 30) -> bool:
        """Export what is queued; False if that did not finish within timeout_s.

        An export the receiver refused is logged by the exporter, not reported here.
        """
        results: list[bool] = []

        def flush_all() -> None:
            try:
                ok = True
                for provider in (self.tracer_provider, self.meter_provider if self._owns_meter_provider else None):
                    force_flush = getattr(provider, "force_flush", None)
                    if force_flush is not None:
                        ok = force_flush(int(timeout_s * 1000)) is not False and ok
                results.append(ok)
            except Exception:
                warn_once("flush", "agentwatch flush failed")
                results.append(False)

        # The SDK's force_flush waits for an export in progress with no deadline
        # of its own; running it in a thread bounds how long the caller waits.
        worker = threading.Thread(target=flush_all, name="agentwatch-flush", daemon=True)
        worker.start()
        worker.join(timeout_s)
        return bool(results) and results[0]

    def shutdown(self) -> None:
        """Stop the GPU sampler, export what is queued and release the exporters."""
        try:
            if settings.telemetry is self:  # the instrumentations record into the last init's provider
                instrumentors.detach()
            if self.gpu_sampler is not None:
                self.gpu_sampler.stop()
            guarding.deactivate(self.guard)
            self.guard.stop()
            if self._owns_tracer_provider:
                self.tracer_provider.shutdown()
            else:
                for processor in self._batch_processors:
                    processor.shutdown()
            if self._owns_meter_provider:
                self.meter_provider.shutdown()
        except Exception:
            warn_once("shutdown", "agentwatch shutdown failed")
        if settings.telemetry is self:
            settings.telemetry = None
            settings.tracer = trace.get_tracer(TRACER_NAME)


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


def _meter_provider_is_set() -> bool:
    # The API has no public "is one set" test for metrics; until one is set it hands out a proxy.
    return type(metrics.get_meter_provider()).__name__ != "_ProxyMeterProvider"


def _exporters(protocol: str, endpoint: str, headers: dict | None) -> tuple[SpanExporter, Any]:
    """The official OTLP exporters; imported here so only the chosen transport is loaded."""
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError as error:
            raise ImportError("protocol='grpc' needs the OTLP gRPC exporter: "
                              "pip install 'agentwatch[grpc]'") from error

        insecure = not endpoint.startswith("https://")
        return (
            OTLPSpanExporter(endpoint=endpoint, insecure=insecure, headers=headers),
            OTLPMetricExporter(endpoint=endpoint, insecure=insecure, headers=headers),
        )
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    base = endpoint.rstrip("/")
    # max_request_size=0: no client-side cap that would silently drop a batch
    # holding a long reasoning trace; the receiver enforces its documented limit (413).
    return (
        OTLPSpanExporter(endpoint=f"{base}/v1/traces", headers=headers, max_request_size=0),
        OTLPMetricExporter(endpoint=f"{base}/v1/metrics", headers=headers, max_request_size=0),
    )


def init(
    service_name: str | None = None,
    *,
    endpoint: str | None = None,
    protocol: str = "http/protobuf",
    tenant: str | None = None,
    api_key: str | None = None,
    resource_attributes: dict | None = None,
    tracer_provider: Any = None,
    capture_content: bool = True,
    redact: Callable[[str, Any], Any] | None = None,
    gpu_interval: float | None = 10.0,
    max_queue_size: int = 8192,
    clock: Callable[[], int] | None = None,
    instrument: Any = None,
    guard: bool | str | None = None,
    guard_interval: float | None = None,
) -> Telemetry:
    """Set up OpenTelemetry for this agent process and make the decorators record into it.

    endpoint: the receiver's base address (default env AGENTWATCH_ENDPOINT, else
    OTEL_EXPORTER_OTLP_ENDPOINT, else 127.0.0.1:4318 for http/protobuf, :4317 for grpc).
    tracer_provider: join a provider the app already has; an exporter is added
    to it only when `endpoint` is given. The global providers are set only when
    none was set yet. The last `init` is the one the decorators use.
    instrument: the GenAI client and framework instrumentations to enable (see
    instrumentors.py): every one installed by default (env AGENTWATCH_INSTRUMENT),
    False for none, a list of clients, or {client: "opentelemetry" | "openllmetry"
    | "openinference" | False}. Their content capture follows `capture_content`.
    guard: containment (guard.py), off by default (env AGENTWATCH_GUARD): True polls the receiver at
    `endpoint` for verdicts every `guard_interval` seconds (env AGENTWATCH_GUARD_INTERVAL, default 1), a
    URL polls that receiver; a call under a halt then raises `agentwatch.AgentHalted`.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
    joining = tracer_provider is not None
    exporting = not joining or endpoint is not None
    endpoint = (
        endpoint
        or os.environ.get("AGENTWATCH_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or (DEFAULT_GRPC_ENDPOINT if protocol == "grpc" else DEFAULT_HTTP_ENDPOINT)
    )
    api_key = api_key or os.environ.get("AGENTWATCH_API_KEY")
    headers = {"authorization": f"Bearer {api_key}"} if api_key else None

    attributes = dict(resource_attributes or {})
    if service_name:
        attributes[SERVICE_NAME] = service_name
    if tenant:
        attributes[TENANT_ID] = tenant
    resource = Resource.create(attributes)

    if not joining:
        # Content is kept whole: no attribute length limit (whatever
        # OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT says) and no cap on credential events.
        limits = SpanLimits(
            max_attribute_length=SpanLimits.UNSET,
            max_span_attribute_length=SpanLimits.UNSET,
            max_events=SpanLimits.UNSET,
        )
        tracer_provider = TracerProvider(resource=resource, span_limits=limits)

    choice = instrumentors.wanted(instrument)  # a bad `instrument` raises before anything is set up
    verdicts_url = guarding.guard_url(guard, protocol, endpoint)
    guard_interval_s = guarding.interval_from_env(guard_interval)
    batch_processors = []
    metric_exporter = None
    # Folding needs our own exporter, to leave the folded span out (see folding.py).
    folder = ModelSpanFolder(fold=exporting, frameworks=FRAMEWORK_TRACERS)
    if exporting:
        span_exporter, metric_exporter = _exporters(protocol, endpoint, headers)
        batch_processors.append(DropCountingBatchSpanProcessor(span_exporter, max_queue_size, folder))
    if hasattr(tracer_provider, "add_span_processor"):
        if verdicts_url is not None:  # first: a span it halts reaches no other processor
            tracer_provider.add_span_processor(guarding.GuardSpanProcessor())
        tracer_provider.add_span_processor(AgentScopeSpanProcessor(tenant if joining else None))
        tracer_provider.add_span_processor(folder)  # before the exporter: it decides what is left out
        for processor in batch_processors:
            tracer_provider.add_span_processor(processor)
    else:
        warn_once("provider", "agentwatch cannot add processors to %r; spans are not stamped", tracer_provider)

    if metric_exporter is not None:
        interval_ms = gpu_interval * 1000 if gpu_interval else None  # export each GPU sample
        reader = PeriodicExportingMetricReader(metric_exporter, export_interval_millis=interval_ms)
        meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    else:
        meter_provider = metrics.get_meter_provider()

    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(tracer_provider)
    if metric_exporter is not None and not _meter_provider_is_set():
        metrics.set_meter_provider(meter_provider)

    telemetry = Telemetry(
        tracer_provider,
        meter_provider,
        batch_processors,
        owns_tracer_provider=not joining,
        owns_meter_provider=metric_exporter is not None,
    )
    telemetry.folder = folder
    if gpu_interval:
        sampler = GpuSampler(meter_provider, gpu_interval)
        if sampler.start():
            telemetry.gpu_sampler = sampler

    if verdicts_url is not None:
        telemetry.guard = guarding.Guard(verdicts_url, headers, tenant, guard_interval_s)
        guarding.observe(meter_provider)
    guarding.activate(telemetry.guard)  # the last init's guard is the one the checks use
    telemetry.guard.start()

    settings.tracer = tracer_provider.get_tracer(TRACER_NAME)
    settings.capture_content = capture_content and _env_flag("AGENTWATCH_CAPTURE_CONTENT", True)
    settings.redact = redact
    settings.clock = clock
    settings.telemetry = telemetry
    instrumentors.match_content_capture(settings.capture_content)
    try:
        telemetry.instrumented = instrumentors.instrument(choice, tracer_provider)
    except Exception:
        warn_once("instrument", "agentwatch could not enable the GenAI instrumentations")
    return telemetry


def flush(timeout_s: float = 30) -> bool:
    """Flush the telemetry of the last `init`; True when there is none."""
    telemetry = settings.telemetry
    return telemetry.flush(timeout_s) if telemetry is not None else True


def shutdown() -> None:
    """Shut down the telemetry of the last `init`."""
    telemetry = settings.telemetry
    if telemetry is not None:
        telemetry.shutdown()
