"""The guard: containment in the agent process (`agentwatch.init(..., guard=True)`).

A background thread polls the receiver's verdicts (`GET /v1/verdicts`, see
collector/receiver/verdicts.py) at least every `guard_interval` seconds (1 s by
default; each wait is 75-100 % of it), with `If-None-Match`, and keeps them as an
immutable snapshot: halted trace ids, agent ids and tenants, each to its verdict
(verdicts.py holds them and `AgentHalted`). A call under a halt raises
`agentwatch.AgentHalted` (anomaly id, kind, summary, what was halted and by whom)
in the code that makes the call, and an `agentwatch.halted` event is added to the
span it would have started under (the enclosing agent's, usually), which then ends
with the error like any other exception.

Where the guard checks, and what it stops:

- `@agentwatch.llm` (a model call), `@agentwatch.tool` and `@agentwatch.agent` (an
  agent start, so a halted trace forks no more sub-agents): before their span
  starts. Functions and methods when called, coroutines when awaited, generators and
  async generators at their first item, `with` blocks on entry. The check reads the
  OpenTelemetry context of the calling code: asyncio tasks and threads given the
  context (`contextvars.copy_context().run`, OpenTelemetry's threading
  instrumentation) are covered like the code that started them.
- spans other instrumentations start (openai-v2, OpenInference, OpenLLMetry, ...),
  in `GuardSpanProcessor.on_start`: model, tool and agent spans wherever they start,
  and any span started inside an agent. The OpenTelemetry SDK lets an exception out
  of `on_start` into the code starting the span; an instrumentation that starts its
  span before sending the request (openai-v2 does, a test runs it) is stopped before
  the request leaves. The halted span is never ended, so never exported.
- not intercepted: a client no instrumentation covers (wrap it in `@llm`); an
  instrumentation that catches errors of its own span start and calls on; a span
  outside any agent that is no model, tool or agent span (a web server's request: a
  halt never breaks the service around the agents); work in a thread the context
  was not given to (a new trace with no agent: only a tenant halt reaches it); a
  call already in flight (a stream being read is not cut: the next call stops).

A halt's `calls` says what it stops: `all` (model calls, tool calls, agent starts,
other spans inside an agent) or `model` (model calls only: a tenant over its
budget). Matching: the trace of the current span, the current agent (and an
`@agent`'s own fixed `agent_id`), the tenant (the API key's when the guard polls
with one, else the `agentwatch.tenant()` scope, else init's `tenant`). Agent ids
are per invocation unless the agent gives a fixed `agent_id`: halting an agent id
stops that agent wherever it runs, and it starts no sub-agent; the sub-agents it
already started (ids of their own) run on, unless their trace or tenant is halted.

Cost in the hot path: with the guard off or no verdicts, two attribute reads; with
verdicts, at most four dict lookups (bench/containment.py measures it).

Fail-open: if the receiver cannot be reached (or answers an error) the agent runs
on. `Telemetry.guard.state` is 'ok', 'unreachable', 'starting' or 'off', exported
as the gauge `agentwatch.guard.reachable` (1 or 0, with the state as attribute),
beside `agentwatch.guard.verdicts` and `agentwatch.guard.halted_calls`. Verdicts
known when the receiver went away are kept for `hold_s` (30 s), so a blip does not
release a runaway, then dropped.

With an API key the guard gets its key's tenant's verdicts; without one, every
tenant's (a process may serve several through `agentwatch.tenant()`).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
import weakref
from typing import Any, NoReturn
from urllib.parse import urlparse

from opentelemetry import trace
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, Context, attach, detach, set_value
from opentelemetry.sdk.trace import Span, SpanProcessor

from agentwatch.schemas.attributes import (
    GEN_AI_AGENT_ID,
    GEN_AI_OPERATION_NAME,
    LLM_REQUEST_TYPE,
    LLM_REQUEST_TYPES,
    OPENINFERENCE_OPERATIONS,
    OPENINFERENCE_SPAN_KIND,
    TRACELOOP_OPERATIONS,
    TRACELOOP_SPAN_KIND,
)
from agentwatch.schemas.vocabulary import AGENT_OPERATIONS, MODEL_OPERATIONS, TOOL_OPERATION

from .settings import TRACER_NAME, Scope, current_scope, logger, warn_once
from .verdicts import EMPTY, AgentHalted, Snapshot, Verdict

__all__ = ["EMPTY", "AgentHalted", "Guard", "GuardSpanProcessor", "Snapshot", "Verdict", "activate", "check",
           "deactivate"]

VERDICTS_PATH = "/v1/verdicts"
DEFAULT_INTERVAL_S = 1.0
HOLD_S = 30.0
# the span event of a halted call, and its attributes
HALTED_EVENT = "agentwatch.halted"
HALT_ID = "agentwatch.halt.id"
HALT_SCOPE = "agentwatch.halt.scope"
HALT_TARGET = "agentwatch.halt.target"
HALT_CALL = "agentwatch.halt.call"
HALT_DECIDED_BY = "agentwatch.halt.decided_by"
HALT_REASON = "agentwatch.halt.reason"
ANOMALY_ID = "agentwatch.anomaly.id"
ANOMALY_KIND = "agentwatch.anomaly.kind"


class Guard:
    """The verdicts of one `init`, kept fresh by a poll thread. `Guard(None)` is the guard switched off."""

    def __init__(self, url: str | None, headers: dict[str, str] | None = None, tenant: str | None = None,
                 interval_s: float = DEFAULT_INTERVAL_S, timeout_s: float | None = None,
                 hold_s: float = HOLD_S) -> None:
        self.url = url.rstrip("/") + VERDICTS_PATH if url else None
        self.headers = {"Accept": "application/json", "User-Agent": "agentwatch-guard", **(headers or {})}
        self.keyed = any(k.lower() in ("authorization", "x-agentwatch-api-key") for k in self.headers)
        self.default_tenant = tenant
        self.tenant: str | None = None  # the API key's tenant, as the receiver said: every call of this process
        self.interval_s = max(0.01, float(interval_s))
        self.timeout_s = timeout_s if timeout_s is not None else max(1.0, min(5.0, 2 * self.interval_s))
        self.hold_s = hold_s
        self.state = "off" if url is None else "starting"
        self.snapshot: Snapshot = EMPTY
        self.polls = 0
        self.failures = 0  # polls that failed, ever
        self.halted_calls = 0
        self.last_error = ""
        self.last_ok: float | None = None  # monotonic time of the last answer
        self._etag: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # the proxies of the environment apply, as to the exporter
        self._opener = urllib.request.build_opener()

    # --- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> Guard:
        if self.url is not None and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="agentwatch-guard", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(self.timeout_s + 1)
        if self.url is not None:
            self.state = "off"

    def _run(self) -> None:
        # Each wait is 75-100 % of the interval: never longer (a halt is seen within one interval, plus the
        # receiver's cache), and guards started together (a fleet's restart) do not poll in step, nor does a
        # guard stay in step with its exporter's batches, which start at the same init: a halt then waits
        # under half an interval for the next poll on average, not a whole one.
        while not self._stop.is_set():
            began = time.monotonic()
            self.refresh()
            self._stop.wait(max(0.0, self.interval_s * random.uniform(0.75, 1.0) - (time.monotonic() - began)))

    # --- polling ---------------------------------------------------------------------------------------

    @property
    def verdicts(self) -> tuple[Verdict, ...]:
        return self.snapshot.verdicts

    def refresh(self) -> bool:
        """Poll the receiver once now; True if it answered."""
        if self.url is None:
            return False
        headers = dict(self.headers)
        if self._etag:
            headers["If-None-Match"] = self._etag
        token = attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))  # the poll is no span of the agent's
        try:
            self.polls += 1
            with self._opener.open(urllib.request.Request(self.url, headers=headers), timeout=self.timeout_s) as answer:
                payload = json.loads(answer.read())
                etag = answer.headers.get("ETag")
            self._update(payload, etag)
            return True
        except urllib.error.HTTPError as error:
            if error.code == 304:
                self._answered()
                return True
            self._failed(f"HTTP {error.code} from {self.url}")
        except Exception as error:  # noqa: BLE001 - unreachable, refused, timed out, not JSON: run on
            self._failed(f"{type(error).__name__}: {error}")
        finally:
            detach(token)
        return False

    def _update(self, payload: Any, etag: str | None) -> None:
        verdicts = tuple(Verdict(item) for item in payload.get("verdicts") or ()
                         if item.get("action", "halt") == "halt")
        if self.keyed:
            self.tenant = payload.get("tenant") or None
        self.snapshot = Snapshot(verdicts, etag or "")
        self._etag = etag
        self._answered()

    def _answered(self) -> None:
        if self.state == "unreachable":
            logger.info("agentwatch guard: the receiver answers again (%s)", self.url)
        self.state = "ok"
        self.last_ok = time.monotonic()

    def _failed(self, error: str) -> None:
        self.failures += 1
        self.last_error = error
        if self.state != "unreachable":
            logger.warning("agentwatch guard: cannot read verdicts (%s); agents run on unguarded", error)
        self.state = "unreachable"
        held_since = self.last_ok if self.last_ok is not None else -float("inf")
        if not self.snapshot.empty and time.monotonic() - held_since > self.hold_s:
            self.snapshot, self._etag = EMPTY, None  # fail-open: stale verdicts are not enforced forever

    # --- enforcing -------------------------------------------------------------------------------------

    def tenant_of(self, scope: Scope) -> str | None:
        return self.tenant or scope.tenant or self.default_tenant

    def halt(self, verdict: Verdict, call: str, span: Any = None) -> NoReturn:
        """Record the halted call on `span` (default: the current one) and raise AgentHalted."""
        with self._lock:
            self.halted_calls += 1
        try:
            span = span if span is not None else trace.get_current_span()
            if span.is_recording():
                span.add_event(HALTED_EVENT, {
                    HALT_ID: verdict.halt_id, HALT_SCOPE: verdict.scope, HALT_TARGET: verdict.target,
                    HALT_CALL: call, HALT_DECIDED_BY: verdict.decided_by, HALT_REASON: verdict.reason,
                    ANOMALY_ID: verdict.anomaly_id, ANOMALY_KIND: verdict.kind})
        except Exception:
            warn_once("halt-event", "agentwatch could not record a halted call on its span")
        raise AgentHalted(verdict, call)


# --- the active guard and its checks -------------------------------------------------------------------

_guard: Guard | None = None  # the last init's, while it is on


def activate(guard: Guard) -> None:
    """Make `guard` the one the checks use (None when it is off); a guard it replaces stops polling."""
    global _guard
    previous, _guard = _guard, (guard if guard.url is not None else None)
    if previous is not None and previous is not guard:
        previous.stop()


def deactivate(guard: Guard) -> None:
    global _guard
    if _guard is guard:
        _guard = None


_observed: weakref.WeakSet = weakref.WeakSet()  # meter providers the guard's metrics are registered on


def observe(meter_provider: Any) -> None:
    """Report the active guard's state as metrics of `meter_provider` (exported with the others).

    Registered once per provider, reading whichever guard is active when observed: an instrument name is
    registered once per meter, and a second init on the same (global) provider must not report the
    stopped guard of the first."""
    try:
        if meter_provider in _observed:
            return
        _observed.add(meter_provider)
    except TypeError:  # a provider that takes no weak reference: register, at worst twice
        pass
    try:
        from opentelemetry.metrics import Observation

        def reachable(_options):
            g = _guard
            return [] if g is None else [Observation(1 if g.state == "ok" else 0, {"agentwatch.guard.state": g.state})]

        def verdicts(_options):
            g = _guard
            return [] if g is None else [Observation(len(g.snapshot.verdicts))]

        def halted(_options):
            g = _guard
            return [] if g is None else [Observation(g.halted_calls)]

        meter = meter_provider.get_meter(TRACER_NAME)
        meter.create_observable_gauge("agentwatch.guard.reachable", callbacks=[reachable],
                                      description="1 while the guard reads verdicts, 0 while it cannot (agents "
                                                  "then run unguarded)")
        meter.create_observable_gauge("agentwatch.guard.verdicts", callbacks=[verdicts],
                                      description="halts the guard enforces")
        meter.create_observable_counter("agentwatch.guard.halted_calls", callbacks=[halted],
                                        description="calls the guard stopped")
    except Exception:
        warn_once("guard-metrics", "agentwatch could not register the guard's metrics")


def check(call: str, scope: Scope, own_agent_id: str | None = None) -> None:
    """Raise AgentHalted if a halt in force covers this call (the decorators' hook, before their span)."""
    guard = _guard
    if guard is None:
        return
    snapshot = guard.snapshot
    if snapshot.empty:
        return
    verdict = snapshot.match(call, None, scope.agent_id, own_agent_id,
                             guard.tenant or scope.tenant or guard.default_tenant)
    if verdict is not None:
        guard.halt(verdict, call)


def call_kind(attributes: Any) -> str | None:
    """'model', 'tool' or 'agent' for a GenAI span by any convention's attributes; None for other spans."""
    operation = (attributes.get(GEN_AI_OPERATION_NAME)
                 or OPENINFERENCE_OPERATIONS.get(attributes.get(OPENINFERENCE_SPAN_KIND))
                 or LLM_REQUEST_TYPES.get(attributes.get(LLM_REQUEST_TYPE))
                 or TRACELOOP_OPERATIONS.get(attributes.get(TRACELOOP_SPAN_KIND)))
    if operation in MODEL_OPERATIONS:
        return "model"
    if operation == TOOL_OPERATION:
        return "tool"
    if operation in AGENT_OPERATIONS:
        return "agent"
    return None


class GuardSpanProcessor(SpanProcessor):
    """Checks the spans other instrumentations start; raising here stops their call (see the module doc).

    Added first to the provider, so a halted span start reaches no other processor."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        guard = _guard
        if guard is None or guard.snapshot.empty:
            return
        try:
            scope_info = span.instrumentation_scope
            if scope_info is not None and scope_info.name == TRACER_NAME:
                return  # the decorators checked before starting it
            attributes = getattr(span, "_attributes", None) or span.attributes or {}
            # the SDK's BoundedAttributes answers a missing key of .get() by raising inside: read its dict
            attributes = getattr(attributes, "_dict", attributes)
            call = call_kind(attributes)
            scope = current_scope(parent_context)
            if call is None:
                if scope.agent_id is None:
                    return  # not a GenAI call, not inside an agent: never stopped
                call = "other"
            verdict = guard.snapshot.match(call, span.get_span_context().trace_id, scope.agent_id,
                                           attributes.get(GEN_AI_AGENT_ID), guard.tenant_of(scope))
        except Exception:
            warn_once("guard-span", "agentwatch could not check a span against the verdicts")
            return
        if verdict is not None:
            guard.halt(verdict, call, trace.get_current_span(parent_context))


def guard_url(guard: bool | str | None, protocol: str, endpoint: str) -> str | None:
    """Where the guard reads verdicts: None (off), the exporter's endpoint (the receiver's OTLP/HTTP port;
    for OTLP/gRPC on 4317, the same host's 4318), or the URL given as `guard`."""
    if guard is None:
        guard = os.environ.get("AGENTWATCH_GUARD", "")
    if isinstance(guard, str):
        text = guard.strip()
        if text.lower() in ("", "0", "false", "no", "off"):
            return None
        if text.lower() not in ("1", "true", "yes", "on"):
            return text
    elif not guard:
        return None
    if protocol == "grpc":
        parsed = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
        if parsed.port == 4317:
            return parsed._replace(netloc=f"{parsed.hostname}:4318", scheme=parsed.scheme or "http").geturl()
        return parsed.geturl()
    return endpoint


def interval_from_env(interval: float | None) -> float:
    if interval is not None:
        return float(interval)
    raw = os.environ.get("AGENTWATCH_GUARD_INTERVAL", "").strip()
    return float(raw) if raw else DEFAULT_INTERVAL_S
