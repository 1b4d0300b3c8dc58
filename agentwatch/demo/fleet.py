"""The demo fleet: a simulated multi-tenant agent fleet with labelled incidents.

Every span is made by the agentwatch SDK itself (``agentwatch.agent`` /
``tool`` / ``llm`` / ``record_usage`` / ``credentials`` / ``tenant``) and goes
wherever ``agentwatch.init`` sends it (normally the agentwatch receiver over
OTLP), so the demo exercises the same path as a real fleet.

The fleet: a handful of tenants of different sizes and habits (time zone of
their busy hours, providers and models, which kinds of agents they run), each
running single agents (support triage, SQL analyst, code reviewer) and
planners that fork sub-agents (research planner, report writer, bulk
enricher). Agents call tools (``search``, ``read_document``, ``run_sql``,
``http_get``, ``write_report``) with realistic arguments and results, and
models with realistic token counts, GenAI-shaped input/output messages and
reasoning parts (a few KB typically, occasionally hundreds of KB). Each tenant
grants and uses its own credentials on its own resources. Traffic follows a
daily curve per tenant, so detectors have a baseline to learn.

On top of that (``incidents=True``) five labelled incidents are injected, no
earlier than 20 % into the run: ``fanout``, ``cost_spike``, ``cross_tenant``,
``credential_fanout`` and ``loop`` (see ``KINDS``). Their ground truth is
returned as ``Incident`` records, which ``record_incidents`` writes into the
``demo_incidents`` table.

Two paces:

* fast-forward (default): span time is simulated. The caller initialises the
  SDK with ``agentwatch.init(clock=make_clock())``; traces are generated in
  start-time order, each one synchronously while the clock advances by
  simulated latencies (sub-agents forked in parallel rewind the clock to
  their fork time). An hour of fleet history takes seconds.
* real time: traces start on the wall clock and latencies are real sleeps
  (``speed`` > 1 compresses both, for quick looks and tests).

Text is generated deterministically from the seed and a small built-in
vocabulary; nothing is downloaded. Same seed, same start time: same fleet,
same incidents.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import math
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from opentelemetry import trace as otel_trace

import agentwatch

KINDS = ("fanout", "cost_spike", "cross_tenant", "credential_fanout", "loop")

NS = 1_000_000_000
_FLUSH_EVERY_SPANS = 1000  # fast-forward: flush well before the SDK's bounded queue (8192) fills


# --- public records -----------------------------------------------------------

@dataclass
class Incident:
    """One labelled incident: the ground truth detectors are scored against.

    `tenant` and `agent_id` are the offender (for cross_tenant: the actor, whose tenant differs
    from the credential's); for credential_fanout, `tenant` owns the credential, `agent_id` and
    `trace_id` are the first of the many agents and traces that used it, `credential_id` is it.
    `credential_id` is empty for kinds that are not about one credential. Times are span time
    (simulated when fast-forwarding).
    """

    incident_id: str
    kind: str
    tenant: str
    agent_id: str
    trace_id: str  # 32 hex digits
    credential_id: str
    started_at_ns: int
    ended_at_ns: int
    description: str


@dataclass
class DemoResult:
    run_id: str
    spans: int
    incidents: list[Incident]
    started_at_ns: int
    ended_at_ns: int


class SimulatedClock:
    """A settable clock for ``agentwatch.init(clock=...)``: ``clock()`` returns nanoseconds.

    Fast-forward runs move it with ``set`` and ``advance``. When a real-time
    run is started while the SDK holds this clock, the clock follows the wall
    clock for the duration of that run.
    """

    def __init__(self, start_ns: int | None = None) -> None:
        self._now = int(time.time_ns() if start_ns is None else start_ns)
        self._wall = False

    def __call__(self) -> int:
        return time.time_ns() if self._wall else self._now

    def set(self, ns: int) -> None:
        self._now = int(ns)

    def advance(self, ns: int) -> int:
        self._now += int(ns)
        return self._now

    def __repr__(self) -> str:
        return f"SimulatedClock({self._now})"


_last_clock: SimulatedClock | None = None


def make_clock(start_ns: int | None = None) -> SimulatedClock:
    """The clock to hand to ``agentwatch.init(clock=...)`` before a fast-forward ``run_fleet``."""
    global _last_clock
    _last_clock = SimulatedClock(start_ns)
    return _last_clock


# --- models ---------------------------------------------------------------------

@dataclass(frozen=True)
class _Model:
    name: str  # request model, as genai-prices knows it
    provider: str  # gen_ai.provider.name
    response: str  # gen_ai.response.model, as the provider answers
    tokens_per_s: float
    context: tuple[int, int]  # input tokens beyond the visible messages (documents, history)
    output: tuple[int, int]  # visible output tokens
    reasoning: tuple[int, int] | None  # reasoning tokens, None: not a reasoning model
    cache_share: float  # probability that part of the prompt is a cache hit


_MODELS = {m.name: m for m in (
    _Model("gpt-4o-mini", "openai", "gpt-4o-mini-2024-07-18", 85, (300, 6000), (40, 600), None, 0.5),
    _Model("gpt-4o", "openai", "gpt-4o-2024-08-06", 90, (1500, 16000), (150, 1400), None, 0.5),
    _Model("o3", "openai", "o3-2025-04-16", 140, (2000, 20000), (200, 1500), (300, 2500), 0.5),
    _Model("o1", "openai", "o1-2024-12-17", 100, (2000, 20000), (200, 1500), (400, 3000), 0.4),
    _Model("claude-sonnet-4-5", "anthropic", "claude-sonnet-4-5-20250929", 75, (2000, 24000), (200, 1800),
           (300, 2000), 0.7),
    _Model("claude-3-5-haiku", "anthropic", "claude-3-5-haiku-20241022", 60, (400, 5000), (40, 500), None, 0.6),
    _Model("claude-opus-4-1", "anthropic", "claude-opus-4-1-20250805", 55, (2000, 24000), (200, 1800),
           (400, 3000), 0.6),
    _Model("gemini-2.5-flash", "gcp.gemini", "gemini-2.5-flash", 220, (800, 20000), (80, 1500), (200, 1800), 0.3),
    _Model("gemini-2.5-pro", "gcp.gemini", "gemini-2.5-pro", 140, (2000, 30000), (200, 2000), (400, 3000), 0.3),
)}


# --- tenants --------------------------------------------------------------------

@dataclass(frozen=True)
class _Tenant:
    name: str
    traces_per_hour: float  # at the peak of its day
    peak_hour_utc: float
    cheap: str
    main: str
    deep: str
    spike: str  # the expensive model a runaway agent switches to
    mix: tuple[tuple[str, float], ...]  # agent kind -> share of traces
    instances: int  # agents of each kind (ids <tenant>-<kind>-<k>)


_TENANTS = (
    _Tenant("acme", 1700, 17.0, "gpt-4o-mini", "gpt-4o", "o3", "o1",
            (("support-triage", .34), ("sql-analyst", .15), ("research-planner", .18), ("code-reviewer", .15),
             ("report-writer", .10), ("bulk-enricher", .08)), 4),
    _Tenant("globex", 1000, 10.0, "claude-3-5-haiku", "claude-sonnet-4-5", "claude-sonnet-4-5", "claude-opus-4-1",
            (("support-triage", .20), ("sql-analyst", .10), ("research-planner", .28), ("code-reviewer", .10),
             ("report-writer", .22), ("bulk-enricher", .10)), 3),
    _Tenant("initech", 450, 14.0, "gemini-2.5-flash", "gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.5-pro",
            (("support-triage", .40), ("sql-analyst", .25), ("research-planner", .15), ("code-reviewer", .10),
             ("report-writer", .05), ("bulk-enricher", .05)), 3),
    _Tenant("umbrella", 800, 20.0, "claude-3-5-haiku", "gpt-4o", "claude-sonnet-4-5", "claude-opus-4-1",
            (("support-triage", .25), ("sql-analyst", .20), ("research-planner", .20), ("code-reviewer", .15),
             ("report-writer", .10), ("bulk-enricher", .10)), 3),
    _Tenant("hooli", 1200, 3.0, "gemini-2.5-flash", "gpt-4o", "o3", "o1",
            (("support-triage", .05), ("sql-analyst", .35), ("research-planner", .10), ("code-reviewer", .05),
             ("report-writer", .20), ("bulk-enricher", .25)), 4),
    _Tenant("stark", 350, 22.0, "gpt-4o-mini", "claude-sonnet-4-5", "o3", "o1",
            (("support-triage", .10), ("sql-analyst", .10), ("research-planner", .40), ("code-reviewer", .30),
             ("report-writer", .05), ("bulk-enricher", .05)), 2),
    _Tenant("wayne", 650, 7.0, "gpt-4o-mini", "gpt-4o", "o3", "o1",
            (("support-triage", .30), ("sql-analyst", .20), ("research-planner", .20), ("code-reviewer", .10),
             ("report-writer", .10), ("bulk-enricher", .10)), 3),
    _Tenant("cyberdyne", 550, 12.0, "gemini-2.5-flash", "claude-sonnet-4-5", "gemini-2.5-pro", "claude-opus-4-1",
            (("support-triage", .15), ("sql-analyst", .15), ("research-planner", .30), ("code-reviewer", .25),
             ("report-writer", .10), ("bulk-enricher", .05)), 3),
)
MAX_TENANTS = len(_TENANTS)
_SUB_POOLS = {"researcher": 6, "section-writer": 4, "enrich-worker": 4}
# which of a tenant's credentials opens which of its buckets (s3://<tenant>-<suffix>/...)
_BUCKET_CREDENTIAL = {"tickets": "tickets", "code": "repo", "research": "research", "docs": "docs"}


def _daily(t_ns: int, peak_hour: float) -> float:
    """Share of a tenant's peak rate at this time of day (a bell around its busy hour)."""
    hour = (t_ns / 3600e9) % 24
    d = abs(hour - peak_hour)
    d = min(d, 24 - d)
    return 0.25 + 0.75 * math.exp(-(d * d) / (2 * 3.5 * 3.5))


# --- text -----------------------------------------------------------------------

_NOUNS = (
    "invoice", "ledger", "customer", "refund", "schema", "migration", "dashboard", "contract", "shipment",
    "forecast", "quota", "latency", "cohort", "pipeline", "deployment", "ticket", "policy", "account",
    "warehouse", "region", "partition", "churn rate", "cache", "endpoint", "budget", "vendor", "order",
    "subscription", "incident", "release", "metric", "report", "query plan", "index", "backlog", "audit log",
    "retention", "margin", "payload", "token budget", "checkpoint", "SLA", "feature flag", "dataset",
)
_VERBS = ("check", "compare", "reconcile", "summarise", "verify", "estimate", "trace", "recompute", "group",
          "filter", "join", "rank", "validate", "cross-check", "break down", "sample", "extrapolate")
_ADJS = ("recent", "stale", "inconsistent", "missing", "duplicated", "seasonal", "anomalous", "expected",
         "quarterly", "regional", "partial", "relevant", "outdated", "critical", "noisy", "aggregated")
_ENTITIES = ("EMEA", "APAC", "the enterprise tier", "the Q3 cohort", "the billing service", "the EU region",
             "the mobile app", "the checkout flow", "the partner API", "the nightly batch", "the data team",
             "the onboarding funnel", "the top 20 accounts", "the legacy importer", "the fraud model")
_TEMPLATES = (
    "First, I need to {verb} the {noun} for {entity}.",
    "The {noun} numbers look {adj}; I should {verb} them against the {noun2} before answering.",
    "Wait, the {noun} from step {n} contradicts the {noun2}. Let me re-check the {adj} rows.",
    "So the answer depends on whether {entity} changed its {noun} after the {adj} {noun2} was filed.",
    "I'll {verb} {entity}'s {noun} and compare it with the {adj} {noun2}.",
    "Hypothesis {n}: the {noun} is {adj} because the {noun2} was not refreshed since the last {noun3}.",
    "The tool returned {n} rows; {m} of them mention the {noun}, which is {adj} for {entity}.",
    "That is roughly {pct}% of the {noun2}, which seems too high, so let me {verb} it again.",
    "Alternatively, the {noun} could be {adj} only in {entity}, so a per-region breakdown is needed.",
    "Let me restate the goal: {verb} the {noun} and report anything {adj} to the user.",
    "Considering the {noun3}, the safest next step is to {verb} the {noun} with a narrower filter.",
    "Summary so far: {n} {noun}s checked, {m} {adj}, none blocking the {noun2}.",
    "Actually, I should not assume the {noun} is complete; the {noun2} for {entity} may lag by {n} hours.",
    "Given the {adj} {noun}, I will flag it and move on to the {noun2}.",
)


class _Corpus:
    """A few hundred KB of reasoning-like prose, made once from the seed; messages are slices of it."""

    def __init__(self, seed: int, size: int = 384 << 10) -> None:
        rng = random.Random(f"agentwatch-demo-corpus:{seed}")
        parts: list[str] = []
        starts: list[int] = []
        total = 0
        while total < size:
            s = rng.choice(_TEMPLATES).format(
                verb=rng.choice(_VERBS), noun=rng.choice(_NOUNS), noun2=rng.choice(_NOUNS),
                noun3=rng.choice(_NOUNS), adj=rng.choice(_ADJS), entity=rng.choice(_ENTITIES),
                n=rng.randint(2, 48), m=rng.randint(1, 12), pct=rng.randint(3, 97))
            if rng.random() < 0.08:
                s += "\n\n"
            starts.append(total)
            parts.append(s)
            total += len(s) + 1
        self.text = " ".join(parts) + " "
        self._double = self.text + self.text
        self._starts = starts

    def take(self, rng: random.Random, chars: int) -> str:
        """About `chars` characters of prose (whole sentences), never empty."""
        chars = max(int(chars), 20)
        out: list[str] = []
        while chars > 0:
            n = min(chars, len(self.text))
            start = self._starts[rng.randrange(len(self._starts))]
            end = self._double.find(" ", start + n - 1)
            end = start + n if end < 0 else end
            out.append(self._double[start:end])
            chars -= n
        return " ".join(out).strip()

    def phrase(self, rng: random.Random) -> str:
        return f"{rng.choice(_ADJS)} {rng.choice(_NOUNS)} for {rng.choice(_ENTITIES)}"


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


# --- run state shared by the tools ----------------------------------------------

@dataclass(frozen=True)
class _Cred:
    id: str
    tenant: str
    scope: str


@dataclass
class _AgentState:
    tenant: str
    agent_id: str
    creds: dict[str, _Cred] = field(default_factory=dict)


_RNG: contextvars.ContextVar[random.Random] = contextvars.ContextVar("agentwatch_demo_rng")
_AGENT: contextvars.ContextVar[_AgentState] = contextvars.ContextVar("agentwatch_demo_agent")
_SIM: _Sim | None = None  # the running simulation (one run per process at a time)
_RUN_LOCK = threading.Lock()


def _sim() -> _Sim:
    if _SIM is None:
        raise RuntimeError("demo tools run only inside run_fleet")
    return _SIM


def _use(kind: str, resource: str, action: str) -> None:
    """Use the current agent's credential of this kind on a resource of the credential's tenant."""
    state = _AGENT.get()
    cred = state.creds.get(kind)
    if cred is None:
        return
    agentwatch.credentials.use(cred.id, resource=resource, resource_tenant=cred.tenant, action=action,
                               credential_tenant=cred.tenant, scope=cred.scope)


def _tool_latency(lo_ms: float, hi_ms: float) -> None:
    _sim().sleep(_log_uniform(_RNG.get(), lo_ms, hi_ms) * 1_000_000)


# --- tools (spans made by the SDK's decorator) ----------------------------------

@agentwatch.tool("search")
def search(query: str, index: str, top_k: int = 5) -> list[dict]:
    """Semantic search over a tenant's knowledge base."""
    rng, corpus = _RNG.get(), _sim().corpus
    _use("search", index, "query")
    _tool_latency(60, 900)
    hits = []
    for i in range(top_k):
        slug = "-".join(rng.choice(_NOUNS).replace(" ", "-") for _ in range(3))
        hits.append({"title": corpus.phrase(rng).capitalize(), "url": f"kb://{index}/{slug}-{rng.randint(10, 9999)}",
                     "score": round(0.92 - 0.07 * i - rng.random() * 0.05, 3),
                     "snippet": corpus.take(rng, rng.randint(140, 320))})
    return hits


@agentwatch.tool("read_document")
def read_document(uri: str) -> dict:
    """Fetch a document from the tenant's object store."""
    rng, corpus = _RNG.get(), _sim().corpus
    bucket = uri.split("/", 3)[2] if uri.startswith("s3://") else uri
    _use(_BUCKET_CREDENTIAL.get(bucket.rsplit("-", 1)[-1], "docs"), f"s3://{bucket}", "read")
    _tool_latency(40, 1500)
    size = _log_uniform(rng, 2_000, 4_000_000)
    return {"uri": uri, "bytes": size, "mime": "text/markdown" if uri.endswith(".md") else "application/json",
            "text": corpus.take(rng, rng.randint(600, 2400))}


@agentwatch.tool("run_sql")
def run_sql(query: str, database: str) -> dict:
    """Run a read-only query on the tenant's warehouse."""
    rng = _RNG.get()
    _use("warehouse", database, "query")
    _tool_latency(80, 6000)
    n_cols = rng.randint(2, 5)
    columns = ["day", "region", "amount_usd", "orders", "customers"][:n_cols]
    rows = [[f"2025-0{rng.randint(1, 9)}-{rng.randint(10, 28)}", rng.choice(("us", "eu", "apac", "latam")),
             round(rng.uniform(10, 90000), 2), rng.randint(1, 4000), rng.randint(1, 900)][:n_cols]
            for _ in range(rng.randint(1, 8))]
    return {"columns": columns, "rows": rows, "row_count": rng.randint(len(rows), 250000),
            "elapsed_ms": rng.randint(12, 5800)}


@agentwatch.tool("http_get")
def http_get(url: str, params: dict | None = None) -> dict:
    """HTTP GET; the tenant's own APIs need its API credential, the public web none."""
    rng, corpus = _RNG.get(), _sim().corpus
    host = url.split("/", 3)[2]
    if host.startswith("api."):
        _use("api", host, "read")
    _tool_latency(50, 2500)
    agent = _AGENT.get().agent_id
    loop_status = _sim().loop_status.get(url)
    if loop_status is not None:
        return {"status": 202, "body": loop_status}
    return {"status": 200, "url": url, "body": {"id": rng.randint(1000, 999999), "agent": agent,
                                               "summary": corpus.take(rng, rng.randint(150, 700))}}


@agentwatch.tool("write_report")
def write_report(path: str, content: str) -> dict:
    """Store a finished report in the tenant's document store."""
    bucket = path.split("/", 3)[2]
    _use("docs", f"s3://{bucket}", "write")
    _tool_latency(40, 600)
    return {"path": path, "bytes": len(content.encode()), "etag": uuid.UUID(int=_RNG.get().getrandbits(128)).hex}


# --- model calls ------------------------------------------------------------------

class _Conversation:
    """An agent's running conversation in the GenAI message shape (what the next model call sees)."""

    def __init__(self, task: str) -> None:
        self.messages: list[dict] = [{"role": "user", "parts": [{"type": "text", "content": task}]}]
        self.chars = len(task)

    def tool_round(self, call_id: str, name: str, arguments: dict, result) -> None:
        response = json.dumps(result, separators=(",", ":"))
        self.messages.append({"role": "assistant", "parts": [
            {"type": "tool_call", "id": call_id, "name": name, "arguments": arguments}]})
        self.messages.append({"role": "tool", "parts": [
            {"type": "tool_call_response", "id": call_id, "response": response}]})
        self.chars += len(response) + 80

    def say(self, role: str, text: str) -> None:
        self.messages.append({"role": role, "parts": [{"type": "text", "content": text}]})
        self.chars += len(text)


def _chat(model_name: str, conv: _Conversation, system: str, *, tool_call: tuple[str, dict] | None = None,
          context: tuple[int, int] | None = None, output: tuple[int, int] | None = None,
          reasoning: tuple[int, int] | None = None, big_reasoning_p: float = 0.004,
          answer: str | None = None, first_token_s: tuple[float, float] = (0.25, 1.2)) -> str:
    """One model call: a `chat <model>` span with usage and whole messages; returns the answer text."""
    sim, rng = _sim(), _RNG.get()
    model = _MODELS[model_name]
    visible = (conv.chars + len(system)) // 4
    input_tokens = visible + _log_uniform(rng, *(context or model.context))
    cached = 0
    if rng.random() < model.cache_share:
        cached = min(input_tokens, (len(system) // 4 + int(input_tokens * rng.uniform(0.1, 0.6))) // 128 * 128)
    text_tokens = _log_uniform(rng, *(output or model.output))
    reasoning_tokens = 0
    parts: list[dict] = []
    r_range = reasoning or model.reasoning
    if r_range is not None:
        reasoning_tokens = _log_uniform(rng, *r_range)
        if big_reasoning_p and rng.random() < big_reasoning_p:
            reasoning_tokens = _log_uniform(rng, 25_000, 90_000)  # a very long chain of thought
        parts.append({"type": "reasoning", "content": sim.corpus.take(rng, reasoning_tokens * 4)})
    if tool_call is not None:
        name, arguments = tool_call
        text = ""
        parts.append({"type": "tool_call", "id": f"call_{rng.getrandbits(64):016x}", "name": name,
                      "arguments": arguments})
        text_tokens = min(text_tokens, 40 + len(json.dumps(arguments)) // 3)
        finish = "tool_call"
    else:
        text = answer if answer is not None else sim.corpus.take(rng, text_tokens * 4)
        parts.append({"type": "text", "content": text})
        finish = "stop"
    generated = text_tokens + reasoning_tokens
    latency_s = rng.uniform(*first_token_s) + input_tokens / 40_000 + generated / model.tokens_per_s
    latency_s = min(latency_s, 300.0)  # providers time out long generations
    with agentwatch.llm(model.name, provider=model.provider):
        sim.sleep(int(latency_s * NS))
        agentwatch.record_usage(
            model=model.name, response_model=model.response, provider=model.provider,
            input_tokens=input_tokens, output_tokens=text_tokens + reasoning_tokens, cached_input_tokens=cached,
            reasoning_tokens=reasoning_tokens if r_range is not None else None,
            input_messages=conv.messages, system_instructions=[{"type": "text", "content": system}],
            output_messages=[{"role": "assistant", "parts": parts, "finish_reason": finish}])
    sim.spans_made(1)
    return text


def _call_tool(conv: _Conversation | None, fn: Callable, **arguments):
    """Call a decorated tool and, when there is a conversation, feed the result back into it."""
    result = fn(**arguments)
    _sim().spans_made(1)
    if conv is not None:
        conv.tool_round(f"call_{_RNG.get().getrandbits(64):016x}", fn.__name__, arguments, result)
    return result


def _system_prompt(kind: str, tenant: str) -> str:
    # stable per agent kind and tenant, a few hundred characters
    rng = random.Random(f"system:{kind}:{tenant}")
    return (f"You are the {kind} agent of {tenant}. Use the tools available to you, cite the documents you "
            f"rely on, never act on another tenant's data, and stop when the task is done. "
            + _sim().corpus.take(rng, rng.randint(300, 900)))


# --- pacing: simulated (fast-forward) or wall-clock time ------------------------------

class _FastForward:
    def __init__(self, clock: SimulatedClock) -> None:
        self.clock = clock

    def now(self) -> int:
        return self.clock()

    def sleep(self, ns: int) -> None:
        self.clock.advance(ns)

    def fleet_elapsed(self, since_ns: int) -> int:
        return self.clock() - since_ns

    def fork(self, branches: Sequence[Callable[[], object]], offsets_ns: Sequence[int] | None = None) -> list:
        """Run branches 'in parallel': each starts at the fork time (plus its offset); join at the latest end."""
        t0 = self.clock()
        results, end = [], t0
        for i, branch in enumerate(branches):
            self.clock.set(t0 + (offsets_ns[i] if offsets_ns else 0))
            results.append(branch())
            end = max(end, self.clock())
        self.clock.set(end)
        return results

    def run(self, events: list[tuple[int, int, Callable[[], None]]], start_ns: int) -> None:
        for offset_ns, _, fn in events:
            self.clock.set(start_ns + offset_ns)
            fn()


class _RealTime:
    def __init__(self, speed: float) -> None:
        self.speed = speed

    def now(self) -> int:
        return time.time_ns()

    def sleep(self, ns: int) -> None:
        time.sleep(ns / NS / self.speed)

    def fleet_elapsed(self, since_ns: int) -> int:
        """Fleet time since a wall-clock instant (wall time runs `speed` times slower than the fleet's)."""
        return int((time.time_ns() - since_ns) * self.speed)

    def fork(self, branches: Sequence[Callable[[], object]], offsets_ns: Sequence[int] | None = None) -> list:
        results: list = [None] * len(branches)
        errors: list[BaseException] = []

        def body(i: int, branch: Callable[[], object]) -> None:
            try:
                if offsets_ns and offsets_ns[i]:
                    self.sleep(offsets_ns[i])
                results[i] = branch()
            except BaseException as exc:  # re-raised in the forking thread
                errors.append(exc)

        threads = [threading.Thread(target=contextvars.copy_context().run, args=(body, i, b), daemon=True)
                   for i, b in enumerate(branches)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results

    def run(self, events: list[tuple[int, int, Callable[[], None]]], start_ns: int) -> None:
        wall0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=96, thread_name_prefix="agentwatch-demo") as pool:
            futures = []
            for offset_ns, _, fn in events:
                delay = wall0 + offset_ns / NS / self.speed - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                futures.append(pool.submit(contextvars.copy_context().run, fn))
            for f in futures:
                f.result()


# --- the simulation ---------------------------------------------------------------------

class _Sim:
    def __init__(self, *, runtime, seed: int, tenants: Sequence[_Tenant], duration_ns: int, start_ns: int,
                 fast_forward: bool) -> None:
        self.runtime = runtime
        self.seed = seed
        self.tenants = list(tenants)
        self.duration_ns = duration_ns
        self.start_ns = start_ns
        self.fast_forward = fast_forward
        self.corpus = _Corpus(seed)
        self.spans = 0
        self._flushed_at = 0
        self._lock = threading.Lock()
        self.incidents: list[Incident] = []
        self.loop_status: dict[str, dict] = {}  # url -> the same answer every time (the loop incident)

    # pacing
    def sleep(self, ns: int) -> None:
        self.runtime.sleep(ns)

    def now(self) -> int:
        return self.runtime.now()

    def spans_made(self, n: int) -> None:
        with self._lock:
            self.spans += n
            due = self.fast_forward and self.spans - self._flushed_at >= _FLUSH_EVERY_SPANS
            if due:
                self._flushed_at = self.spans
        if due:
            agentwatch.flush()

    # building blocks
    def creds(self, tenant: str, *kinds: str) -> dict[str, _Cred]:
        scopes = {"warehouse": "warehouse:read", "docs": "docs:read-write", "search": "search:query",
                  "api": "api:read", "tickets": "tickets:read", "repo": "repo:read", "research": "research:read"}
        return {k: _Cred(f"cred-{tenant}-{k}", tenant, scopes[k]) for k in kinds}

    def invoke(self, name: str, agent_id: str, tenant: str, creds: dict[str, _Cred], task: str,
               body: Callable[[str], str], *, revoke: bool = False, on_span=None) -> str:
        """An agent invocation (`invoke_agent` span, via the SDK's decorator), granted its credentials."""

        @agentwatch.agent(name, agent_id=agent_id)
        def run(task: str) -> str:
            state = _AgentState(tenant, agent_id, dict(creds))
            token = _AGENT.set(state)
            try:
                if on_span is not None:
                    on_span(otel_trace.get_current_span())
                for cred in creds.values():
                    agentwatch.credentials.grant(cred.id, tenant=cred.tenant, scope=cred.scope)
                answer = body(task)
                if revoke:
                    for cred in creds.values():
                        agentwatch.credentials.revoke(cred.id, tenant=cred.tenant)
                return answer
            finally:
                _AGENT.reset(token)

        answer = run(task)
        self.spans_made(1)
        return answer

    def root(self, tenant: str, rng_key: str, fn: Callable[[], None]) -> None:
        """A trace: its own deterministic RNG, under the tenant's name."""
        _RNG.set(random.Random(f"{self.seed}:{rng_key}"))
        with agentwatch.tenant(tenant):
            fn()

    def agent_id(self, tenant: _Tenant | str, kind: str, k: int) -> str:
        return f"{getattr(tenant, 'name', tenant)}-{kind}-{k}"

    def pick_instance(self, rng: random.Random, n: int) -> int:
        # busier first instances: weights 1, 1/2, 1/3, ...
        return rng.choices(range(1, n + 1), weights=[1 / k for k in range(1, n + 1)])[0]

    # --- normal agents -------------------------------------------------------------

    def normal_trace(self, tenant: _Tenant, kind: str, k: int) -> None:
        getattr(self, "_" + kind.replace("-", "_"))(tenant, self.agent_id(tenant, kind, k))

    def _support_triage(self, t: _Tenant, agent_id: str) -> None:
        rng = _RNG.get()
        ticket = rng.randint(10000, 99999)
        task = f"Triage ticket #{ticket}: customer reports a {self.corpus.phrase(rng)} issue. Draft a reply."
        system = _system_prompt("support-triage", t.name)

        def body(task: str) -> str:
            conv = _Conversation(task)
            _call_tool(conv, read_document, uri=f"s3://{t.name}-tickets/{ticket}.json")
            q = self.corpus.phrase(rng)
            _chat(t.cheap, conv, system, tool_call=("search", {"query": q, "index": f"{t.name}-kb", "top_k": 5}))
            _call_tool(conv, search, query=q, index=f"{t.name}-kb", top_k=5)
            if rng.random() < 0.5:
                _call_tool(conv, http_get, url=f"https://api.{t.name}.example.com/v1/customers/"
                                               f"{rng.randint(100000, 999999)}")
            return _chat(t.cheap, conv, system)

        self.invoke("support-triage", agent_id, t.name, self.creds(t.name, "tickets", "search", "api"), task, body)

    def _sql_analyst(self, t: _Tenant, agent_id: str) -> None:
        rng = _RNG.get()
        metric = rng.choice(("revenue", "orders", "active customers", "refund rate", "churn"))
        task = f"How did {metric} change week over week in {rng.choice(_ENTITIES)}? Explain the drivers."
        system = _system_prompt("sql-analyst", t.name)
        database = f"{t.name}/warehouse/{rng.choice(('analytics', 'finance', 'sales'))}"

        def body(task: str) -> str:
            conv = _Conversation(task)
            for i in range(rng.randint(1, 3)):
                query = (f"SELECT toStartOfWeek(ts) AS week, region, sum(amount_usd) AS amount "
                         f"FROM {rng.choice(('orders', 'invoices', 'refunds', 'events'))} "
                         f"WHERE ts >= now() - INTERVAL {rng.choice((14, 28, 56))} DAY "
                         f"GROUP BY week, region ORDER BY week LIMIT {rng.choice((50, 100, 500))}")
                _chat(t.main, conv, system, tool_call=("run_sql", {"query": query, "database": database}))
                _call_tool(conv, run_sql, query=query, database=database)
            return _chat(t.main, conv, system)

        self.invoke("sql-analyst", agent_id, t.name, self.creds(t.name, "warehouse"), task, body)

    def _code_reviewer(self, t: _Tenant, agent_id: str) -> None:
        rng = _RNG.get()
        pr = rng.randint(100, 9999)
        task = f"Review pull request #{pr} ({self.corpus.phrase(rng)}) and list blocking issues."
        system = _system_prompt("code-reviewer", t.name)

        def body(task: str) -> str:
            conv = _Conversation(task)
            for i in range(rng.randint(1, 2)):
                _call_tool(conv, read_document, uri=f"s3://{t.name}-code/pulls/{pr}/diff-{i}.patch")
            _chat(t.deep, conv, system)
            _call_tool(conv, http_get, url=f"https://api.{t.name}.example.com/v1/ci/pulls/{pr}/checks")
            return _chat(t.cheap, conv, system)

        self.invoke("code-reviewer", agent_id, t.name, self.creds(t.name, "repo", "api"), task, body)

    def _research_planner(self, t: _Tenant, agent_id: str) -> None:
        rng = _RNG.get()
        topic = self.corpus.phrase(rng)
        task = f"Research the {topic} and write a one-page brief with sources."
        system = _system_prompt("research-planner", t.name)
        sub_system = _system_prompt("researcher", t.name)

        def researcher(i: int, question: str) -> Callable[[], str]:
            def sub_body(task: str) -> str:
                conv = _Conversation(task)
                _call_tool(conv, search, query=question, index=f"{t.name}-kb", top_k=rng.choice((3, 5, 8)))
                if rng.random() < 0.6:
                    site = rng.choice(_NOUNS).replace(" ", "")
                    _call_tool(conv, http_get,
                               url=f"https://www.{site}-news.example.org/articles/{rng.randint(1000, 99999)}")
                else:
                    _call_tool(conv, read_document, uri=f"s3://{t.name}-research/notes/{rng.randint(1, 900)}.md")
                return _chat(t.cheap, conv, sub_system)

            sub_id = self.agent_id(t, "researcher", self.pick_instance(rng, _SUB_POOLS["researcher"]))
            return lambda: self.invoke("researcher", sub_id, t.name, self.creds(t.name, "search", "research"),
                                       question, sub_body)

        def body(task: str) -> str:
            conv = _Conversation(task)
            plan = _chat(t.deep, conv, system)
            questions = [f"{self.corpus.phrase(rng)}?" for _ in range(rng.randint(2, 4))]
            conv.say("assistant", plan)
            findings = self.runtime.fork([researcher(i, q) for i, q in enumerate(questions)],
                                         [int(rng.uniform(0, 0.3) * NS) for _ in questions])
            for f in findings:
                conv.say("user", f"Finding: {f}")
            return _chat(t.main, conv, system)

        self.invoke("research-planner", agent_id, t.name, {}, task, body)

    def _report_writer(self, t: _Tenant, agent_id: str) -> None:
        rng = _RNG.get()
        report = f"{rng.choice(('weekly', 'monthly', 'quarterly'))}-{rng.choice(('ops', 'finance', 'sales'))}-report"
        task = f"Write the {report.replace('-', ' ')} for {rng.choice(_ENTITIES)}."
        system = _system_prompt("report-writer", t.name)
        sub_system = _system_prompt("section-writer", t.name)

        def section(i: int) -> Callable[[], str]:
            def sub_body(task: str) -> str:
                conv = _Conversation(task)
                _call_tool(conv, read_document, uri=f"s3://{t.name}-docs/reports/{report}/notes-{i}.md")
                return _chat(t.main, conv, sub_system, output=(300, 1500))

            sub_id = self.agent_id(t, "section-writer", self.pick_instance(rng, _SUB_POOLS["section-writer"]))
            return lambda: self.invoke("section-writer", sub_id, t.name, self.creds(t.name, "docs"),
                                       f"Write section {i + 1} of the {report}.", sub_body)

        def body(task: str) -> str:
            conv = _Conversation(task)
            query = f"SELECT region, sum(amount_usd) FROM revenue WHERE month = {rng.randint(1, 12)} GROUP BY region"
            _call_tool(conv, run_sql, query=query, database=f"{t.name}/warehouse/finance")
            n = rng.randint(2, 3)
            sections = self.runtime.fork([section(i) for i in range(n)], [int(i * rng.uniform(0, 0.5) * NS)
                                                                           for i in range(n)])
            content = "\n\n".join(sections)
            _call_tool(None, write_report, path=f"s3://{t.name}-docs/reports/{report}.md", content=content)
            return _chat(t.cheap, conv, system, output=(60, 200))

        self.invoke("report-writer", agent_id, t.name, self.creds(t.name, "warehouse", "docs"), task, body)

    def _bulk_enricher(self, t: _Tenant, agent_id: str, workers: int | None = None, calls: int | None = None,
                       on_span=None) -> None:
        """Fetch a batch of records, fork workers (each with its own credential) to enrich them with a model."""
        rng = _RNG.get()
        workers = workers or rng.randint(2, 3)
        calls_each = calls or rng.randint(4, 14)
        batch = rng.randint(1000, 99999)
        system = _system_prompt("bulk-enricher", t.name)
        worker_system = _system_prompt("enrich-worker", t.name)
        concurrency = 20

        def one_call(record: int) -> Callable[[], str]:
            def call() -> str:
                conv = _Conversation(f"Classify record {record} of batch {batch}: "
                                     f"{self.corpus.take(_RNG.get(), 160)}")
                return _chat(t.cheap, conv, worker_system, context=(120, 600), output=(8, 40), reasoning=None,
                             big_reasoning_p=0.0, first_token_s=(0.2, 0.6),
                             answer=_RNG.get().choice(("billing", "shipping", "account", "fraud", "other")))
            return call

        def worker(k: int) -> Callable[[], str]:
            wid = self.agent_id(t, "enrich-worker", k)
            cred = {"warehouse": _Cred(f"cred-{t.name}-enrich-worker-{k}", t.name, "warehouse:read-write")}

            def sub_body(task: str) -> str:
                query = f"SELECT id, text FROM records WHERE batch = {batch} AND shard = {k}"
                _call_tool(None, run_sql, query=query, database=f"{t.name}/warehouse/enrichment")
                done = 0
                while done < calls_each:
                    n = min(concurrency, calls_each - done)
                    self.runtime.fork([one_call(done + i) for i in range(n)],
                                      [int(i * 0.02 * NS) for i in range(n)])
                    done += n
                return f"shard {k}: {calls_each} records classified"

            return lambda: self.invoke("enrich-worker", wid, t.name, cred, f"Enrich shard {k} of batch {batch}.",
                                       sub_body, revoke=True)

        def body(task: str) -> str:
            conv = _Conversation(task)
            _call_tool(conv, run_sql, query=f"SELECT count() FROM records WHERE batch = {batch}",
                       database=f"{t.name}/warehouse/enrichment")
            _chat(t.cheap, conv, system, output=(20, 80))
            results = self.runtime.fork([worker(k) for k in range(1, workers + 1)],
                                        [int(rng.uniform(0, 0.5) * NS) for _ in range(workers)])
            return "; ".join(results)

        self.invoke("bulk-enricher", agent_id, t.name, self.creds(t.name, "warehouse"),
                    f"Enrich batch {batch} ({workers * calls_each} records).", body, on_span=on_span)

    # --- incidents -------------------------------------------------------------------

    def _label(self, kind: str, tenant: str, agent_id: str, trace_id: str, credential_id: str, started: int,
               ended: int, description: str) -> None:
        digest = hashlib.sha256(f"{self.seed}:{self.start_ns}:{kind}".encode()).hexdigest()[:12]
        self.incidents.append(Incident(f"{kind}-{digest}", kind, tenant, agent_id, trace_id, credential_id,
                                       started, ended, description))

    @staticmethod
    def _trace_id_of(span) -> str:
        return f"{span.get_span_context().trace_id:032x}"

    def incident_fanout(self, t: _Tenant) -> None:
        agent_id = self.agent_id(t, "bulk-enricher", 1)
        seen: dict[str, str] = {}
        started = self.now()
        self._bulk_enricher(t, agent_id, workers=15, calls=800,
                            on_span=lambda span: seen.setdefault("trace", self._trace_id_of(span)))
        self._label("fanout", t.name, agent_id, seen["trace"], "", started, self.now(),
                    f"{agent_id} forked 15 enrich-worker sub-agents (each with its own credential) that issued "
                    f"12000 {t.cheap} calls in under two minutes")

    def incident_cost_spike(self, t: _Tenant, length_ns: int) -> None:
        rng = _RNG.get()
        agent_id = self.agent_id(t, "research-planner", 1)
        model = t.spike
        system = _system_prompt("research-planner", t.name)
        seen: dict[str, str] = {}
        started = self.now()
        calls = [0]
        streams = 16

        def branch(b: int) -> Callable[[], None]:
            def run() -> None:
                while self.runtime.fleet_elapsed(started) < length_ns:
                    conv = _Conversation(f"Deep-dive {b}: reconcile every {self.corpus.phrase(rng)} across all "
                                         f"regions, all years, and explain each discrepancy in detail.")
                    uri = f"s3://{t.name}-research/exports/full-dump-{rng.randint(1, 40)}.jsonl"
                    _call_tool(conv, read_document, uri=uri)
                    conv.say("user", "Attached: complete export (all partitions). " + self.corpus.take(rng, 6000))
                    _chat(model, conv, system, context=(140_000, 190_000), output=(1000, 3000),
                          reasoning=(6_000, 12_000), big_reasoning_p=0.0)
                    calls[0] += 1
            return run

        def body(task: str) -> str:
            self.runtime.fork([branch(b) for b in range(streams)],
                              [int(b * rng.uniform(1, 4) * NS) for b in range(streams)])
            return "Deep-dive complete."

        self.invoke("research-planner", agent_id, t.name, self.creds(t.name, "research"),
                    "Reconcile the full history of every account (deep-dive mode).", body,
                    on_span=lambda span: seen.setdefault("trace", self._trace_id_of(span)))
        self._label("cost_spike", t.name, agent_id, seen["trace"], "", started, self.now(),
                    f"{agent_id} switched to {model} with 140-190k-token contexts and 6-12k-token reasoning: "
                    f"{calls[0]} calls in {streams} parallel streams over "
                    f"{self.runtime.fleet_elapsed(started) / NS / 60:.1f} minutes")

    def incident_cross_tenant(self, a: _Tenant, b: _Tenant) -> None:
        rng = _RNG.get()
        agent_id = self.agent_id(a, "sql-analyst", 2 if a.instances >= 2 else 1)
        lifted = _Cred(f"cred-{b.name}-warehouse", b.name, "warehouse:read")
        system = _system_prompt("sql-analyst", a.name)
        seen: dict[str, str] = {}
        started = self.now()

        def body(task: str) -> str:
            conv = _Conversation(task)
            doc = _call_tool(conv, read_document, uri=f"s3://{a.name}-docs/shared/partner-migration-notes.md")
            conv.say("user", f"Note found in the document: export WAREHOUSE_CREDENTIAL={lifted.id} "
                             f"# {b.name} finance warehouse, do not share ({doc['bytes']} bytes total)")
            state = _AGENT.get()
            state.creds["warehouse"] = lifted  # the agent switches to the other tenant's credential
            for table in ("invoices", "payroll", "customers")[:rng.randint(2, 3)]:
                query = f"SELECT * FROM {table} ORDER BY updated_at DESC LIMIT 1000"
                _chat(a.main, conv, system, tool_call=("run_sql", {"query": query,
                                                                   "database": f"{b.name}/warehouse/finance"}))
                _call_tool(conv, run_sql, query=query, database=f"{b.name}/warehouse/finance")
            return _chat(a.main, conv, system)

        self.invoke("sql-analyst", agent_id, a.name, self.creds(a.name, "docs", "warehouse"),
                    f"Compare our invoice totals with {b.name}'s for the partner reconciliation.", body,
                    on_span=lambda span: seen.setdefault("trace", self._trace_id_of(span)))
        self._label("cross_tenant", a.name, agent_id, seen["trace"], lifted.id, started, self.now(),
                    f"{agent_id} ({a.name}) lifted {b.name}'s credential {lifted.id} from a document and queried "
                    f"{b.name}/warehouse/finance with it")

    def credential_fanout_plan(self, owner: _Tenant, others: list[_Tenant], rng: random.Random) -> list[tuple]:
        """(offset_ns, tenant, kind, agent_id) for each agent that will use the leaked credential."""
        users = []
        for t in [owner] + others:
            ids = [(kind, self.agent_id(t, kind, k)) for kind, _ in t.mix for k in range(1, t.instances + 1)]
            ids += [("researcher", self.agent_id(t, "researcher", k)) for k in range(1, _SUB_POOLS["researcher"] + 1)]
            rng.shuffle(ids)
            users += [(t, kind, aid) for kind, aid in ids[:12]]
        rng.shuffle(users)
        window = 200 * NS
        return sorted((int(rng.uniform(0, window)), t, kind, aid) for t, kind, aid in users)

    def incident_credential_fanout_use(self, owner: _Tenant, t: _Tenant, kind: str, agent_id: str,
                                       record: Callable[[str, int, int], None]) -> None:
        rng = _RNG.get()
        leaked = _Cred(f"cred-{owner.name}-api", owner.name, "api:read")
        system = _system_prompt(kind, t.name)

        def body(task: str) -> str:
            conv = _Conversation(task)
            creds = _AGENT.get().creds
            creds["api"] = leaked
            url = f"https://api.{owner.name}.example.com/v2/accounts/{rng.randint(1000, 99999)}/export"
            _chat(t.cheap, conv, system, tool_call=("http_get", {"url": url}))
            _call_tool(conv, http_get, url=url)
            return _chat(t.cheap, conv, system, output=(40, 200))

        seen: dict[str, object] = {}
        self.invoke(kind, agent_id, t.name, {}, "Pull the account export using the shared partner key from the "
                                                  "team prompt library.", body,
                    on_span=lambda span: seen.update(trace=self._trace_id_of(span), start=self.now()))
        record(seen["trace"], seen["start"], self.now())

    def incident_loop(self, t: _Tenant, repeats: int) -> None:
        rng = _RNG.get()
        agent_id = self.agent_id(t, "support-triage", 1)
        system = _system_prompt("support-triage", t.name)
        job = rng.randint(100000, 999999)
        url = f"https://api.{t.name}.example.com/v1/refunds/{job}/status"
        self.loop_status[url] = {"job": job, "state": "pending", "retry_after_s": 30}
        seen: dict[str, str] = {}
        started = self.now()

        def body(task: str) -> str:
            conv = _Conversation(task)
            for _ in range(repeats):
                _call_tool(conv, http_get, url=url)
                _chat(t.cheap, conv, system, tool_call=("http_get", {"url": url}), output=(20, 60))
            return "Refund still pending."

        self.invoke("support-triage", agent_id, t.name, self.creds(t.name, "tickets", "search", "api"),
                    f"Confirm that refund job {job} has completed, then tell the customer.", body,
                    on_span=lambda span: seen.setdefault("trace", self._trace_id_of(span)))
        self._label("loop", t.name, agent_id, seen["trace"], "", started, self.now(),
                    f"{agent_id} called http_get {url} {repeats} times with the same arguments in one trace")

    # --- the schedule ----------------------------------------------------------------------

    def normal_events(self) -> list[tuple[int, int, Callable[[], None]]]:
        events = []
        minutes = math.ceil(self.duration_ns / (60 * NS))
        for t in self.tenants:
            rng = random.Random(f"{self.seed}:schedule:{t.name}")
            kinds = [k for k, _ in t.mix]
            weights = [w for _, w in t.mix]
            burst = 1.0
            for minute in range(minutes):
                if minute % 10 == 0:
                    burst = math.exp(rng.gauss(0, 0.25))
                t0 = minute * 60 * NS
                lam = t.traces_per_hour / 60 * _daily(self.start_ns + t0, t.peak_hour_utc) * burst
                for _ in range(_poisson(rng, lam)):
                    offset = t0 + int(rng.random() * 60 * NS)
                    if offset >= self.duration_ns:
                        continue
                    kind = rng.choices(kinds, weights)[0]
                    k = self.pick_instance(rng, t.instances)
                    key = f"n:{t.name}:{minute}:{len(events)}"
                    events.append((offset, len(events),
                                   lambda t=t, kind=kind, k=k, key=key:
                                   self.root(t.name, key, lambda: self.normal_trace(t, kind, k))))
        return events

    def incident_events(self) -> list[tuple[int, int, Callable[[], None]]]:
        rng = random.Random(f"{self.seed}:incidents")
        d = self.duration_ns
        tenants = list(self.tenants)
        rng.shuffle(tenants)
        n = len(tenants)
        pick = lambda i: tenants[i % n]  # noqa: E731
        kinds = list(KINDS)
        rng.shuffle(kinds)
        slot = 0.7 * d / len(kinds)
        starts = {kind: int(0.2 * d + i * slot + rng.uniform(0, 0.3) * slot) for i, kind in enumerate(kinds)}
        spike_ns = int(min(420, max(150, 0.1 * d / NS)) * NS)
        events: list[tuple[int, int, Callable[[], None]]] = []
        base = 10_000_000

        def add(offset: int, key: str, tenant: str, fn: Callable[[], None]) -> None:
            events.append((offset, base + len(events), lambda: self.root(tenant, key, fn)))

        fan_t, spike_t, a, b = pick(0), pick(1), pick(2), pick(3)
        if b is a:
            b = pick(4)
        add(starts["fanout"], "i:fanout", fan_t.name, lambda: self.incident_fanout(fan_t))
        add(starts["cost_spike"], "i:cost_spike", spike_t.name, lambda: self.incident_cost_spike(spike_t, spike_ns))
        add(starts["cross_tenant"], "i:cross_tenant", a.name, lambda: self.incident_cross_tenant(a, b))
        add(starts["loop"], "i:loop", pick(5).name, lambda: self.incident_loop(pick(5), 40))

        owner = pick(4)
        others = [x for x in tenants if x is not owner][:3]
        uses: list[tuple[str, int, int]] = []  # (trace id, start, end) of each use
        plan = self.credential_fanout_plan(owner, others, rng)
        t0 = starts["credential_fanout"]
        for i, (offset, t, kind, aid) in enumerate(plan):
            def use(t=t, kind=kind, aid=aid) -> None:
                self.incident_credential_fanout_use(owner, t, kind, aid, lambda *u: uses.append(u))
            add(t0 + offset, f"i:credential_fanout:{i}", t.name, use)

        def label_credential_fanout() -> None:
            first_agent = plan[0][3]
            tenants_used = sorted({t.name for _, t, _, _ in plan})
            uses.sort(key=lambda u: u[1])
            self._label("credential_fanout", owner.name, first_agent, uses[0][0],
                        f"cred-{owner.name}-api", uses[0][1], max(u[2] for u in uses),
                        f"cred-{owner.name}-api used by {len(plan)} distinct agents of {len(tenants_used)} tenants "
                        f"({', '.join(tenants_used)}) within {(plan[-1][0] - plan[0][0]) / NS / 60:.1f} minutes")

        self._finish_credential_fanout = label_credential_fanout
        return events

    def run(self, incidents: bool) -> None:
        events = self.normal_events()
        self._finish_credential_fanout = None
        if incidents:
            events += self.incident_events()
        events.sort(key=lambda e: (e[0], e[1]))
        self.runtime.run(events, self.start_ns)
        if self._finish_credential_fanout is not None:
            self._finish_credential_fanout()
        order = {k: i for i, k in enumerate(KINDS)}
        self.incidents.sort(key=lambda inc: (inc.started_at_ns, order[inc.kind]))


# --- public API -------------------------------------------------------------------------------

_NO_CLOCK = object()


def _sdk_clock():
    """The clock the SDK stamps spans with: a callable, _NO_CLOCK (wall clock), or None (cannot tell)."""
    try:
        from agentwatch.collector.sdk.settings import settings
    except ImportError:
        return None
    if not hasattr(settings, "clock"):
        return None
    return settings.clock if settings.clock is not None else _NO_CLOCK


def run_fleet(*, duration_s: float = 3600, fast_forward: bool = True, incidents: bool = True, seed: int = 7,
              start_ns: int | None = None, tenants: int = 6, clock: SimulatedClock | None = None,
              speed: float = 1.0) -> DemoResult:
    """Run the simulated fleet through the already-initialised SDK and return what was injected.

    fast_forward: span time comes from `clock` (default: the last `make_clock()`, which must be the
    clock the SDK was initialised with); `start_ns` defaults to `duration_s` before now, so the
    run is the last hour (say) of history. Real time: traces start on the wall clock, latencies
    are slept (divided by `speed`); `start_ns` is ignored.
    Incidents start no earlier than 20 % into the run; incidents=False runs the same normal
    traffic without them.
    """
    global _SIM
    if not 1 <= tenants <= MAX_TENANTS:
        raise ValueError(f"tenants must be between 1 and {MAX_TENANTS}")
    if incidents and tenants < 2:
        raise ValueError("incidents need at least 2 tenants (cross_tenant)")
    if duration_s <= 0 or speed <= 0:
        raise ValueError("duration_s and speed must be positive")
    duration_ns = int(duration_s * NS)
    sdk_clock = _sdk_clock()
    if fast_forward:
        clock = clock or (sdk_clock if isinstance(sdk_clock, SimulatedClock) else _last_clock)
        if clock is None or (sdk_clock is not None and sdk_clock is not clock):
            raise RuntimeError("fast-forward needs the SDK to run on the simulated clock: clock = make_clock(); "
                               "agentwatch.init(..., clock=clock) before run_fleet")
        start = int(start_ns if start_ns is not None else time.time_ns() - duration_ns)
        runtime = _FastForward(clock)
        clock.set(start)
    else:
        clock = clock or (sdk_clock if isinstance(sdk_clock, SimulatedClock) else None)
        runtime = _RealTime(speed)
        start = time.time_ns()
    with _RUN_LOCK:
        sim = _Sim(runtime=runtime, seed=seed, tenants=_TENANTS[:tenants], duration_ns=duration_ns, start_ns=start,
                   fast_forward=fast_forward)
        previous_wall = clock._wall if clock is not None else False
        if not fast_forward and clock is not None:
            clock._wall = True  # the SDK may hold the simulated clock: follow the wall for this run
        _SIM = sim
        try:
            sim.run(incidents)
            ended = max(runtime.now(), start + duration_ns) if fast_forward else runtime.now()
            if fast_forward:
                clock.set(ended)
        finally:
            _SIM = None
            if clock is not None:
                clock._wall = previous_wall
        agentwatch.flush()
    run_id = uuid.uuid4().hex
    return DemoResult(run_id=run_id, spans=sim.spans, incidents=sim.incidents, started_at_ns=start,
                      ended_at_ns=ended)


_INCIDENT_COLUMNS = ["RunId", "IncidentId", "Kind", "Tenant", "AgentId", "TraceId", "CredentialId", "StartedAt",
                     "EndedAt", "Description"]


def record_incidents(client, run_id: str, incidents: list[Incident]) -> None:
    """Write the labels into `demo_incidents` (client: clickhouse-connect, its database set)."""
    if not incidents:
        return
    rows = [[run_id, i.incident_id, i.kind, i.tenant, i.agent_id, i.trace_id, i.credential_id, i.started_at_ns,
             i.ended_at_ns, i.description] for i in incidents]
    client.insert("demo_incidents", rows, column_names=_INCIDENT_COLUMNS)


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / NS, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def incidents_to_json(result: DemoResult) -> str:
    """The run and its labels as JSON (snake_case keys; times in ns and ISO 8601)."""
    return json.dumps({
        "run_id": result.run_id, "spans": result.spans,
        "started_at_ns": result.started_at_ns, "ended_at_ns": result.ended_at_ns,
        "started_at": _iso(result.started_at_ns), "ended_at": _iso(result.ended_at_ns),
        "incidents": [{**asdict(i), "started_at": _iso(i.started_at_ns), "ended_at": _iso(i.ended_at_ns)}
                      for i in result.incidents],
    }, indent=2)
