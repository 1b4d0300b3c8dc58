"""The stock fleet: a multi-tenant agent fleet made with nothing but the stock OpenTelemetry SDK.

A second scenario family, independent of ``agentwatch.demo.fleet``: no
agentwatch SDK, no agentwatch stamping. Every span is made by an
``opentelemetry-sdk`` ``TracerProvider`` (one per tenant service, its
resource naming the service and, in ``agentwatch.tenant.id``, the tenant) and
sent by the stock OTLP/HTTP protobuf exporter (``OTLPSpanExporter``) through a
``BatchSpanProcessor``. The spans are shaped the way the public
instrumentations emit them, three conventions mixed across tenants:

* GenAI semantic conventions, as ``opentelemetry-instrumentation-openai-v2``
  and the GenAI agent conventions make them: ``invoke_agent {name}`` spans
  (``gen_ai.operation.name``, ``gen_ai.agent.name``, ``gen_ai.agent.id``),
  ``chat {model}`` client spans (``gen_ai.provider.name``, or the legacy
  ``gen_ai.system`` on some services, request and response model, input and
  output tokens, finish reasons, ``gen_ai.input.messages`` /
  ``gen_ai.output.messages`` JSON) and ``execute_tool {tool}`` spans
  (``gen_ai.tool.name``, ``gen_ai.tool.call.arguments``).
* OpenInference, as LangGraph under ``openinference-instrumentation-langchain``
  makes them: ``openinference.span.kind`` AGENT (``agent.name``), CHAIN spans
  for the graph's nodes between the agent and its calls, LLM spans
  (``llm.model_name``, ``llm.provider``, ``llm.token_count.*``,
  ``llm.input_messages.{i}.message.*``, ``input.value`` / ``output.value``)
  and TOOL spans (``tool.name``, ``tool.parameters``: the declared schema,
  ``input.value``: the arguments).
* OpenLLMetry (Traceloop): ``@workflow`` / ``@agent`` / ``@task`` / ``@tool``
  spans (``{name}.{kind}``, ``traceloop.span.kind``, ``traceloop.entity.name``,
  ``traceloop.entity.input``) and its LLM spans (``openai.chat``,
  ``anthropic.chat``: ``llm.request.type``, ``gen_ai.system``, request and
  response model, ``gen_ai.usage.prompt_tokens`` / ``completion_tokens`` on
  older services or ``input_tokens`` / ``output_tokens``, ``gen_ai.prompt.{i}.*``,
  ``gen_ai.completion.{i}.*``).

Only the agent spans name an agent: chat and tool spans carry no
``gen_ai.agent.*``. Credential use is a plain span event
``agentwatch.credential.use`` (attributes as DESIGN.md lists them) on tool
spans, and on chat spans of services that fetch their provider key from a
vault.

The fleet: tenants of different sizes (one tiny, two arriving mid-run), each
with one or two services and several agent kinds (support, SQL analyst, code
reviewer, research planner forking researchers, batch enricher forking
workers, deployment watcher whose tree stays open 10-40 minutes); a diurnal
curve per tenant (and quieter weekends), so runs of several days are
seasonal; bursts of traffic; tool calls with JSON arguments (a failed call is
retried with the same arguments, so normal traces repeat a call 1-2 times);
rate-limited model calls; models genai-prices knows. A span is exported when
it ends: sub-agents' spans leave before their parent's, the root's last.

Time is simulated: spans carry explicit start and end times, so days of fleet
run in minutes. Spans are planned ahead and made with the SDK in the order
they end; every service's processor is flushed in rounds (every
``flush_every`` spans, and every 2 simulated minutes), its queue larger than
two rounds, so nothing is dropped; what the receiver accepted is counted, and
a refusal raises. Same seed and start: same fleet, same ids (a seeded
``IdGenerator``), same labels.

Incidents (``incidents=True``), one of each ``KINDS``, none in the first 20 %
of the run, one after the other. Each is drawn at a factor f in [3, 9.5] (kept
below the detectors' generous fixed guard rails: 20 sub-agents, 20 identical
calls, 45 agents per credential, $8 per minute) times a normal measured on
everything sent before the incident starts (its start T), the way a detector
would have learned it; counts are whole, so the measured magnitude stays
within [3, 10] x the normal:

* ``fanout``: a batch-enricher tree whose model calls are f x the mean model
  calls of the batch-enricher traces so far (a trace's kind: the name of its
  first agent span), forking min(f x the mean sub-agents, 20) workers; the
  root's agent span closes last.
* ``cost_spike``: for L minutes from T, a tenant's spend per minute (CostUSD of
  its spans starting in [T, T + L)) is f x its spend per minute over
  [max(run start, T - 1 h), T): one of its agents switches to its most
  expensive model with long contexts and outputs.
* ``loop``: a support-agent trace calling one tool with identical arguments
  f x the largest count of identical calls (same tool, same arguments) in any
  support-agent trace so far.
* ``credential_fanout``: in [T, T + 5 min) one of the tenant's credentials (a
  key leaked into a shared prompt: agents of every kind of the tenant take it
  up) is used by f x the most distinct agents (agent spans: the nearest agent span
  above the span carrying the event) that used it in any 5-minute window
  [T - 5(k+1) min, T - 5k min) within [max(run start, T - 1 h), T).
* ``cross_tenant``: a sql-analyst of tenant A lifts tenant B's warehouse
  credential and uses it on B's warehouse f x as often as a sql-analyst
  trace uses credentials from its tool spans on average so far.

Each ``Incident``'s description states f, the normal and the magnitude
measured on what was sent. ``agent_id`` is the offending agent span's
``gen_ai.agent.id``, or its name where the convention has no id (what
``agent_spans`` stores in AgentId, else AgentName); ``trace_id`` its trace; for
``credential_fanout`` the first of the new agents and its trace, with
``credential_id`` naming the credential (also set for ``cross_tenant``).

Only the record types (``Incident``, ``DemoResult``, ``KINDS``) come from
``agentwatch.demo.fleet``; no span making is shared with it. Costs used to size
``cost_spike`` are computed with the receiver's price lookup on the same
attributes the receiver reads, so they match what is stored.

``run_stock_fleet(endpoint=..., duration_s=..., start_ns=...)`` sends the fleet;
``plan_stock_fleet`` plans the same fleet and sends nothing (its span count and
labels); ``fleet.record_incidents`` stores the labels.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import random
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from opentelemetry import trace as trace_api
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from agentwatch.demo.fleet import KINDS, DemoResult, Incident

NS = 1_000_000_000
MS = 1_000_000
MINUTE = 60 * NS
HOUR = 60 * MINUTE
DAY = 24 * HOUR

DEFAULT_SPAN_RATE = 15_000.0  # spans per simulated hour, averaged over a day, all tenants
_RATE_CALIBRATION = 0.744  # the tenants' trace rates below give DEFAULT_SPAN_RATE at this scale (a weekday)
_LAG = 10 * MINUTE  # spans are emitted this far behind the planning cursor (incidents sized on a window)
_FLUSH_EVERY = 2_000  # spans emitted between two export rounds of every service's processor
_FLUSH_SIMULATED = 2 * MINUTE  # and at least this often in span time, so services stay close in time

# guard rails the incidents stay under (the detectors' generous fixed limits)
FANOUT_MAX_FORKS = 20
LOOP_MAX_REPEATS = 19
CREDENTIAL_MAX_AGENTS = 45
COST_MAX_USD_PER_MINUTE = 8.0
CREDENTIAL_WINDOW = 5 * MINUTE

GENAI, OPENINFERENCE, TRACELOOP = "genai", "openinference", "traceloop"
FAMILIES = (GENAI, OPENINFERENCE, TRACELOOP)

CREDENTIAL_USE = "agentwatch.credential.use"


# --- models ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Model:
    name: str  # request model
    response: str  # response model, as the provider answers
    vendor: str  # openai / anthropic / google
    tokens_per_s: float
    context: tuple[int, int]  # input tokens beyond the visible messages
    output: tuple[int, int]
    reasoning: bool
    cache_share: float


_MODELS = {m.name: m for m in (
    _Model("gpt-4o-mini", "gpt-4o-mini-2024-07-18", "openai", 90, (300, 4000), (30, 400), False, 0.4),
    _Model("gpt-4o", "gpt-4o-2024-08-06", "openai", 80, (1200, 12000), (80, 900), False, 0.4),
    _Model("gpt-4.1", "gpt-4.1-2025-04-14", "openai", 85, (1500, 16000), (100, 1000), False, 0.4),
    _Model("o1", "o1-2024-12-17", "openai", 60, (2000, 20000), (300, 2000), True, 0.3),
    _Model("claude-3-5-haiku-20241022", "claude-3-5-haiku-20241022", "anthropic", 80, (400, 4000), (30, 400),
           False, 0.5),
    _Model("claude-sonnet-4-20250514", "claude-sonnet-4-20250514", "anthropic", 70, (1500, 16000), (100, 1200),
           False, 0.6),
    _Model("claude-opus-4-1-20250805", "claude-opus-4-1-20250805", "anthropic", 45, (2000, 24000), (300, 2000),
           False, 0.5),
    _Model("gemini-2.5-flash", "gemini-2.5-flash", "google", 200, (600, 15000), (50, 1000), False, 0.3),
)}

# vendor -> GenAI gen_ai.provider.name, legacy gen_ai.system, OpenInference llm.provider / llm.system,
# OpenLLMetry gen_ai.system, LangChain chat class, OpenLLMetry span name, server address
_VENDORS = {
    "openai": ("openai", "openai", "openai", "openai", "openai", "ChatOpenAI", "openai.chat", "api.openai.com"),
    "anthropic": ("anthropic", "anthropic", "anthropic", "anthropic", "Anthropic", "ChatAnthropic", "anthropic.chat",
                  "api.anthropic.com"),
    "google": ("gcp.gemini", "gemini", "google", "vertexai", "Google", "ChatGoogleGenerativeAI", "gemini.chat",
               "generativelanguage.googleapis.com"),
}
_FINISH = {"openai": ("tool_calls", "stop"), "anthropic": ("tool_use", "end_turn"), "google": ("STOP", "STOP")}
_RATE_LIMIT_ERROR = {"openai": "RateLimitError", "anthropic": "RateLimitError", "google": "ResourceExhausted"}

# instrumentation scopes, as the public instrumentations name their tracers
_SCOPES = {
    (GENAI, "openai"): ("opentelemetry.instrumentation.openai_v2", "2.4b0"),
    (GENAI, "anthropic"): ("opentelemetry.instrumentation.anthropic", "0.1b0"),
    (GENAI, "agent"): ("opentelemetry.util.genai.handler", "1.1b0"),
    (OPENINFERENCE, "any"): ("openinference.instrumentation.langchain", "0.1.50"),
    (TRACELOOP, "openai"): ("opentelemetry.instrumentation.openai.v1", "0.47.3"),
    (TRACELOOP, "anthropic"): ("opentelemetry.instrumentation.anthropic", "0.47.3"),
    (TRACELOOP, "decorator"): ("traceloop.tracer", "0.47.3"),
}


# --- tenants and their services --------------------------------------------------------------------

@dataclass(frozen=True)
class _Service:
    name: str
    family: str
    share: float  # of its tenant's traffic
    mix: tuple[tuple[str, float], ...]  # root agent kind -> share of the service's traces
    cheap: str
    main: str
    deep: str
    spike: str  # the far more expensive model a runaway agent switches to
    instances: int = 3  # agents of each kind
    legacy: bool = False  # GenAI: gen_ai.system only; OpenLLMetry: prompt/completion token names
    key_events: bool = False  # provider key fetched from a vault: a credential use on every chat span


@dataclass(frozen=True)
class _Tenant:
    name: str
    traces_per_hour: float  # at the top of its day, weekdays
    peak_hour: float  # UTC
    width_h: float  # of its busy hours
    arrives: float  # share of the run before its first trace (0: there from the start)
    services: tuple[_Service, ...]

    @property
    def tiny(self) -> bool:
        return self.traces_per_hour < 30


_TENANTS = (
    _Tenant("northwind", 700, 15.0, 3.5, 0.0, (
        _Service("northwind-support", GENAI, 0.55,
                 (("support-agent", .55), ("sql-analyst", .17), ("code-reviewer", .14), ("deploy-watcher", .04),
                  ("batch-enricher", .10)), "gpt-4o-mini", "gpt-4o", "gpt-4.1", "o1", 4, key_events=True),
        _Service("northwind-research", OPENINFERENCE, 0.45,
                 (("research-planner", .40), ("support-agent", .25), ("batch-enricher", .13), ("sql-analyst", .22)),
                 "claude-3-5-haiku-20241022", "claude-sonnet-4-20250514", "claude-sonnet-4-20250514",
                 "claude-opus-4-1-20250805", 3),
    )),
    _Tenant("contoso", 450, 9.0, 4.0, 0.0, (
        _Service("contoso-copilot", TRACELOOP, 0.6,
                 (("support-agent", .45), ("code-reviewer", .22), ("deploy-watcher", .05), ("research-planner", .28)),
                 "claude-3-5-haiku-20241022", "claude-sonnet-4-20250514", "claude-sonnet-4-20250514",
                 "claude-opus-4-1-20250805", 3),
        _Service("contoso-data", GENAI, 0.4,
                 (("sql-analyst", .55), ("batch-enricher", .15), ("support-agent", .30)),
                 "gpt-4o-mini", "gpt-4o", "gpt-4o", "o1", 3, legacy=True),
    )),
    _Tenant("fabrikam", 380, 20.0, 3.0, 0.0, (
        _Service("fabrikam-agents", OPENINFERENCE, 1.0,
                 (("support-agent", .40), ("sql-analyst", .20), ("research-planner", .20), ("deploy-watcher", .05),
                  ("batch-enricher", .15)),
                 "gemini-2.5-flash", "gemini-2.5-flash", "claude-sonnet-4-20250514", "claude-opus-4-1-20250805", 3),
    )),
    _Tenant("wingtip", 10, 13.0, 3.0, 0.0, (
        _Service("wingtip-helpdesk", TRACELOOP, 1.0, (("support-agent", .7), ("sql-analyst", .3)),
                 "gpt-4o-mini", "gpt-4o-mini", "gpt-4o", "o1", 1, legacy=True),
    )),
    _Tenant("tailspin", 150, 3.0, 3.0, 0.0, (
        _Service("tailspin-ops", GENAI, 1.0, (("deploy-watcher", .12), ("code-reviewer", .40), ("support-agent", .48)),
                 "claude-3-5-haiku-20241022", "claude-sonnet-4-20250514", "claude-sonnet-4-20250514",
                 "claude-opus-4-1-20250805", 2, key_events=True),
    )),
    _Tenant("litware", 320, 11.0, 3.5, 0.35, (
        _Service("litware-assist", TRACELOOP, 1.0,
                 (("support-agent", .5), ("sql-analyst", .3), ("research-planner", .2)),
                 "gpt-4o-mini", "gpt-4.1", "gpt-4.1", "o1", 3),
    )),
    _Tenant("adatum", 120, 17.0, 4.0, 0.6, (
        _Service("adatum-graph", OPENINFERENCE, 1.0, (("research-planner", .5), ("support-agent", .5)),
                 "gpt-4o-mini", "gpt-4o", "gpt-4o", "o1", 2),
    )),
    _Tenant("proseware", 260, 6.0, 3.5, 0.0, (
        _Service("proseware-agents", GENAI, 0.5,
                 (("support-agent", .5), ("code-reviewer", .3), ("deploy-watcher", .05), ("batch-enricher", .15)),
                 "gpt-4o-mini", "gpt-4o", "gpt-4.1", "o1", 3),
        _Service("proseware-flows", TRACELOOP, 0.5, (("sql-analyst", .5), ("research-planner", .3),
                                                     ("batch-enricher", .2)),
                 "claude-3-5-haiku-20241022", "claude-sonnet-4-20250514", "claude-sonnet-4-20250514",
                 "claude-opus-4-1-20250805", 2, legacy=True),
    )),
)
MAX_TENANTS = len(_TENANTS)
_SUB_POOLS = {"researcher": 6, "enrich-worker": 8}

# credential kind -> scope, and what the resource is
_CREDENTIALS = {
    "helpdesk": "tickets:read",
    "search": "search:query",
    "orders": "orders:read",
    "billing": "billing:refund",
    "warehouse": "warehouse:read",
    "github": "repo:write",
    "deploy": "deploy:read",
    "chatops": "chat:write",
}


def _resource(tenant: str, kind: str) -> str:
    return {
        "helpdesk": f"https://helpdesk.{tenant}.example.com/api/v2",
        "search": f"search://{tenant}-kb",
        "orders": f"https://api.{tenant}.example.com/v2/orders",
        "billing": f"https://billing.{tenant}.example.com/v1/refunds",
        "warehouse": f"{tenant}/warehouse/analytics",
        "github": f"github.com/{tenant}",
        "deploy": f"https://deploy.{tenant}.internal/api",
        "chatops": f"slack://{tenant}/deploys",
    }[kind]


def _credential_id(tenant: str, kind: str) -> str:
    return f"{tenant}-{kind}-key"


# tools: name -> (description, credential kind or None, action, latency range in ms)
_TOOLS = {
    "get_ticket": ("Fetch a support ticket with its thread", "helpdesk", "read", (60, 600)),
    "search_kb": ("Semantic search over the knowledge base", "search", "query", (80, 900)),
    "get_order_status": ("Current status and history of an order", "orders", "read", (50, 700)),
    "issue_refund": ("Refund an order, fully or in part", "billing", "write", (200, 2500)),
    "run_sql": ("Run a read-only SQL query on the warehouse", "warehouse", "query", (120, 8000)),
    "get_pull_request": ("A pull request with its diff stats", "github", "read", (100, 900)),
    "read_file": ("Read a file of a repository at a ref", "github", "read", (60, 700)),
    "post_review_comment": ("Comment on a line of a pull request", "github", "write", (150, 1200)),
    "web_search": ("Search the public web", None, "query", (300, 2500)),
    "fetch_url": ("Fetch a public web page as text", None, "read", (150, 4000)),
    "get_rollout_status": ("Status of a deployment rollout", "deploy", "read", (80, 900)),
    "post_status_update": ("Post a message to the deploy channel", "chatops", "write", (100, 800)),
    "count_records": ("Count the records of a batch", "warehouse", "query", (150, 3000)),
    "fetch_records": ("Fetch one shard of a batch", "warehouse", "query", (200, 5000)),
    "write_results": ("Write enrichment results for a shard", "warehouse", "write", (200, 4000)),
}


# --- text -----------------------------------------------------------------------------------------------

_WORDS = {
    "product": ("mobile app", "billing portal", "API gateway", "data export", "SSO login", "webhooks",
                "invoice PDF", "search index", "checkout", "usage dashboard", "CLI", "audit log"),
    "problem": ("times out", "returns a 502", "shows stale data", "double-charges", "drops events",
                "rejects valid tokens", "is slow since Tuesday", "loses the last page", "mislabels currencies"),
    "metric": ("revenue", "active accounts", "refund rate", "churn", "p95 latency", "orders", "trial conversions",
               "support backlog", "gross margin"),
    "region": ("EMEA", "APAC", "North America", "LATAM", "the EU region", "the enterprise tier", "self-serve"),
    "topic": ("vector database pricing", "EU AI Act obligations", "SOC 2 evidence collection",
              "LLM evaluation harnesses", "warehouse cost controls", "on-call fatigue", "feature-flag hygiene",
              "GPU capacity planning", "retrieval quality metrics", "data retention policies"),
    "verb": ("check", "compare", "reconcile", "summarise", "verify", "estimate", "break down", "cross-check"),
}
_SENTENCES = (
    "I need to {verb} the {metric} for {region} before answering.",
    "The customer says the {product} {problem}; the ticket history should confirm when it started.",
    "The last query suggests {metric} moved in {region}, so I will {verb} it against the previous week.",
    "Based on the documents, the {product} issue is known and a fix is being rolled out.",
    "The tool result lists several rows; the relevant ones concern {region}.",
    "I will {verb} the findings on {topic} and cite the two strongest sources.",
    "Nothing in the diff touches the {product}, but the tests around it are thin.",
    "The rollout is progressing; error rates in {region} stay within the budget.",
    "Summary: {metric} is stable overall, with a dip in {region} that needs a closer look.",
    "To be safe I will {verb} the numbers once more with a narrower filter.",
    "The answer should mention the workaround for the {product} and the expected fix date.",
    "Sources disagree on {topic}; the most recent one is the most specific.",
)


class _Text:
    """A pool of sentences made once from the seed; messages are a few of them."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(f"stock-text:{seed}")
        self.sentences = [rng.choice(_SENTENCES).format(**{k: rng.choice(v) for k, v in _WORDS.items()})
                          for _ in range(600)]

    def say(self, rng: random.Random, lo: int, hi: int) -> str:
        return " ".join(rng.choice(self.sentences) for _ in range(rng.randint(lo, hi)))


