"""loop: an agent calling the same tool with the same arguments far more often than its kind does.

Tool calls are told apart by a hash of `gen_ai.tool.call.arguments` (the worker
reads it from `otel_traces`). Per trace, the repeats of each (agent, tool,
arguments) are counted as they arrive; the count is judged against the learned
worst repeat per trace of that agent kind (then of the tenant's and the fleet's
agents of any kind). With stock instrumentation the tool span names no agent:
repeats are then counted per trace, and the kind is the nearest agent's once it
arrived (until then, the most lenient of the baselines it could belong to).

    >>> from agentwatch.detectors.anomalies import AnomalyBook
    >>> from agentwatch.detectors.stream import SpanRow
    >>> from agentwatch.detectors.traces import TraceBook
    >>> loop, traces, book = Loop(DetectorConfig(loop_max_repeats=6)), TraceBook(), AnomalyBook()
    >>> for k in range(6):
    ...     row = SpanRow(0, k, "t1", f"s{k}", "a1", "acme", "", "", "execute_tool", "http_get", "", 0.0, 42, 10, "{}")
    ...     loop.observe(row, traces.observe(row), book)
    >>> [(a.kind, a.trace_id, a.score) for a in book.open.values()]
    [('loop', 't1', 1.0)]
"""

from __future__ import annotations

from agentwatch.detectors.anomalies import Anomaly, AnomalyBook
from agentwatch.detectors.baselines import BaselineBook, judge, kind_keys
from agentwatch.detectors.config import DetectorConfig
from agentwatch.detectors.detector import Detector
from agentwatch.detectors.stream import MAX_LISTED, SpanRow, ago, severity, utc
from agentwatch.detectors.traces import TraceState, describe_agent


class Repeats:
    """One (agent, tool, arguments) of a trace: how often, when, which spans."""

    def __init__(self, row: SpanRow, agent_key: str) -> None:
        self.n = 0
        self.first = self.last = row.ts
        self.spans: list[str] = []
        self.sample = row.args_sample
        self.size = row.args_bytes
        self.agent_key = agent_key

    def add(self, row: SpanRow) -> None:
        self.n += 1
        self.first = min(self.first, row.ts)
        self.last = max(self.last, row.ts)
        if len(self.spans) < MAX_LISTED:
            self.spans.append(row.span)


class LoopCase:
    def __init__(self) -> None:
        self.repeats: dict[tuple[str, str, int], Repeats] = {}
        self.anomaly: Anomaly | None = None
        self.key: tuple | None = None
        self.facts: dict = {}


class Loop(Detector):
    kind = "loop"
    stream = "spans"

    def __init__(self, config: DetectorConfig) -> None:
        self.baselines = BaselineBook(**config.baseline_options())
        super().__init__(config)

    def configure(self, config: DetectorConfig) -> None:
        c = self.config = config
        self.limits = c.limits(c.loop_min_repeats, c.loop_min_history, c.loop_max_repeats)


    def observe(self, row: SpanRow, t: TraceState, book: AnomalyBook) -> None:
        if not row.args_hash:
            return
        case: LoopCase | None = t.slots.get(self.kind)
        if case is None:
            case = t.slots[self.kind] = LoopCase()
        key = (row.agent_id, row.tool, row.args_hash)
        r = case.repeats.get(key)
        if r is None:
            r = case.repeats[key] = Repeats(row, t.current_agent)
        r.add(row)
        n, limits = r.n, self.limits
        if n <= limits.floor and not limits.hard_crossed(n):
            return
        agent_key, name = t.agent_of(r.spans[0])
        certain = bool(row.agent_name) or not agent_key.startswith("open:")
        bad, score, thr, key_b, baseline = judge(n, row.ts, self.baselines, limits,
                                                 kind_keys(t.tenant, row.agent_name or name), certain)
        if not bad:
            return
        previous = case.anomaly.score if case.anomaly is not None else 0.0
        a, _ = book.observe(self.kind, t.tenant, row.trace, first_ns=r.first, last_ns=row.ts, score=score,
                            severity=severity(self.config, score, limits.hard_crossed(n)),
                            agent_id=row.agent_id or agent_key, trace_id=row.trace, ctx=case)
        case.anomaly = a
        if score >= previous or case.key is None:
            case.key = key
            case.facts = {"threshold": thr, "baseline": baseline.describe(row.ts, limits) if baseline else None,
                          "baseline_key": "/".join(k or "any kind" for k in key_b) if key_b else None,
                          "hard_limit": limits.hard, "agent_id": row.agent_id or agent_key,
                          "agent_name": row.agent_name or name, "tenant": t.tenant}

    def finish(self, t: TraceState, book: AnomalyBook) -> None:
        """A normal finished trace teaches each agent kind the worst repeat it made."""
        case: LoopCase | None = t.slots.get(self.kind)
        if not t.root_seen:
            return
        worst: dict[str, int] = {}
        for r in (case.repeats.values() if case is not None else ()):
            name = t.agent_of(r.spans[0])[1]
            worst[name] = max(worst.get(name, 0), r.n)
        flagged = case is not None and case.anomaly is not None  # held back (baselines.py)
        for name, n in worst.items():
            self.baselines.learn(n, t.first_ts, *kind_keys(t.tenant, name), anomalous=flagged)

    def render(self, a: Anomaly) -> tuple[str, dict]:
        case: LoopCase = a.ctx
        agent, tool, digest = case.key
        r = case.repeats[case.key]
        f = case.facts
        b = f.get("baseline") or {}
        peak = round(b.get("peak") or 0)
        name = f.get("agent_name") or "agent"
        normal = (f"a {name} normally repeats a call at most {'once' if peak <= 1 else f'{peak} times'} per trace"
                  if b.get("warm") else "no learned baseline for this agent kind yet, so the hard limit applied")
        who = f.get("agent_id") or agent
        summary = (f"Loop: {describe_agent(who)} ({f.get('tenant')}) called {tool} with the same arguments {r.n} times in "
                   f"{ago(r.last - r.first)} in trace {a.trace_id}; {normal}.")
        evidence = {
            "trace_id": a.trace_id, "agent_id": who, "agent_name": f.get("agent_name"), "tool": tool,
            "repeats": r.n, "arguments_hash": f"{digest:016x}", "arguments_bytes": r.size,
            "arguments_preview": r.sample, "first_call_at": utc(r.first), "last_call_at": utc(r.last),
            "threshold": f.get("threshold"), "baseline": f.get("baseline"), "baseline_key": f.get("baseline_key"),
            "hard_limit": f.get("hard_limit"), "span_ids": r.spans,
            "other_repeated_calls": sorted(([k[0], k[1], f"{k[2]:016x}", x.n] for k, x in case.repeats.items()
                                            if x.n > 1 and k != case.key), key=lambda x: -x[3])[:10],
        }
        return summary, evidence
