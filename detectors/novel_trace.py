"""novel_trace: a finished trace unlike anything its agent kind has done.

When a trace is final (its root agent arrived and the stream moved on), its
shape (`TraceState.shape`: model and tool calls, distinct tools, sub-agents,
depth, tokens by kind, duration, cost, errors) is judged by the kind's shape
model (`shape_model.NovelTraceModel`: an IsolationForest per agent kind, refit
every so many normal traces, plus range and ratio tests), and a novel one is
raised naming the features that made it unusual. Traces another detector
already raised (a runaway fan-out, a loop) are left to it.

Only traces judged normal are learned. Novel traces of a kind are held back;
when `novel_shift_traces` of them come within `learning_s` (a new release of
the agent that really does work differently), they are learned at once and the
new shape becomes normal, as baselines do with a level shift.

    >>> import random
    >>> from agentwatch.detectors.anomalies import AnomalyBook
    >>> from agentwatch.detectors.stream import SpanRow
    >>> from agentwatch.detectors.traces import TraceBook
    >>> rng, book = random.Random(3), AnomalyBook()
    >>> detector = NovelTrace(DetectorConfig(novel_min_traces=50))
    >>> def finished(trace, calls):
    ...     traces = TraceBook()
    ...     t = traces.observe(SpanRow(0, 0, trace, "r", "", "acme", "a1", "triage", "invoke_agent", "", "", 0.0,
    ...                                duration=calls * 10**9))
    ...     for k in range(calls):
    ...         t = traces.observe(SpanRow(0, k, trace, f"c{k}", "r", "acme", "a1", "triage", "chat", "", "gpt-4o",
    ...                                    0.001, input_tokens=rng.randint(900, 1100)))
    ...     detector.finish(t, book)
    >>> for k in range(60):
    ...     finished(f"t{k}", rng.randint(3, 8))
    >>> finished("runaway", 80)
    >>> [(a.kind, a.trace_id) for a in book.open.values()]
    [('novel_trace', 'runaway')]
    >>> detector.render(next(iter(book.open.values())))[0]  # doctest: +ELLIPSIS
    'Novel trace: a triage agent (acme) made trace runaway unlike its 50 normal traces: model_calls 80 vs 3-8 in ...'
"""

from __future__ import annotations

from dataclasses import asdict

from agentwatch.detectors.anomalies import Anomaly, AnomalyBook
from agentwatch.detectors.config import DetectorConfig
from agentwatch.detectors.detector import Detector
from agentwatch.detectors.shape_model import NovelTraceModel
from agentwatch.detectors.stream import NS, utc
from agentwatch.detectors.traces import TraceState


class NovelTrace(Detector):
    kind = "novel_trace"
    stream = "spans"

    def __init__(self, config: DetectorConfig) -> None:
        self.model = NovelTraceModel(min_traces=config.novel_min_traces, refit_every=config.novel_min_traces,
                                     seed=0)
        self.held: dict[str, list[tuple[int, dict]]] = {}  # kind -> novel traces held back (first ts, shape)
        super().__init__(config)

    def finish(self, t: TraceState, book: AnomalyBook) -> None:
        kind = t.kind
        if not kind:
            return  # a trace whose root never arrived, or an unnamed root: no kind to compare with
        raised_elsewhere = t.explained_by is not None or any(
            getattr(slot, "anomaly", None) is not None for slot in t.slots.values())
        if raised_elsewhere:
            return
        shape = t.shape()
        verdict = self.model.score(kind, shape)
        if verdict is None or not verdict.novel:
            self.model.learn(kind, shape)
            return
        trace_id = t.trace_id
        book.observe(self.kind, t.tenant, trace_id, first_ns=t.first_ts, last_ns=t.last_ts,
                     score=verdict.score, severity="warning", agent_id=t.root_agent, trace_id=trace_id,
                     ctx=NovelCase(t, kind, shape, verdict))
        self._hold(kind, t.first_ts, shape)

    def _hold(self, kind: str, ts: int, shape: dict) -> None:
        held = self.held.setdefault(kind, [])
        held.append((ts, shape))
        window = int(self.config.learning_s * NS)
        held[:] = [(x, s) for x, s in held if ts - x <= window]
        if len(held) >= self.config.novel_shift_traces:  # a lasting new shape: it is the kind's normal now
            for _, s in held:
                self.model.learn(kind, s)
            held.clear()

    def render(self, a: Anomaly) -> tuple[str, dict]:
        case: NovelCase = a.ctx
        v = case.verdict
        basis = "the fleet's traces" if v.fleet else f"its {v.trained_on:,} normal traces"
        summary = (f"Novel trace: a {case.kind} agent ({case.tenant}) made trace {a.trace_id} unlike {basis}: "
                   f"{'; '.join(u['text'] for u in v.unusual[:3])}.")
        evidence = {"trace_id": a.trace_id, "agent_kind": case.kind, "root_agent_id": case.root_agent,
                    "first_span_at": utc(case.first_ts), "last_span_at": utc(case.last_ts), "shape": case.shape,
                    **asdict(v)}
        return summary, evidence


class NovelCase:
    """What a novel_trace anomaly is rendered from (the trace itself is gone once final)."""

    def __init__(self, t: TraceState, kind: str, shape: dict, verdict) -> None:
        self.kind = kind
        self.tenant = t.tenant
        self.root_agent = t.root_agent
        self.first_ts = t.first_ts
        self.last_ts = t.last_ts
        self.shape = shape
        self.verdict = verdict
