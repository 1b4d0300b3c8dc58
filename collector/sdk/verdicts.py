"""What the guard enforces: the verdicts an agent process holds, and `AgentHalted`.

A `Verdict` is one halt in force as the receiver serves it (collector/receiver/
verdicts.py); a `Snapshot` holds a set of them by what they match (trace id,
agent id, tenant) and is never changed once built, so the guard's poll thread
replaces it whole while calls read it without a lock. `Snapshot.match` is the
hot path of every guarded call (guard.py): at most four dict lookups.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.context import get_current

try:  # the context key of the current span: read directly, a third of get_current_span()'s cost
    from opentelemetry.trace.propagation import _SPAN_KEY
except ImportError:  # pragma: no cover - a release that moved it: the public way
    _SPAN_KEY = None

# what a halt stops, by its `calls`; a call is 'model', 'tool', 'agent' (a start) or 'other' (a span in an agent)
_STOPS = {"all": frozenset({"model", "tool", "agent", "other"}), "model": frozenset({"model"})}


class AgentHalted(Exception):
    """Raised in place of a call that a halt in force covers: the agent is contained.

    `anomaly_id`, `kind` and `summary` name the anomaly the halt answers (empty for a person's
    own halt: see `reason` and `decided_by`); `scope` and `target` say what is halted.
    """

    def __init__(self, verdict: Verdict, call: str) -> None:
        self.verdict = verdict
        self.call = call
        self.anomaly_id = verdict.anomaly_id
        self.kind = verdict.kind
        self.summary = verdict.summary
        self.scope = verdict.scope
        self.target = verdict.target
        self.halt_id = verdict.halt_id
        self.reason = verdict.reason
        self.decided_by = verdict.decided_by
        why = f"{verdict.kind} anomaly {verdict.anomaly_id}: {verdict.summary}" if verdict.anomaly_id \
            else verdict.reason or "halted by a person"
        what = {"agent": "agent start", "other": "call"}.get(call, f"{call} call")
        super().__init__(f"agentwatch halted this {what}: {verdict.scope} {verdict.target} is halted "
                         f"(decided by {verdict.decided_by or 'unknown'}; {why})")


class Verdict:
    """One halt in force, as the receiver serves it."""

    __slots__ = ("halt_id", "tenant", "scope", "target", "calls", "stops", "anomaly_id", "kind", "severity",
                 "agent", "trace_id", "summary", "reason", "decided_by", "decided_at")

    def __init__(self, item: dict) -> None:
        for name in self.__slots__:
            if name != "stops":
                setattr(self, name, str(item.get(name) or ""))
        self.calls = self.calls or "all"
        self.stops = _STOPS.get(self.calls, _STOPS["all"])

    def __repr__(self) -> str:
        why = self.kind or self.reason
        return f"Verdict({self.scope} {self.target!r} of {self.tenant!r}: {self.calls} calls, {why})"


class Snapshot:
    """The verdicts at one moment, by what they match; never changed once built."""

    __slots__ = ("traces", "agents", "tenants", "empty", "verdicts", "version")

    def __init__(self, verdicts: tuple[Verdict, ...] = (), version: str = "") -> None:
        self.verdicts = verdicts
        self.version = version
        self.traces: dict[int, Verdict] = {}
        self.agents: dict[str, Verdict] = {}
        self.tenants: dict[str, Verdict] = {}
        for v in verdicts:
            if v.scope == "trace":
                try:
                    self.traces[int(v.target, 16)] = v
                except ValueError:
                    continue
            elif v.scope == "agent":
                self.agents[v.target] = v
            elif v.scope == "tenant":
                self.tenants[v.target] = v
        self.empty = not (self.traces or self.agents or self.tenants)

    def match(self, call: str, trace_id: int | None, agent_id: str | None, own_agent_id: str | None,
              tenant: str | None) -> Verdict | None:
        """The verdict that stops this call, if any (trace_id None: the current span's). The hot path."""
        traces = self.traces
        if traces:
            if trace_id is None:
                span = get_current().get(_SPAN_KEY) if _SPAN_KEY is not None else trace.get_current_span()
                trace_id = span.get_span_context().trace_id if span is not None else 0
            v = traces.get(trace_id)
            if v is not None and call in v.stops:
                return v
        agents = self.agents
        if agents:
            v = agents.get(agent_id) if agent_id else None
            if v is not None and call in v.stops:
                return v
            v = agents.get(own_agent_id) if own_agent_id else None
            if v is not None and call in v.stops:
                return v
        tenants = self.tenants
        if tenants and tenant:
            v = tenants.get(tenant)
            if v is not None and call in v.stops:
                return v
        return None


EMPTY = Snapshot()