def _word(rng: random.Random, kind: str) -> str:
    return rng.choice(_WORDS[kind])


def _log_uniform(rng: random.Random, lo: float, hi: float) -> int:
    return int(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 30:
        return max(0, int(rng.gauss(lam, math.sqrt(lam)) + 0.5))
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _dumps(value) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _hex_id(*parts) -> str:
    return hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()


# --- planned spans and their emission through the SDK ------------------------------------------------

class _Span:
    """A span planned with simulated times; made with the SDK when the emission cursor reaches its end."""

    __slots__ = ("trace", "sid", "parent", "agent", "name", "kind", "scope", "start", "end", "attrs", "events",
                 "error")

    def __init__(self, trace: _Trace, parent: _Span | None, name: str, kind: SpanKind, scope: tuple[str, str],
                 start: int, attrs: dict) -> None:
        self.trace = trace
        self.sid = trace.new_id()
        self.parent = parent
        self.agent = parent.agent if parent is not None else 0  # span id of the nearest agent span above
        self.name = name
        self.kind = kind
        self.scope = scope
        self.start = start
        self.end = start
        self.attrs = attrs
        self.events: list[tuple[str, int, dict]] = []
        self.error: str | None = None


class _PinnedIds(IdGenerator):
    """Ids planned from the seed: the emitter pins the next span's ids before the SDK asks for them."""

    def __init__(self) -> None:
        self.trace_id = 1
        self.span_id = 1

    def generate_span_id(self) -> int:
        return self.span_id

    def generate_trace_id(self) -> int:
        return self.trace_id


class _CountingExporter(SpanExporter):
    """The OTLP exporter, counting what the receiver accepted and what it did not."""

    def __init__(self, exporter: OTLPSpanExporter) -> None:
        self.exporter = exporter
        self.sent = 0
        self.failed = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.exporter.export(spans)
        if result is SpanExportResult.SUCCESS:
            self.sent += len(spans)
        else:
            self.failed += len(spans)
        return result

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.exporter.force_flush(timeout_millis)


_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


class _Emitter:
    """One TracerProvider (resource: service and tenant) and exporter per tenant service."""

    def __init__(self, endpoint: str, headers: dict[str, str] | None, flush_every: int, timeout_s: float) -> None:
        endpoint = endpoint.rstrip("/")
        self.url = endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"
        self.headers = dict(headers or {})
        self.flush_every = max(1, int(flush_every))
        self.timeout_s = timeout_s
        self.ids = _PinnedIds()
        self.providers: dict[str, tuple[TracerProvider, _CountingExporter]] = {}
        self.tracers: dict[tuple[str, tuple[str, str]], trace_api.Tracer] = {}
        self.emitted = 0
        self._since_flush = 0
        self.last_end = 0
        self._round_end = 0
        self._flushers = ThreadPoolExecutor(4, thread_name_prefix="stock-fleet-flush")
        self._flushing: list[Future] = []

    def _provider(self, tenant: str, service: str) -> TracerProvider:
        found = self.providers.get(service)
        if found is None:
            resource = Resource.create({
                "service.name": service, "service.version": "1.4.2", "deployment.environment.name": "production",
                "agentwatch.tenant.id": tenant,
            })
            provider = TracerProvider(resource=resource, id_generator=self.ids, sampler=ALWAYS_ON,
                                      span_limits=SpanLimits(max_span_attributes=1024, max_events=256,
                                                             max_event_attributes=64))
            exporter = _CountingExporter(OTLPSpanExporter(endpoint=self.url, headers=self.headers,
                                                          timeout=self.timeout_s))
            # the queue holds more than is ever pending across two flush rounds: nothing can be dropped
            provider.add_span_processor(BatchSpanProcessor(
                exporter, max_queue_size=2 * self.flush_every + 4096, max_export_batch_size=512,
                schedule_delay_millis=2_000))
            found = self.providers[service] = (provider, exporter)
        return found[0]

    def emit(self, span: _Span) -> None:
        trace = span.trace
        key = (trace.service.name, span.scope)
        tracer = self.tracers.get(key)
        if tracer is None:
            tracer = self.tracers[key] = self._provider(trace.tenant.name, trace.service.name).get_tracer(*span.scope)
        context = None
        if span.parent is not None:
            parent = SpanContext(trace.trace_id, span.parent.sid, False, _SAMPLED)
            context = trace_api.set_span_in_context(NonRecordingSpan(parent))
        self.ids.trace_id = trace.trace_id
        self.ids.span_id = span.sid
        sdk_span = tracer.start_span(span.name, context=context, kind=span.kind, attributes=span.attrs,
                                     start_time=span.start, record_exception=False, set_status_on_exception=False)
        for name, ts, attrs in span.events:
            sdk_span.add_event(name, attrs, timestamp=ts)
        if span.error is not None:
            sdk_span.set_status(Status(StatusCode.ERROR, span.error))
        sdk_span.end(end_time=span.end)
        self.emitted += 1
        self.last_end = max(self.last_end, span.end)
        self._since_flush += 1
        if self._since_flush >= self.flush_every or span.end - self._round_end >= _FLUSH_SIMULATED:
            self._round_end = span.end
            self.flush()

    def flush(self, wait: bool = False) -> None:
        """Export what every service has queued, all services at once, while planning goes on; a round
        starts when the previous one is done, so no span waits longer than two rounds."""
        for future in self._flushing:
            future.result()
        self._flushing = [self._flushers.submit(provider.force_flush) for provider, _ in self.providers.values()]
        self._since_flush = 0
        if wait:
            for future in self._flushing:
                future.result()
            self._flushing = []

    def close(self) -> tuple[int, int]:
        self.flush(wait=True)
        self._flushers.shutdown()
        for provider, _ in self.providers.values():
            provider.shutdown()
        return (sum(e.sent for _, e in self.providers.values()), sum(e.failed for _, e in self.providers.values()))


# --- one trace, planned -------------------------------------------------------------------------------------

class _Trace:
    """A trace being planned: ids from its own seeded RNG, spans queued for emission as they close."""

    def __init__(self, fleet: _Fleet, tenant: _Tenant, service: _Service, key: str, kind: str) -> None:
        self.fleet = fleet
        self.tenant = tenant
        self.service = service
        self.family = service.family
        self.kind = kind
        self.rng = random.Random(f"{fleet.seed}:{key}")
        self.trace_id = self.rng.getrandbits(128) or 1
        self.conversation_id = f"conv_{self.rng.getrandbits(64):016x}"
        self.workflow = ""
        self.calls = 0
        self.agents = 0
        self.tool_uses = 0
        self.repeats: Counter = Counter()
        self.step = 0
        self.start = 0

    def new_id(self) -> int:
        return self.rng.getrandbits(64) or 1

    # --- span plumbing ----------------------------------------------------------------------------------

    def _open(self, parent: _Span | None, name: str, kind: SpanKind, scope: tuple[str, str], start: int,
              attrs: dict) -> _Span:
        return _Span(self, parent, name, kind, scope, start, attrs)

    def _close(self, span: _Span, end: int) -> int:
        span.end = max(end, span.start + 1)
        self.fleet.queue_span(span)
        return span.end

    def _use(self, span: _Span, ts: int, cred: str, cred_tenant: str, scope: str, resource: str,
             resource_tenant: str, action: str) -> None:
        """A credential use: a plain span event with the attributes DESIGN.md names."""
        span.events.append((CREDENTIAL_USE, ts, {
            "agentwatch.credential.id": cred, "agentwatch.credential.tenant.id": cred_tenant,
            "agentwatch.credential.scope": scope, "agentwatch.resource.name": resource,
            "agentwatch.resource.tenant.id": resource_tenant, "agentwatch.credential.action": action}))
        self.fleet.observe_use(cred, ts, span.agent)

    def _chain(self, parent: _Span, node: str, start: int, inputs: str) -> _Span:
        """OpenInference: the LangGraph node a call runs in."""
        self.step += 1
        return self._open(parent, node, SpanKind.INTERNAL, _SCOPES[(OPENINFERENCE, "any")], start, {
            "openinference.span.kind": "CHAIN", "input.value": inputs, "input.mime_type": "application/json",
            "metadata": _dumps({"langgraph_step": self.step, "langgraph_node": node,
                                "langgraph_triggers": [f"branch:to:{node}"], "thread_id": self.conversation_id}),
        })

    # --- agents -----------------------------------------------------------------------------------------------

    def agent_id(self, kind: str, instance: int) -> str:
        return "asst_" + _hex_id("stock-agent", self.tenant.name, self.service.name, kind, instance)[:24]

    def agent(self, parent: _Span | None, kind: str, instance: int, start: int, task: str,
              body: Callable[[_Span, int], tuple[int, str]]) -> int:
        """An agent span (and, for an OpenLLMetry root, its @workflow) around `body`; returns its end."""
        rng = self.rng
        self.agents += 1
        wrapper = None
        if self.family == GENAI:
            service = self.service
            model = _MODELS[service.main]
            vendor = _VENDORS[model.vendor]
            attrs = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": kind,
                     "gen_ai.agent.id": self.agent_id(kind, instance),
                     "gen_ai.agent.description": f"{kind.replace('-', ' ')} agent of {self.tenant.name}",
                     "gen_ai.request.model": model.name, "gen_ai.conversation.id": self.conversation_id}
            if service.legacy:
                attrs["gen_ai.system"] = vendor[1]
            else:
                attrs["gen_ai.provider.name"] = vendor[0]
            span = self._open(parent, f"invoke_agent {kind}", SpanKind.INTERNAL, _SCOPES[(GENAI, "agent")], start,
                              attrs)
        elif self.family == OPENINFERENCE:
            span = self._open(parent, kind, SpanKind.INTERNAL, _SCOPES[(OPENINFERENCE, "any")], start, {
                "openinference.span.kind": "AGENT", "agent.name": kind, "input.value": task,
                "input.mime_type": "text/plain", "session.id": self.conversation_id,
                "graph.node.id": kind, **({"graph.node.parent_id": parent.attrs.get("graph.node.id", "")}
                                          if parent is not None else {})})
        else:
            scope = _SCOPES[(TRACELOOP, "decorator")]
            if parent is None:
                self.workflow = kind.replace("-", "_") + "_flow"
                wrapper = self._open(None, f"{self.workflow}.workflow", SpanKind.INTERNAL, scope, start, {
                    "traceloop.span.kind": "workflow", "traceloop.entity.name": self.workflow,
                    "traceloop.workflow.name": self.workflow,
                    "traceloop.entity.input": _dumps({"args": [task], "kwargs": {}})})
                parent = wrapper
                start += rng.randint(1, 400) * 1000
            span = self._open(parent, f"{kind}.agent", SpanKind.INTERNAL, scope, start, {
                "traceloop.span.kind": "agent", "traceloop.entity.name": kind,
                "traceloop.workflow.name": self.workflow,
                "traceloop.entity.input": _dumps({"args": [task],
                                                  "kwargs": {"conversation_id": self.conversation_id}})})
        span.agent = span.sid
        end, answer = body(span, start + rng.randint(1, 3000) * 1000)
        if self.family == OPENINFERENCE:
            span.attrs["output.value"] = answer
            span.attrs["output.mime_type"] = "text/plain"
        elif self.family == TRACELOOP:
            span.attrs["traceloop.entity.output"] = _dumps(answer)
        end = self._close(span, end + rng.randint(1, 2000) * 1000)
        if wrapper is not None:
            wrapper.attrs["traceloop.entity.output"] = _dumps(answer)
            end = self._close(wrapper, end + rng.randint(1, 800) * 1000)
        return end

    # --- model calls ------------------------------------------------------------------------------------------

    def chat(self, parent: _Span, start: int, model_name: str, conv: list[dict], *, system: str,
             tool_call: tuple[str, dict] | None = None, output: tuple[int, int] | None = None,
             context: tuple[int, int] | None = None, task: str | None = None, answer: str | None = None,
             fail_p: float = 0.012, tokens: tuple[int, int] | None = None) -> tuple[int, str]:
        """A model call (retried once after a rate limit); returns its end and the answer text.
        `tokens`: exactly these input and output tokens (no cache read, no reasoning)."""
        rng = self.rng
        t = start
        if fail_p and rng.random() < fail_p:
            t = self._chat_span(parent, t, model_name, conv, system, None, (1, 2), context, task, None, None,
                                failed=True)
            t += rng.randint(500, 4000) * MS
        end = self._chat_span(parent, t, model_name, conv, system, tool_call, output, context, task, answer, tokens)
        return end, self._last_answer

    _last_answer = ""

    def _chat_span(self, parent: _Span, start: int, model_name: str, conv: list[dict], system: str,
                   tool_call: tuple[str, dict] | None, output: tuple[int, int] | None,
                   context: tuple[int, int] | None, task: str | None, answer: str | None,
                   tokens: tuple[int, int] | None, *, failed: bool = False) -> int:
        rng, fleet, service = self.rng, self.fleet, self.service
        model = _MODELS[model_name]
        vendor = _VENDORS[model.vendor]
        if tokens is not None:
            input_tokens, output_tokens = tokens
            cached = reasoning = 0
        else:
            visible = sum(len(m["content"]) for m in conv) + len(system)
            input_tokens = visible // 4 + _log_uniform(rng, *(context or model.context))
            cached = 0
            if rng.random() < model.cache_share:
                cached = min(input_tokens,
                             (len(system) // 4 + int(input_tokens * rng.uniform(0.1, 0.5))) // 64 * 64)
            output_tokens = _log_uniform(rng, *(output or model.output))
            reasoning = _log_uniform(rng, 200, 2500) if model.reasoning else 0
        if tool_call is not None and tokens is None:
            output_tokens = min(output_tokens, 20 + len(_dumps(tool_call[1])) // 3)
        if tool_call is not None:
            text = ""
            finish = _FINISH[model.vendor][0]
        else:
            text = answer if answer is not None else fleet.text.say(rng, 1, 4)
            finish = _FINISH[model.vendor][1]
        generated = output_tokens + reasoning
        latency = rng.uniform(0.25, 1.1) + input_tokens / 40_000 + generated / model.tokens_per_s
        if failed:
            latency = rng.uniform(0.05, 0.4)
        end = start + int(min(latency, 300.0) * NS)
        call_id = f"call_{rng.getrandbits(64):016x}"
        self.calls += 1

        wrapper = None
        if self.family == OPENINFERENCE:
            wrapper = self._chain(parent, "agent", start, _dumps({"messages": len(conv)}))
            parent = wrapper
            start += rng.randint(200, 3000) * 1000
            end += rng.randint(200, 3000) * 1000
        elif self.family == TRACELOOP and task:
            wrapper = self._open(parent, f"{task}.task", SpanKind.INTERNAL, _SCOPES[(TRACELOOP, "decorator")], start, {
                "traceloop.span.kind": "task", "traceloop.entity.name": task,
                "traceloop.workflow.name": self.workflow, "traceloop.entity.path": task,
                "traceloop.entity.input": _dumps({"args": [], "kwargs": {"messages": len(conv)}})})
            parent = wrapper
            start += rng.randint(200, 3000) * 1000
            end += rng.randint(200, 3000) * 1000

        if self.family == GENAI:
            scope = _SCOPES[(GENAI, model.vendor if model.vendor in ("openai", "anthropic") else "openai")]
            attrs = {"gen_ai.operation.name": "chat", "gen_ai.request.model": model.name,
                     "server.address": vendor[7], "server.port": 443, "gen_ai.request.temperature": 0.2}
            if service.legacy:
                attrs["gen_ai.system"] = vendor[1]
            else:
                attrs["gen_ai.provider.name"] = vendor[0]
            span = self._open(parent, f"chat {model.name}", SpanKind.CLIENT, scope, start, attrs)
            inputs = [{"role": m["role"], "parts": [{"type": "text", "content": m["content"]}]} for m in conv]
            attrs["gen_ai.input.messages"] = _dumps(inputs)
            attrs["gen_ai.system_instructions"] = _dumps([{"type": "text", "content": system}])
            if not failed:
                parts = ([{"type": "tool_call", "id": call_id, "name": tool_call[0], "arguments": tool_call[1]}]
                         if tool_call is not None else [{"type": "text", "content": text}])
                attrs.update({
                    "gen_ai.response.model": model.response, "gen_ai.response.id": f"resp_{rng.getrandbits(80):020x}",
                    "gen_ai.response.finish_reasons": (finish,),
                    "gen_ai.usage.input_tokens": input_tokens, "gen_ai.usage.output_tokens": generated,
                    "gen_ai.output.messages": _dumps([{"role": "assistant", "parts": parts, "finish_reason": finish}]),
                })
                if cached:
                    attrs["gen_ai.usage.cache_read.input_tokens"] = cached
                if reasoning:
                    attrs["gen_ai.usage.reasoning.output_tokens"] = reasoning
        elif self.family == OPENINFERENCE:
            attrs = {"openinference.span.kind": "LLM", "llm.model_name": model.response, "llm.provider": vendor[2],
                     "llm.system": vendor[3],
                     "llm.invocation_parameters": _dumps({"model": model.name, "temperature": 0.2,
                                                          "max_tokens": 4096})}
            messages = [{"role": "system", "content": system}] + conv
            for i, m in enumerate(messages):
                attrs[f"llm.input_messages.{i}.message.role"] = m["role"]
                attrs[f"llm.input_messages.{i}.message.content"] = m["content"]
            attrs["input.value"] = _dumps({"messages": [[{"type": m["role"], "content": m["content"]}
                                                         for m in messages]]})
            attrs["input.mime_type"] = "application/json"
            span = self._open(parent, vendor[5], SpanKind.INTERNAL, _SCOPES[(OPENINFERENCE, "any")], start, attrs)
            if not failed:
                attrs["llm.output_messages.0.message.role"] = "assistant"
                if tool_call is not None:
                    prefix = "llm.output_messages.0.message.tool_calls.0.tool_call."
                    attrs[prefix + "id"] = call_id
                    attrs[prefix + "function.name"] = tool_call[0]
                    attrs[prefix + "function.arguments"] = _dumps(tool_call[1])
                else:
                    attrs["llm.output_messages.0.message.content"] = text
                attrs.update({
                    "llm.token_count.prompt": input_tokens, "llm.token_count.completion": generated,
                    "llm.token_count.total": input_tokens + generated,
                    "output.value": _dumps({"generations": [[{"text": text, "finish_reason": finish}]]}),
                    "output.mime_type": "application/json",
                })
                if cached:
                    attrs["llm.token_count.prompt_details.cache_read"] = cached
                if reasoning:
                    attrs["llm.token_count.completion_details.reasoning"] = reasoning
        else:
            scope = _SCOPES[(TRACELOOP, model.vendor if model.vendor in ("openai", "anthropic") else "openai")]
            attrs = {"llm.request.type": "chat", "gen_ai.system": vendor[4], "gen_ai.request.model": model.name,
                     "gen_ai.request.temperature": 0.2, "llm.is_streaming": False,
                     "traceloop.workflow.name": self.workflow,
                     "traceloop.entity.path": task or self.kind}
            if model.vendor == "openai":
                attrs["gen_ai.openai.api_base"] = "https://api.openai.com/v1/"
            messages = [{"role": "system", "content": system}] + conv
            for i, m in enumerate(messages):
                attrs[f"gen_ai.prompt.{i}.role"] = m["role"]
                attrs[f"gen_ai.prompt.{i}.content"] = m["content"]
            span = self._open(parent, vendor[6], SpanKind.CLIENT, scope, start, attrs)
            if not failed:
                attrs.update({"gen_ai.response.model": model.response,
                              "gen_ai.response.id": f"msg_{rng.getrandbits(80):020x}",
                              "gen_ai.completion.0.role": "assistant", "gen_ai.completion.0.finish_reason": finish,
                              "llm.usage.total_tokens": input_tokens + generated})
                if tool_call is not None:
                    attrs["gen_ai.completion.0.tool_calls.0.id"] = call_id
                    attrs["gen_ai.completion.0.tool_calls.0.name"] = tool_call[0]
                    attrs["gen_ai.completion.0.tool_calls.0.arguments"] = _dumps(tool_call[1])
                else:
                    attrs["gen_ai.completion.0.content"] = text
                if service.legacy:
                    attrs["gen_ai.usage.prompt_tokens"] = input_tokens
                    attrs["gen_ai.usage.completion_tokens"] = generated
                else:
                    attrs["gen_ai.usage.input_tokens"] = input_tokens
                    attrs["gen_ai.usage.output_tokens"] = generated
                if cached and model.vendor == "anthropic":
                    attrs["gen_ai.usage.cache_read_input_tokens"] = cached

        if failed:
            span.error = f"Error code: 429 - rate limit reached for {model.name}"
            span.attrs["error.type"] = _RATE_LIMIT_ERROR[model.vendor]
            span.events.append(("exception", end - 1000, {
                "exception.type": _RATE_LIMIT_ERROR[model.vendor],
                "exception.message": f"Error code: 429 - rate limit reached for {model.name}",
                "exception.escaped": "False"}))
        if service.key_events:  # the provider key, fetched from a vault for this call
            self._use(span, start + rng.randint(1, 3000) * 1000, f"{self.tenant.name}-{model.vendor}-key",
                      self.tenant.name, "model:invoke", f"{model.vendor}:{self.tenant.name}", self.tenant.name,
                      "invoke")
        if not failed:
            fleet.observe_cost(self.tenant.name, span)
        self._close(span, end)
        if wrapper is not None:
            wrapper.attrs["output.value" if self.family == OPENINFERENCE else "traceloop.entity.output"] = \
                _dumps({"finish_reason": finish if not failed else "error"})
            self._close(wrapper, end + rng.randint(100, 2000) * 1000)
            end = wrapper.end
        self._last_answer = text
        return end

    # --- tool calls ---------------------------------------------------------------------------------------------

    def tool(self, parent: _Span, start: int, name: str, arguments: dict, result, *, retry: bool = True,
             cred_tenant: str | None = None, resource: str | None = None) -> int:
        """A tool call. A failed call (timeout) is retried with the same arguments, at most twice; now and
        then a successful one is repeated: normal traces repeat a call 1-2 times."""
        rng = self.rng
        t = start
        fails = 0
        if retry and rng.random() < 0.05:
            fails = 2 if rng.random() < 0.25 else 1
        for _ in range(fails):
            t = self._tool_span(parent, t, name, arguments, None, cred_tenant, resource, failed=True)
            t += rng.randint(200, 3000) * MS
        t = self._tool_span(parent, t, name, arguments, result, cred_tenant, resource)
        if retry and fails < 2 and rng.random() < 0.03:  # the agent checks once more
            t = self._tool_span(parent, t + rng.randint(500, 5000) * MS, name, arguments, result, cred_tenant,
                                resource)
        return t

    def _tool_span(self, parent: _Span, start: int, name: str, arguments: dict, result, cred_tenant: str | None,
                   resource: str | None, *, failed: bool = False) -> int:
        rng = self.rng
        description, cred_kind, action, (lo, hi) = _TOOLS[name]
        duration = _log_uniform(rng, lo, hi) * MS
        if failed:
            duration = rng.randint(10_000, 30_000) * MS  # timed out
        args_json = _dumps(arguments)
        result_json = _dumps(result if not failed else {"error": "timeout"})
        self.repeats[(name, args_json)] += 1
        wrapper = None
        if self.family == GENAI:
            span = self._open(parent, f"execute_tool {name}", SpanKind.INTERNAL, _SCOPES[(GENAI, "agent")], start, {
                "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name, "gen_ai.tool.type": "function",
                "gen_ai.tool.call.id": f"call_{rng.getrandbits(64):016x}", "gen_ai.tool.description": description,
                "gen_ai.tool.call.arguments": args_json})
            if not failed:
                span.attrs["gen_ai.tool.call.result"] = result_json
        elif self.family == OPENINFERENCE:
            wrapper = self._chain(parent, "tools", start, args_json)
            start += rng.randint(200, 2000) * 1000
            schema = {"type": "object", "properties": {k: {"type": _json_type(v)} for k, v in arguments.items()},
                      "required": list(arguments)}
            span = self._open(wrapper, name, SpanKind.INTERNAL, _SCOPES[(OPENINFERENCE, "any")], start, {
                "openinference.span.kind": "TOOL", "tool.name": name, "tool.description": description,
                "tool.parameters": _dumps(schema), "input.value": args_json, "input.mime_type": "application/json"})
            if not failed:
                span.attrs["output.value"] = result_json
                span.attrs["output.mime_type"] = "application/json"
        else:
            span = self._open(parent, f"{name}.tool", SpanKind.INTERNAL, _SCOPES[(TRACELOOP, "decorator")], start, {
                "traceloop.span.kind": "tool", "traceloop.entity.name": name,
                "traceloop.workflow.name": self.workflow, "traceloop.entity.path": f"{self.kind}.{name}",
                "traceloop.entity.input": _dumps({"args": [], "kwargs": arguments})})
            if not failed:
                span.attrs["traceloop.entity.output"] = result_json
        if failed:
            span.error = f"TimeoutError: {name} did not answer within 30 s"
            span.attrs["error.type"] = "TimeoutError"
        if cred_kind is not None:
            owner = cred_tenant or self.tenant.name
            self._use(span, start + rng.randint(1, 5000) * 1000, _credential_id(owner, cred_kind), owner,
                      _CREDENTIALS[cred_kind], resource or _resource(owner, cred_kind), owner, action)
            self.tool_uses += 1
        end = self._close(span, start + duration)
        if wrapper is not None:
            wrapper.attrs["output.value"] = result_json
            end = self._close(wrapper, end + rng.randint(100, 1500) * 1000)
        return end


def _json_type(value) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "string"


# --- agent kinds ------------------------------------------------------------------------------------------------

def _system(kind: str, tenant: str) -> str:
    return (f"You are the {kind.replace('-', ' ')} of {tenant}. Use only the tools provided, never act on another "
            f"tenant's data, cite what you rely on, and stop when the task is done.")


def _support_agent(tr: _Trace, parent: _Span | None, instance: int, start: int) -> int:
    rng, text, t_name, s = tr.rng, tr.fleet.text, tr.tenant.name, tr.service
    ticket = f"TCK-{rng.randint(10000, 99999)}"
    order = f"ORD-{rng.randint(2024, 2025)}-{rng.randint(100000, 999999)}"
    task = f"Ticket {ticket}: the customer says the {_word(rng, 'product')} {_word(rng, 'problem')}. Draft a reply."
    system = _system("support-agent", t_name)

    def body(agent: _Span, t: int) -> tuple[int, str]:
        conv = [{"role": "user", "content": task}]
        args = {"ticket_id": ticket, "include_thread": True}
        t, _ = tr.chat(agent, t, s.cheap, conv, system=system, tool_call=("get_ticket", args), task="triage")
        t = tr.tool(agent, t, "get_ticket", args, {"id": ticket, "status": "open", "messages": rng.randint(1, 9),
                                                   "order_id": order})
        conv += [{"role": "assistant", "content": f"get_ticket({_dumps(args)})"},
                 {"role": "tool", "content": text.say(rng, 1, 3)}]
        query = {"query": f"{_word(rng, 'product')} {_word(rng, 'problem')}", "top_k": rng.choice((3, 5, 8))}
        t, _ = tr.chat(agent, t, s.cheap, conv, system=system, tool_call=("search_kb", query))
        t = tr.tool(agent, t, "search_kb", query, {"hits": [{"id": f"kb-{rng.randint(100, 9999)}",
                                                              "score": round(rng.uniform(0.6, 0.95), 3)}
                                                             for _ in range(3)]})
        conv += [{"role": "assistant", "content": f"search_kb({_dumps(query)})"},
                 {"role": "tool", "content": text.say(rng, 2, 4)}]
        if rng.random() < 0.5:
            args = {"order_id": order, "include_history": rng.random() < 0.5}
            t, _ = tr.chat(agent, t, s.cheap, conv, system=system, tool_call=("get_order_status", args))
            t = tr.tool(agent, t, "get_order_status", args, {"order_id": order, "status": rng.choice(
                ("shipped", "delayed", "delivered", "processing"))})
            conv += [{"role": "tool", "content": text.say(rng, 1, 2)}]
        if rng.random() < 0.06:
            args = {"order_id": order, "amount": round(rng.uniform(5, 400), 2), "currency": "USD",
                    "reason": rng.choice(("damaged", "late", "duplicate charge"))}
            t, _ = tr.chat(agent, t, s.main, conv, system=system, tool_call=("issue_refund", args))
            t = tr.tool(agent, t, "issue_refund", args, {"refund_id": f"re_{rng.getrandbits(40):010x}",
                                                         "status": "succeeded"}, retry=False)
        return tr.chat(agent, t, s.cheap, conv, system=system, task="reply")

    return tr.agent(parent, "support-agent", instance, start, task, body)


def _sql_analyst(tr: _Trace, parent: _Span | None, instance: int, start: int) -> int:
    rng, text, t_name, s = tr.rng, tr.fleet.text, tr.tenant.name, tr.service
    metric, region = _word(rng, "metric"), _word(rng, "region")
    task = f"How did {metric} change week over week in {region}? Explain the drivers."
    system = _system("sql-analyst", t_name)

    def body(agent: _Span, t: int) -> tuple[int, str]:
        conv = [{"role": "user", "content": task}]
        for _ in range(rng.randint(1, 3)):
            args = {"query": (f"SELECT toStartOfWeek(ts) AS week, region, sum(amount_usd) AS amount FROM "
                              f"{rng.choice(('orders', 'invoices', 'refunds', 'events'))} WHERE ts >= "
                              f"'2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}' GROUP BY week, region "
                              f"ORDER BY week LIMIT {rng.choice((50, 100, 500))}"),
                    "database": "analytics", "timeout_s": 30}
            t, _ = tr.chat(agent, t, s.main, conv, system=system, tool_call=("run_sql", args), task="plan_query")
            t = tr.tool(agent, t, "run_sql", args, {"columns": ["week", "region", "amount"],
                                                    "rows": [[f"2025-W{rng.randint(1, 52)}", region,
                                                              round(rng.uniform(1e3, 9e5), 2)]
                                                             for _ in range(rng.randint(1, 4))],
                                                    "row_count": rng.randint(4, 5000)})
            conv += [{"role": "assistant", "content": f"run_sql({_dumps(args)})"},
                     {"role": "tool", "content": text.say(rng, 1, 3)}]
        return tr.chat(agent, t, s.main, conv, system=system, output=(150, 900), task="explain")

    return tr.agent(parent, "sql-analyst", instance, start, task, body)


def _code_reviewer(tr: _Trace, parent: _Span | None, instance: int, start: int) -> int:
    rng, text, t_name, s = tr.rng, tr.fleet.text, tr.tenant.name, tr.service
    repo, number = f"{t_name}/{rng.choice(('api', 'web', 'billing', 'infra'))}", rng.randint(100, 9999)
    task = f"Review pull request {repo}#{number} and list blocking issues."
    system = _system("code-reviewer", t_name)

    def body(agent: _Span, t: int) -> tuple[int, str]:
        conv = [{"role": "user", "content": task}]
        pr = {"repo": repo, "number": number}
        t = tr.tool(agent, t, "get_pull_request", pr, {"title": text.say(rng, 1, 1)[:80],
                                                       "files": rng.randint(1, 30),
                                                       "additions": rng.randint(1, 900)})
        for i in range(rng.randint(1, 3)):
            args = {"repo": repo, "path": f"src/{rng.choice(('handlers', 'models', 'jobs'))}/{i}_"
                                          f"{rng.getrandbits(24):06x}.py", "ref": f"{rng.getrandbits(40):010x}"}
            t = tr.tool(agent, t, "read_file", args, {"path": args["path"], "lines": rng.randint(20, 800)})
            conv.append({"role": "tool", "content": text.say(rng, 2, 5)})
        t, review = tr.chat(agent, t, s.deep, conv, system=system, output=(200, 1200), task="review")
        conv.append({"role": "assistant", "content": review})
        comment = {"repo": repo, "number": number, "line": rng.randint(1, 400), "body": review[:200]}
        t = tr.tool(agent, t, "post_review_comment", comment, {"id": rng.randint(10 ** 6, 10 ** 7)}, retry=False)
        return tr.chat(agent, t, s.cheap, conv, system=system, output=(40, 200), task="summary")

    return tr.agent(parent, "code-reviewer", instance, start, task, body)


def _research_planner(tr: _Trace, parent: _Span | None, instance: int, start: int) -> int:
    rng, text, t_name, s = tr.rng, tr.fleet.text, tr.tenant.name, tr.service
    topic = _word(rng, "topic")
    task = f"Research {topic} and write a one-page brief with sources."
    system = _system("research-planner", t_name)
    sub_system = _system("researcher", t_name)

    def researcher(question: str) -> Callable[[_Span, int], tuple[int, str]]:
        def body(agent: _Span, t: int) -> tuple[int, str]:
            conv = [{"role": "user", "content": question}]
            query = {"q": question[:80], "num_results": rng.choice((5, 8, 10))}
            t = tr.tool(agent, t, "web_search", query, {"results": [f"https://www.{_word(rng, 'verb').split()[0]}"
                                                                    f"-news.example.org/{rng.randint(1, 99999)}"
                                                                    for _ in range(3)]})
            for _ in range(rng.randint(1, 2)):
                page = {"url": f"https://docs.example.org/{rng.getrandbits(32):08x}", "max_chars": 20000}
                t = tr.tool(agent, t, "fetch_url", page, {"status": 200, "chars": rng.randint(2000, 20000)})
                conv.append({"role": "tool", "content": text.say(rng, 2, 5)})
            return tr.chat(agent, t, s.cheap, conv, system=sub_system, output=(100, 600))
        return body

    def body(agent: _Span, t: int) -> tuple[int, str]:
        conv = [{"role": "user", "content": task}]
        t, plan = tr.chat(agent, t, s.deep, conv, system=system, output=(100, 500), task="plan")
        conv.append({"role": "assistant", "content": plan})
        ends = []
        for product in rng.sample(_WORDS["product"], rng.randint(2, 4)):
            question = f"What is known about {topic} regarding the {product}?"
            k = rng.randint(1, _SUB_POOLS["researcher"])
            ends.append(tr.agent(agent, "researcher", k, t + rng.randint(5, 900) * MS, question, researcher(question)))
            conv.append({"role": "user", "content": "Finding: " + text.say(rng, 1, 2)})
        return tr.chat(agent, max(ends) + rng.randint(5, 200) * MS, s.main, conv, system=system, output=(300, 1500),
                       task="write_brief")

    return tr.agent(parent, "research-planner", instance, start, task, body)


def _batch_enricher(tr: _Trace, parent: _Span | None, instance: int, start: int, *, workers: int | None = None,
                    calls: Sequence[int] | None = None) -> int:
    rng, t_name, s = tr.rng, tr.tenant.name, tr.service
    batch = f"b-{rng.getrandbits(32):08x}"
    workers = workers or rng.randint(2, 4)
    calls = list(calls) if calls is not None else [rng.randint(6, 16) for _ in range(workers)]
    task = f"Classify the records of batch {batch}."
    system = _system("batch-enricher", t_name)
    worker_system = _system("enrich-worker", t_name)

    def worker(k: int, n: int) -> Callable[[_Span, int], tuple[int, str]]:
        def body(agent: _Span, t: int) -> tuple[int, str]:
            t = tr.tool(agent, t, "fetch_records", {"batch_id": batch, "shard": k, "limit": 500},
                        {"records": n, "shard": k})
            for i in range(n):
                conv = [{"role": "user", "content": f"Classify record {i} of shard {k}: "
                                                    f"{tr.fleet.text.say(rng, 1, 1)}"}]
                t, _ = tr.chat(agent, t, s.cheap, conv, system=worker_system, output=(4, 30), context=(80, 400),
                               answer=rng.choice(("billing", "shipping", "account", "fraud", "other")))
                t += rng.randint(300, 2500) * MS
            t = tr.tool(agent, t, "write_results", {"batch_id": batch, "shard": k, "rows": n}, {"written": n})
            return t, f"shard {k}: {n} records"
        return body

    def body(agent: _Span, t: int) -> tuple[int, str]:
        t = tr.tool(agent, t, "count_records", {"batch_id": batch}, {"count": sum(calls) * 50})
        conv = [{"role": "user", "content": task}]
        t, _ = tr.chat(agent, t, s.cheap, conv, system=system, output=(20, 80), task="plan_shards")
        ends = [tr.agent(agent, "enrich-worker", 1 + (k + rng.randint(0, 7)) % _SUB_POOLS["enrich-worker"],
                         t + rng.randint(5, 1500) * MS, f"Enrich shard {k} of batch {batch}.", worker(k, n))
                for k, n in enumerate(calls)]
        return max(ends) + rng.randint(5, 300) * MS, f"batch {batch}: {sum(calls)} records"

    return tr.agent(parent, "batch-enricher", instance, start, task, body)


def _deploy_watcher(tr: _Trace, parent: _Span | None, instance: int, start: int) -> int:
    """A long-lived agent: follows a rollout for 10-40 minutes, polling its status."""
    rng, text, t_name, s = tr.rng, tr.fleet.text, tr.tenant.name, tr.service
    rollout = f"ro-{rng.getrandbits(32):08x}"
    task = f"Watch rollout {rollout} of {rng.choice(('api', 'web', 'workers'))} to production; report when done."
    system = _system("deploy-watcher", t_name)
    length = rng.randint(10 * 60, 40 * 60) * NS

    def body(agent: _Span, t: int) -> tuple[int, str]:
        t0 = t
        conv = [{"role": "user", "content": task}]
        t, _ = tr.chat(agent, t, s.cheap, conv, system=system, output=(40, 200), task="plan")
        cursor = 0
        while t - t0 < length:
            t += rng.randint(40, 150) * NS
            cursor += 1
            args = {"rollout_id": rollout, "cursor": cursor}
            t = tr.tool(agent, t, "get_rollout_status", args, {"rollout_id": rollout, "cursor": cursor,
                                                               "progress": min(100, cursor * rng.randint(3, 9)),
                                                               "error_rate": round(rng.uniform(0, 0.02), 4)})
            conv = conv[-8:] + [{"role": "tool", "content": text.say(rng, 1, 1)}]
            if cursor % rng.randint(3, 5) == 0:
                t, _ = tr.chat(agent, t, s.cheap, conv, system=system, output=(20, 120), task="assess")
        t, summary = tr.chat(agent, t, s.main, conv, system=system, output=(60, 300), task="report")
        t = tr.tool(agent, t, "post_status_update", {"channel": "#deploys", "text": summary[:160]}, {"ok": True},
                    retry=False)
        return t, summary

    return tr.agent(parent, "deploy-watcher", instance, start, task, body)


_KIND_BODIES: dict[str, Callable[..., int]] = {
    "support-agent": _support_agent,
    "sql-analyst": _sql_analyst,
    "code-reviewer": _code_reviewer,
    "research-planner": _research_planner,
    "batch-enricher": _batch_enricher,
    "deploy-watcher": _deploy_watcher,
}


# --- the fleet ----------------------------------------------------------------------------------------------------

@dataclass
class _TraceRecord:
    """What each trace looked like, for the normals the incidents are sized on (all traces, by start)."""

    start: int
    kind: str
    calls: int
    forks: int
    max_identical: int
    tool_uses: int


class _Fleet:
    def __init__(self, *, seed: int, start_ns: int, duration_ns: int, tenants: Sequence[_Tenant], scale: float,
                 emitter: _Emitter | None) -> None:
        self.seed = seed
        self.start_ns = start_ns
        self.duration_ns = duration_ns
        self.end_ns = start_ns + duration_ns
        self.tenants = list(tenants)
        self.scale = scale
        self.emitter = emitter
        self.text = _Text(seed)
        self.queue: list[tuple[int, int, _Span]] = []
        self._seq = 0
        self.planned = 0
        self.records: list[_TraceRecord] = []
        self.incidents: list[Incident] = []
        self.cost_tenants: set[str] = set()
        self.costs: dict[str, list[tuple[int, float]]] = {}
        self.use_prefixes: tuple[str, ...] = ()
        self.uses: dict[str, list[tuple[int, int]]] = {}
        self._pricer = None
        self._bursts = {t.name: self._plan_bursts(t) for t in self.tenants}

    # --- bookkeeping -------------------------------------------------------------------------------------------

    def queue_span(self, span: _Span) -> None:
        self._seq += 1
        self.planned += 1
        heapq.heappush(self.queue, (span.end, self._seq, span))

    def emit_until(self, t: int) -> None:
        queue, emitter = self.queue, self.emitter
        while queue and queue[0][0] <= t:
            span = heapq.heappop(queue)[2]
            if emitter is not None:
                emitter.emit(span)

    def observe_cost(self, tenant: str, span: _Span) -> None:
        if tenant not in self.cost_tenants:
            return
        if self._pricer is None:
            from agentwatch.collector.receiver.pricing import Pricer
            self._pricer = Pricer()
        attrs = {k: str(v) for k, v in span.attrs.items() if isinstance(v, (int, str)) and not isinstance(v, bool)
                 and ("token" in k or "model" in k or k in ("gen_ai.provider.name", "gen_ai.system", "llm.provider",
                                                            "llm.system"))}
        cost = self._pricer(attrs, span.start)
        self.costs.setdefault(tenant, []).append((span.start, cost or 0.0))

    def observe_use(self, credential: str, ts: int, agent: int) -> None:
        if credential.startswith(self.use_prefixes):
            self.uses.setdefault(credential, []).append((ts, agent))

    def record(self, tr: _Trace) -> None:
        self.records.append(_TraceRecord(tr.start, tr.kind, tr.calls, tr.agents - 1,
                                         max(tr.repeats.values(), default=0), tr.tool_uses))

    # --- traffic ------------------------------------------------------------------------------------------------

    def _plan_bursts(self, tenant: _Tenant) -> list[tuple[int, int, float]]:
        rng = random.Random(f"{self.seed}:{self.start_ns}:bursts:{tenant.name}")
        bursts, t = [], self.start_ns
        while True:
            t += int(rng.expovariate(1 / (3 * 3600)) * NS)
            if t >= self.end_ns:
                return bursts
            bursts.append((t, t + rng.randint(4 * 60, 20 * 60) * NS, rng.uniform(1.6, 2.8)))

    def rate(self, tenant: _Tenant, t: int) -> float:
        """Traces per minute of a tenant at time t."""
        if t < self.start_ns + tenant.arrives * self.duration_ns:
            return 0.0
        hour = (t / HOUR) % 24
        d = abs(hour - tenant.peak_hour)
        d = min(d, 24 - d)
        daily = 0.12 + 0.88 * math.exp(-(d * d) / (2 * tenant.width_h ** 2))
        weekday = (t // DAY + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
        weekly = 0.6 if weekday >= 5 else 1.0
        burst = 1.0
        for b0, b1, factor in self._bursts[tenant.name]:
            if b0 <= t < b1:
                burst = factor
        ten = t // (10 * MINUTE)
        jitter = math.exp(random.Random(f"{self.seed}:jitter:{tenant.name}:{ten}").gauss(0, 0.2))
        return tenant.traces_per_hour * self.scale * _RATE_CALIBRATION * daily * weekly * burst * jitter / 60

    def minute_starts(self, minute: int) -> list[tuple[int, int, Callable[[], None]]]:
        m0 = self.start_ns + minute * MINUTE
        events = []
        absolute = m0 // MINUTE
        for tenant in self.tenants:
            lam = self.rate(tenant, m0)
            if lam <= 0:
                continue
            for service in tenant.services:
                rng = random.Random(f"{self.seed}:starts:{service.name}:{absolute}")
                kinds = [k for k, _ in service.mix]
                weights = [w for _, w in service.mix]
                for i in range(_poisson(rng, lam * service.share)):
                    t = m0 + rng.randrange(MINUTE)
                    if t >= self.end_ns:
                        continue
                    kind = rng.choices(kinds, weights)[0]
                    k = rng.choices(range(1, service.instances + 1),
                                    [1 / j for j in range(1, service.instances + 1)])[0]
                    key = f"n:{service.name}:{absolute}:{i}"
                    events.append((t, 0, lambda t=t, tenant=tenant, service=service, kind=kind, k=k, key=key:
                                   self.normal_trace(tenant, service, kind, k, key, t)))
        return events

    def trace(self, tenant: _Tenant, service: _Service, key: str, kind: str, start: int) -> _Trace:
        tr = _Trace(self, tenant, service, key, kind)
        tr.start = start
        return tr

    def normal_trace(self, tenant: _Tenant, service: _Service, kind: str, instance: int, key: str, t: int) -> None:
        tr = self.trace(tenant, service, key, kind, t)
        _KIND_BODIES[kind](tr, None, instance, t)
        self.record(tr)

    # --- normals (everything sent before t) ------------------------------------------------------------------------

    def kind_records(self, kind: str, before: int) -> list[_TraceRecord]:
        return [r for r in self.records if r.kind == kind and r.start < before]

    def spend(self, tenant: str, a: int, b: int) -> float:
        return sum(c for ts, c in self.costs.get(tenant, ()) if a <= ts < b)

    def distinct_agents(self, credential: str, a: int, b: int) -> int:
        return len({agent for ts, agent in self.uses.get(credential, ()) if a <= ts < b})

    def credential_normal(self, credential: str, t: int) -> int:
        """Most distinct agents using the credential in a 5-minute window of the hour before t."""
        h0 = max(self.start_ns, t - HOUR)
        windows = max(1, (t - h0) // CREDENTIAL_WINDOW)
        best = 0
        for k in range(windows):
            b = t - k * CREDENTIAL_WINDOW
            best = max(best, self.distinct_agents(credential, max(h0, b - CREDENTIAL_WINDOW), b))
        return best

    # --- incidents --------------------------------------------------------------------------------------------------

    def label(self, kind: str, tenant: str, agent_id: str, trace_id: int, credential_id: str, started: int,
              ended: int, description: str) -> None:
        digest = _hex_id("stock", self.seed, self.start_ns, kind)[:12]
        self.incidents.append(Incident(f"{kind}-{digest}", kind, tenant, agent_id, f"{trace_id:032x}", credential_id,
                                       started, ended, description))

    def pick_service(self, tenant: _Tenant, kind: str) -> _Service:
        for service in tenant.services:
            if any(k == kind for k, _ in service.mix):
                return service
        return tenant.services[0]

    def agent_label(self, tr: _Trace, kind: str, instance: int) -> str:
        return tr.agent_id(kind, instance) if tr.family == GENAI else kind

    def incident_fanout(self, tenant: _Tenant, t: int, u: float) -> None:
        history = self.kind_records("batch-enricher", t)
        mean_calls = sum(r.calls for r in history) / len(history) if history else 31.0
        mean_forks = sum(r.forks for r in history) / len(history) if history else 3.0
        f = 3 + u * 6.5
        total = _between(f * mean_calls, mean_calls)
        forks = min(FANOUT_MAX_FORKS, _between(f * mean_forks, mean_forks))
        per = total - 1  # the root's own planning call
        calls = [per // forks + (1 if i < per % forks else 0) for i in range(forks)]
        service = self.pick_service(tenant, "batch-enricher")
        tr = self.trace(tenant, service, "i:fanout", "batch-enricher", t)
        end = _batch_enricher(tr, None, 1, t, workers=forks, calls=calls)
        self.record(tr)
        self.label("fanout", tenant.name, self.agent_label(tr, "batch-enricher", 1), tr.trace_id, "", t, end,
                   f"batch-enricher of {tenant.name} ({service.name}, {service.family}) ran away: {tr.calls} model "
                   f"calls and {tr.agents - 1} sub-agents in one tree, its root closing last; normal (mean of "
                   f"{len(history)} batch-enricher traces before it): {mean_calls:.1f} calls, {mean_forks:.1f} "
                   f"sub-agents; factor {f:.2f}; measured {tr.calls / mean_calls:.2f}x calls, "
                   f"{(tr.agents - 1) / mean_forks:.2f}x sub-agents")

    def incident_loop(self, tenant: _Tenant, t: int, u: float) -> None:
        history = self.kind_records("support-agent", t)
        normal = max((r.max_identical for r in history), default=3) or 1
        f = 3 + u * (min(9.5, LOOP_MAX_REPEATS / normal) - 3)
        repeats = round(f * normal)
        service = self.pick_service(tenant, "support-agent")
        tr = self.trace(tenant, service, "i:loop", "support-agent", t)
        rng = tr.rng
        order = f"ORD-2025-{rng.randint(100000, 999999)}"
        args = {"order_id": order, "include_history": False}
        system = _system("support-agent", tenant.name)

        def body(agent: _Span, t: int) -> tuple[int, str]:
            conv = [{"role": "user", "content": f"Confirm that the refund for {order} has completed, then tell the "
                                                f"customer."}]
            for _ in range(repeats):
                t, _ = tr.chat(agent, t, service.cheap, conv, system=system, tool_call=("get_order_status", args),
                               output=(20, 60), fail_p=0)
                t = tr.tool(agent, t, "get_order_status", args, {"order_id": order, "status": "refund_pending",
                                                                 "retry_after_s": 30}, retry=False)
                conv = conv[-6:] + [{"role": "tool", "content": "status: refund_pending"}]
            return t, "The refund is still pending."

        end = tr.agent(None, "support-agent", 1, t, f"Confirm the refund of {order}.", body)
        self.record(tr)
        self.label("loop", tenant.name, self.agent_label(tr, "support-agent", 1), tr.trace_id, "", t, end,
                   f"support-agent of {tenant.name} ({service.name}, {service.family}) called get_order_status "
                   f"{_dumps(args)} {repeats} times in one trace; normal (most identical calls in any of "
                   f"{len(history)} support-agent traces before it): {normal}; factor {f:.2f}; measured "
                   f"{repeats / normal:.2f}x")

    def incident_cross_tenant(self, a: _Tenant, b: _Tenant, t: int, u: float) -> None:
        history = self.kind_records("sql-analyst", t)
        normal = sum(r.tool_uses for r in history) / len(history) if history else 2.0
        f = 3 + u * 6.5
        cross = _between(f * normal, normal)
        service = self.pick_service(a, "sql-analyst")
        tr = self.trace(a, service, "i:cross_tenant", "sql-analyst", t)
        lifted = _credential_id(b.name, "warehouse")
        system = _system("sql-analyst", a.name)

        def body(agent: _Span, t: int) -> tuple[int, str]:
            conv = [{"role": "user", "content": f"Compare our invoice totals with {b.name}'s for the partner "
                                                f"reconciliation."}]
            # the agent's own warehouse credential is not enough: it finds the other tenant's in a query result
            args = {"query": "SELECT note FROM partner_notes WHERE partner = '" + b.name + "' LIMIT 20",
                    "database": "analytics", "timeout_s": 30}
            t = tr.tool(agent, t, "run_sql", args, {"rows": [[f"WAREHOUSE_KEY={lifted}"]]}, retry=False)
            conv.append({"role": "tool", "content": f"note: {b.name} warehouse key {lifted} (do not share)"})
            for i in range(cross):
                table = ("invoices", "payroll", "customers", "contracts", "refunds")[i % 5]
                query = {"query": f"SELECT * FROM {table} ORDER BY updated_at DESC LIMIT 1000 OFFSET {1000 * i}",
                         "database": "finance", "timeout_s": 60}
                t, _ = tr.chat(agent, t, service.main, conv, system=system, tool_call=("run_sql", query), fail_p=0)
                t = tr.tool(agent, t, "run_sql", query, {"row_count": 1000}, retry=False, cred_tenant=b.name,
                            resource=f"{b.name}/warehouse/finance")
            return tr.chat(agent, t, service.main, conv, system=system, fail_p=0)

        end = tr.agent(None, "sql-analyst", 2 if service.instances >= 2 else 1, t,
                       f"Reconcile invoices with {b.name}.", body)
        self.record(tr)
        self.label("cross_tenant", a.name, self.agent_label(tr, "sql-analyst", 2 if service.instances >= 2 else 1),
                   tr.trace_id, lifted, t, end,
                   f"sql-analyst of {a.name} ({service.name}, {service.family}) used {b.name}'s credential {lifted} "
                   f"on {b.name}/warehouse/finance {cross} times in one trace; normal (mean credential uses from "
                   f"tool spans of {len(history)} sql-analyst traces before it): {normal:.2f}; factor {f:.2f}; "
                   f"measured {cross / normal:.2f}x")

    def incident_cost_spike(self, tenant: _Tenant, t: int, length: int, u: float) -> None:
        """Run at t + length: the spike fills [t, t + length) up to f x the tenant's spend before it."""
        h0 = max(self.start_ns, t - HOUR)
        base = self.spend(tenant.name, h0, t) / (t - h0) * MINUTE  # USD per minute
        window = self.spend(tenant.name, t, t + length) / length * MINUTE
        hi = min(9.5, 0.95 * COST_MAX_USD_PER_MINUTE / base) if base > 0 else 9.5
        f = 3 + u * max(0.0, hi - 3)
        target = f * base * length / MINUTE  # USD in the window
        extra = max(target - window * length / MINUTE, 0.5 * base * length / MINUTE)
        service = self.pick_service(tenant, "research-planner")
        model = _MODELS[service.spike]
        tr = self.trace(tenant, service, "i:cost_spike", "research-planner", t)
        rng = tr.rng
        system = _system("research-planner", tenant.name)
        # calls of the far more expensive model with long contexts and outputs, spread over the window;
        # their tokens are scaled so that their cost is the extra spend
        per_call = (40_000 * 15 + 4_000 * 75) / 1e6
        n = max(3, min(40, round(extra / per_call)))
        plan = [(rng.randint(20_000, 60_000), rng.randint(2_000, 6_000)) for _ in range(n)]
        scale = 1.0
        if self._pricer is None:
            from agentwatch.collector.receiver.pricing import Pricer
            self._pricer = Pricer()
        provider = _VENDORS[model.vendor][0]
        for _ in range(2):
            planned = sum(self._pricer.cost(_price_provider(provider), model.response, t // DAY,
                                            int(i * scale), 0, int(o * scale)) or 0 for i, o in plan)
            if planned > 0 and extra > 0:
                scale *= extra / planned
        starts = [t + int((i + rng.uniform(0.05, 0.6)) * length / n) for i in range(n)]

        def body(agent: _Span, t0: int) -> tuple[int, str]:
            conv = [{"role": "user", "content": f"Deep-dive: reconcile every {_word(rng, 'metric')} across all "
                                                f"regions and years, explaining each discrepancy in detail."}]
            ends = []
            for start, (i, o) in zip(starts, plan, strict=True):
                ends.append(tr.chat(agent, max(start, t0), model.name, conv, system=system, fail_p=0,
                                    tokens=(max(1, int(i * scale)), max(1, int(o * scale))), task="deep_dive")[0])
            return max(ends), "Deep-dive complete."

        tr.start = t - 2 * NS
        tr.agent(None, "research-planner", 1, tr.start, "Reconcile the full history of every account "
                 "(deep-dive mode).", body)
        self.record(tr)
        measured = self.spend(tenant.name, t, t + length) / length * MINUTE
        self.label("cost_spike", tenant.name, self.agent_label(tr, "research-planner", 1), tr.trace_id, "", t,
                   t + length,
                   f"research-planner of {tenant.name} ({service.name}, {service.family}) switched to {model.name} "
                   f"with long contexts and outputs: {n} calls; the tenant spent ${measured:.3f}/min over "
                   f"{length / MINUTE:.1f} min against ${base:.3f}/min in the {(t - h0) / MINUTE:.0f} min before; "
                   f"factor {f:.2f}; measured {measured / base if base else float('inf'):.2f}x")

    def incident_credential_fanout(self, owner: _Tenant, t: int, u: float) -> None:
        """Run at t + 5 min: new agents of the owner use one of its credentials within [t, t + 5 min)."""
        f = 3 + u * 6.5
        candidates = []
        for cred_kind in _CREDENTIALS:
            cred = _credential_id(owner.name, cred_kind)
            normal = self.credential_normal(cred, t)
            if normal >= 1:
                candidates.append((normal, cred_kind, cred))
        fits = [c for c in candidates if math.ceil(3 * c[0]) <= CREDENTIAL_MAX_AGENTS]
        if fits:
            normal, cred_kind, cred = max(fits)
            f = min(f, CREDENTIAL_MAX_AGENTS / normal)
        else:
            normal, cred_kind, cred = 1, "billing", _credential_id(owner.name, "billing")
        target = max(3 * normal, math.floor(f * normal))
        present = self.distinct_agents(cred, t, t + CREDENTIAL_WINDOW)
        new = max(1, target - present)
        tool = {"helpdesk": "get_ticket", "search": "search_kb", "orders": "get_order_status",
                "billing": "issue_refund",
                "warehouse": "run_sql", "github": "read_file", "deploy": "get_rollout_status",
                "chatops": "post_status_update"}[cred_kind]
        rng = random.Random(f"{self.seed}:credential_fanout:plan")
        offsets = sorted(rng.randint(0, int(CREDENTIAL_WINDOW * 0.85 // MS)) * MS for _ in range(new))
        first: tuple[_Trace, str] | None = None
        last_end = t
        for i, offset in enumerate(offsets):
            service = owner.services[i % len(owner.services)]
            kind = [k for k, _ in service.mix][i % len(service.mix)]
            instance = 1 + i % service.instances
            tr = self.trace(owner, service, f"i:credential_fanout:{i}", kind, t + offset)
            system = _system(kind, owner.name)
            args = _credential_fanout_args(tool, tr.rng, owner.name, i)

            def body(agent: _Span, t0: int, tr=tr, service=service, args=args, system=system) -> tuple[int, str]:
                conv = [{"role": "user", "content": "Use the shared partner key from the team prompt library to "
                                                    "pull the data."}]
                t1, _ = tr.chat(agent, t0, service.cheap, conv, system=system, tool_call=(tool, args), fail_p=0)
                t1 = tr.tool(agent, t1, tool, args, {"ok": True}, retry=False)
                return tr.chat(agent, t1, service.cheap, conv, system=system, output=(30, 120), fail_p=0)

            end = tr.agent(None, kind, instance, t + offset, "Pull the data with the shared key.", body)
            self.record(tr)
            last_end = max(last_end, end)
            if first is None:
                first = (tr, self.agent_label(tr, kind, instance))
        measured = self.distinct_agents(cred, t, t + CREDENTIAL_WINDOW)
        assert first is not None
        self.label("credential_fanout", owner.name, first[1], first[0].trace_id, cred, t, last_end,
                   f"{cred} of {owner.name} used by {measured} distinct agents within 5 minutes ({new} of them "
                   f"new to it); normal (most distinct agents in a 5-minute window of the hour before): {normal}; "
                   f"factor {f:.2f}; measured {measured / normal:.2f}x")

    # --- the schedule ------------------------------------------------------------------------------------------------

    def incident_events(self) -> list[tuple[int, int, Callable[[], None]]]:
        rng = random.Random(f"{self.seed}:{self.start_ns}:stock-incidents")
        d = self.duration_ns
        eligible = [t for t in self.tenants if not t.tiny and t.arrives == 0]
        if len(eligible) < 1 or len(self.tenants) < 2:
            raise ValueError("incidents need at least 2 tenants, one of them present from the start")
        rng.shuffle(eligible)

        def having(kind: str, skip: Sequence[_Tenant] = ()) -> _Tenant:
            for t in eligible:
                if t not in skip and any(k == kind for s in t.services for k, _ in s.mix):
                    return t
            return next((t for t in eligible if t not in skip), eligible[0])

        fan_t = having("batch-enricher")
        loop_t = having("support-agent", [fan_t])
        spike_t = next((t for t in eligible if t not in (fan_t, loop_t)), eligible[-1])
        cred_t = having("support-agent", [spike_t])
        a = having("sql-analyst", [cred_t])
        b = next(t for t in self.tenants if t is not a)
        spike_len = int(min(8 * MINUTE, max(MINUTE, 0.1 * d)))
        windows = {"fanout": 0, "loop": 0, "cross_tenant": 0, "cost_spike": spike_len,
                   "credential_fanout": CREDENTIAL_WINDOW}
        kinds = list(KINDS)
        rng.shuffle(kinds)
        factors = {k: rng.random() for k in KINDS}
        free = 0.7 * d - sum(windows.values())
        if free < 0:
            raise ValueError("incidents need a run of at least 9 minutes")
        gaps = [rng.uniform(0.5, 1.5) for _ in range(len(kinds) + 1)]
        gaps = [g * free / sum(gaps) for g in gaps]
        self.cost_tenants = {spike_t.name}
        self.use_prefixes = (f"{cred_t.name}-",)
        events = []
        t = self.start_ns + int(0.2 * d)
        for i, kind in enumerate(kinds):
            t += int(gaps[i])
            t = t // NS * NS
            at = t
            if kind == "fanout":
                events.append((at, 1, lambda at=at: self.incident_fanout(fan_t, at, factors["fanout"])))
            elif kind == "loop":
                events.append((at, 1, lambda at=at: self.incident_loop(loop_t, at, factors["loop"])))
            elif kind == "cross_tenant":
                events.append((at, 1, lambda at=at: self.incident_cross_tenant(a, b, at, factors["cross_tenant"])))
            elif kind == "cost_spike":
                events.append((at + spike_len, -1, lambda at=at: self.incident_cost_spike(
                    spike_t, at, spike_len, factors["cost_spike"])))
            else:
                events.append((at + CREDENTIAL_WINDOW, -1, lambda at=at: self.incident_credential_fanout(
                    cred_t, at, factors["credential_fanout"])))
            t += windows[kind]
        return events

    def run(self, incidents: bool) -> None:
        pending = sorted(self.incident_events(), key=lambda e: (e[0], e[1])) if incidents else []
        pending_i = 0
        minutes = math.ceil(self.duration_ns / MINUTE)
        for minute in range(minutes):
            m_end = self.start_ns + (minute + 1) * MINUTE
            events = self.minute_starts(minute)
            while pending_i < len(pending) and pending[pending_i][0] < m_end:
                events.append(pending[pending_i])
                pending_i += 1
            # incidents sized on a window run before the traces that start at their time (-1), those that
            # start a trace after them (1)
            events.sort(key=lambda e: (e[0], e[1]))
            for t, _, fn in events:
                self.emit_until(t - _LAG)
                fn()
        for t, _, fn in pending[pending_i:]:
            self.emit_until(t - _LAG)
            fn()
        self.emit_until(1 << 62)
        order = {k: i for i, k in enumerate(KINDS)}
        self.incidents.sort(key=lambda inc: (inc.started_at_ns, order[inc.kind]))


def _between(value: float, normal: float) -> int:
    """`value` as a whole count between 3 and 10 times `normal` (both bounds counted)."""
    return max(math.ceil(3 * normal), min(math.floor(10 * normal), round(value)), 1)


def _price_provider(provider: str) -> str | None:
    from agentwatch.collector.receiver.pricing import PROVIDER_IDS
    provider = provider.lower()
    return PROVIDER_IDS.get(provider, provider) or None


def _credential_fanout_args(tool: str, rng: random.Random, tenant: str, i: int) -> dict:
    return {
        "get_ticket": lambda: {"ticket_id": f"TCK-{rng.randint(10000, 99999)}", "include_thread": True},
        "search_kb": lambda: {"query": f"partner export {i}", "top_k": 50},
        "get_order_status": lambda: {"order_id": f"ORD-2025-{rng.randint(100000, 999999)}", "include_history": True},
        "issue_refund": lambda: {"order_id": f"ORD-2025-{rng.randint(100000, 999999)}", "amount": 1.0,
                                 "currency": "USD", "reason": "test"},
        "run_sql": lambda: {"query": f"SELECT * FROM accounts LIMIT 10000 OFFSET {10000 * i}", "database": "analytics",
                            "timeout_s": 60},
        "read_file": lambda: {"repo": f"{tenant}/infra", "path": f"secrets/{i}.env", "ref": "main"},
        "get_rollout_status": lambda: {"rollout_id": f"ro-{rng.getrandbits(32):08x}", "cursor": 1},
        "post_status_update": lambda: {"channel": "#general", "text": f"export {i}"},
    }[tool]()


# --- public API -----------------------------------------------------------------------------------------------------

def run_stock_fleet(*, endpoint: str, duration_s: float, start_ns: int, seed: int = 7, incidents: bool = True,
                    headers: dict[str, str] | None = None, tenants: int = MAX_TENANTS,
                    span_rate: float = DEFAULT_SPAN_RATE, flush_every: int = _FLUSH_EVERY,
                    timeout_s: float = 60.0) -> DemoResult:
    """Send the stock fleet's spans over OTLP/HTTP to `endpoint` (e.g. http://127.0.0.1:4318).

    duration_s: simulated seconds of traffic from `start_ns` (traces start in that period; the last
    trees end a little after it). tenants: how many of the fleet's tenants (the first three cover
    the three conventions, the fourth is the tiny one). span_rate: spans per simulated hour of the
    whole fleet, averaged over a weekday (its diurnal curve and bursts move it around that).
    flush_every: spans between two export rounds of every service. `headers` go with every export
    (an API key). Raises if the receiver refused any span.
    """
    if not 1 <= tenants <= MAX_TENANTS:
        raise ValueError(f"tenants must be between 1 and {MAX_TENANTS}")
    if duration_s <= 0 or span_rate <= 0:
        raise ValueError("duration_s and span_rate must be positive")
    if incidents and tenants < 2:
        raise ValueError("incidents need at least 2 tenants (cross_tenant)")
    emitter = _Emitter(endpoint, headers, flush_every, timeout_s)
    fleet = _Fleet(seed=seed, start_ns=int(start_ns), duration_ns=int(duration_s * NS), tenants=_TENANTS[:tenants],
                   scale=span_rate / DEFAULT_SPAN_RATE, emitter=emitter)
    try:
        fleet.run(incidents)
    finally:
        sent, failed = emitter.close()
    if failed or sent != emitter.emitted:
        raise RuntimeError(f"{emitter.emitted - sent} of {emitter.emitted} spans were not accepted by {emitter.url}")
    return DemoResult(run_id=uuid.uuid4().hex, spans=sent, incidents=fleet.incidents, started_at_ns=fleet.start_ns,
                      ended_at_ns=max(fleet.end_ns, emitter.last_end))


def plan_stock_fleet(*, duration_s: float, start_ns: int, seed: int = 7, incidents: bool = True,
                     tenants: int = MAX_TENANTS, span_rate: float = DEFAULT_SPAN_RATE) -> DemoResult:
    """The same fleet, planned but sent nowhere: its span count and labels (for sizing and tests)."""
    fleet = _Fleet(seed=seed, start_ns=int(start_ns), duration_ns=int(duration_s * NS), tenants=_TENANTS[:tenants],
                   scale=span_rate / DEFAULT_SPAN_RATE, emitter=None)
    fleet.run(incidents)
    return DemoResult(run_id=uuid.uuid4().hex, spans=fleet.planned, incidents=fleet.incidents,
                      started_at_ns=fleet.start_ns, ended_at_ns=fleet.end_ns)


__all__ = ["DEFAULT_SPAN_RATE", "FAMILIES", "KINDS", "MAX_TENANTS", "plan_stock_fleet", "run_stock_fleet"]
