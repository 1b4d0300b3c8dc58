"""Traces as they arrive: partial trees, and each span attributed to its nearest agent.

A span is exported when it ends, so a tree arrives leaves first: with stock
instrumentation (openai-v2, OpenInference, OpenLLMetry under an agent
framework) the `chat` and `execute_tool` spans carry no agent, and the
`invoke_agent` spans of the sub-agents and of the root come last, the root's
only when the whole tree is done. Waiting for them would alert on a runaway tree
only once it stopped.

So every span is attributed on arrival to its nearest agent ancestor among the
spans seen so far, or, while that ancestor has not arrived, to the nearest
ancestor that has not arrived (`open:<span id>`): a stand-in for the agent that
is still running. Spans under the same open agent share a stand-in, so the
number of distinct agents is known (give or take intermediate spans still open)
long before any agent span arrives; when a stand-in span arrives, what was
attributed to it moves to its own nearest agent. Spans that name their agent
(agentwatch's SDK stamps every span inside an agent) are attributed to it
directly.

    >>> t = TraceState("acme", 0)
    >>> for span, parent, op in [("c1", "fork1", "chat"), ("c2", "fork2", "chat"), ("c3", "root", "chat")]:
    ...     _ = t.attribute(SpanRow(0, 0, "t", span, parent, "acme", "", "", op, "", "", 0.0))
    >>> sorted(t.groups), t.sub_agents
    (['open:fork1', 'open:fork2', 'open:root'], 2)
    >>> _ = t.attribute(SpanRow(0, 0, "t", "fork1", "root", "acme", "agent-7", "researcher", "invoke_agent", "", "",
    ...                         0.0))
    >>> sorted(t.groups), t.agent_of("c1")
    (['agent-7', 'open:fork2', 'open:root'], ('agent-7', 'researcher'))
"""

from __future__ import annotations

from agentwatch.detectors.config import DetectorConfig
from agentwatch.detectors.stream import MINUTE_NS, NS, SpanRow
from agentwatch.schemas.vocabulary import INVOKE_AGENT_OPERATION, MODEL_OPERATIONS, TOOL_OPERATION

OPEN = "open:"  # prefix of a stand-in: the nearest ancestor that has not arrived yet
MAX_WALK = 256  # ancestors walked at most (a cycle in bad input must not hang the worker)
MAX_DEPTH_AGENTS = 512  # past this many agent spans the depth is kept as it was (the other metrics flag)


def describe_agent(key: str) -> str:
    """An agent key as a person reads it (stand-ins name the span the agent runs in)."""
    if key.startswith(OPEN):
        return f"the agent running span {key[len(OPEN):]} (its agent span not arrived yet)"
    if key.startswith("span:"):
        return f"the agent of span {key[5:]}"
    return key


class TraceState:
    """What the detectors know of one trace so far. Detector-owned slots live in `slots[kind]`."""

    def __init__(self, tenant: str, ts: int, trace_id: str = "") -> None:
        self.trace_id = trace_id
        self.tenant = tenant
        self.first_ts = ts
        self.last_ts = ts  # latest span start
        self.last_end = ts  # latest span end
        self.root_seen = False
        self.root_span = ""
        self.root_name = ""  # the root agent's name; until the root arrives, the earliest named agent's
        self.root_agent = ""
        self.root_ts: int | None = None
        self.span_parent: dict[str, str] = {}
        self.agent_spans: dict[str, str] = {}  # agent span -> its agent key
        self.names: dict[str, str] = {}  # agent key -> agent name
        self.groups: dict[str, int] = {}  # agent key (or open stand-in) -> spans attributed to it
        self.current_agent = ""  # the agent key of the row last attributed
        self.calls = 0
        self.calls_by_min: dict[int, int] = {}
        self.peak_per_min = 0
        self.invocations = 0
        self.depth = 0
        self.tool_calls = 0
        self.tools: set[str] = set()
        self.errors = 0
        self.tokens = [0, 0, 0, 0]  # input, output, cached input, reasoning
        self.cost = 0.0
        self.sample_spans: list[str] = []
        self.shape_changed = False  # the last row changed calls, agents or depth
        self.explained_by = None  # the anomaly (fanout) that claimed this trace whole
        self.explain_pending = False
        self.slots: dict[str, object] = {}

    # --- agents ------------------------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        """The agent kind the trace is judged as: the root agent's name once the root arrived, else ''."""
        return self.root_name if self.root_seen else ""

    @property
    def sub_agents(self) -> int:
        return max(0, len(self.groups) - 1)

    def resolve(self, node: str) -> str:
        """The agent key of the nearest agent at or above `node`, or the open stand-in on the way."""
        for _ in range(MAX_WALK):
            if not node:
                return "root"  # above a root that is no agent: the trace's own top
            key = self.agent_spans.get(node)
            if key is not None:
                return key
            parent = self.span_parent.get(node)
            if parent is None:
                return OPEN + node
            node = parent
        return OPEN + node

    def agent_of(self, span: str, parent: str = "") -> tuple[str, str]:
        """(agent key, agent name) of a span (of a credential use on it): its nearest agent so far."""
        key = self.resolve(span if span in self.span_parent or not parent else parent)
        return key, self.names.get(key, "")

    def attribute(self, row: SpanRow) -> str:
        """Take a span into the tree; returns its agent key (also kept as `current_agent`)."""
        span = row.span
        self.span_parent[span] = row.parent
        own = ""
        if row.op == INVOKE_AGENT_OPERATION:
            own = row.agent_id or "span:" + span  # an agent span naming no agent: itself
            self.agent_spans[span] = own
            key = own
        elif row.agent_id:
            key = row.agent_id
        else:
            key = self.resolve(row.parent)
        if row.agent_name and (key not in self.names or own):
            self.names[key] = row.agent_name
        before = len(self.groups)
        self.groups[key] = self.groups.get(key, 0) + 1
        moved = self.groups.pop(OPEN + span, 0)  # spans that arrived before this one, attributed to it
        if moved:
            target = own or row.agent_id or self.resolve(row.parent)
            self.groups[target] = self.groups.get(target, 0) + moved
        self.current_agent = key
        self.shape_changed = len(self.groups) != before
        if own and len(self.agent_spans) <= MAX_DEPTH_AGENTS:
            self.depth = self.compute_depth()
        return key

    def compute_depth(self) -> int:
        """Longest chain of agent spans (through any spans between them) seen in the trace."""
        memo: dict[str, int] = {}
        best = 0
        for span in self.agent_spans:
            chain, node = [], span
            while node and node not in memo and len(chain) < MAX_WALK:
                chain.append(node)
                node = self.span_parent.get(node, "")
            depth = memo.get(node, 0)
            for s in reversed(chain):
                depth += 1 if s in self.agent_spans else 0
                memo[s] = depth
            best = max(best, memo[span])
        return best

    # --- the row ------------------------------------------------------------------------------------------

    def observe(self, row: SpanRow) -> None:
        """Everything but the detectors' own state: times, root, agents, counts, tokens."""
        ts = row.ts
        self.first_ts = min(self.first_ts, ts)
        self.last_ts = max(self.last_ts, ts)
        self.last_end = max(self.last_end, ts + row.duration)
        root_before = (self.root_name, self.root_seen)
        if not row.parent:
            self.root_seen = True
            self.root_span = row.span
            if row.agent_name:
                self.root_name, self.root_agent, self.root_ts = row.agent_name, row.agent_id, ts
        elif row.agent_name and not self.root_seen and (self.root_ts is None or ts < self.root_ts):
            self.root_name, self.root_agent, self.root_ts = row.agent_name, row.agent_id, ts
        self.attribute(row)
        op = row.op
        if op in MODEL_OPERATIONS:
            self.calls += 1
            m = ts // MINUTE_NS
            n = self.calls_by_min[m] = self.calls_by_min.get(m, 0) + 1
            self.peak_per_min = max(self.peak_per_min, n)
            if len(self.sample_spans) < 10:
                self.sample_spans.append(row.span)
            self.shape_changed = True
        elif op == INVOKE_AGENT_OPERATION:
            if row.parent:
                self.invocations += 1
            self.shape_changed = True
        elif op == TOOL_OPERATION:
            self.tool_calls += 1
            if row.tool:
                self.tools.add(row.tool)
        if (self.root_name, self.root_seen) != root_before:
            self.shape_changed = True
        self.errors += bool(row.error)
        self.cost += row.cost
        tk = self.tokens
        tk[0] += row.input_tokens
        tk[1] += row.output_tokens
        tk[2] += row.cached_tokens
        tk[3] += row.reasoning_tokens

    def shape(self) -> dict[str, float]:
        """The finished trace's shape (novel_trace's features)."""
        return {"model_calls": self.calls, "tool_calls": self.tool_calls, "distinct_tools": len(self.tools),
                "sub_agents": self.sub_agents, "depth": self.depth, "input_tokens": self.tokens[0],
                "output_tokens": self.tokens[1], "cached_input_tokens": self.tokens[2],
                "reasoning_tokens": self.tokens[3], "duration_s": max(self.last_end - self.first_ts, 0) / NS,
                "cost_usd": self.cost, "errors": self.errors}


class TraceBook:
    """The traces being followed, and when each is final."""

    def __init__(self) -> None:
        self.traces: dict[str, TraceState] = {}

    def __len__(self) -> int:
        return len(self.traces)

    def get(self, trace: str) -> TraceState | None:
        return self.traces.get(trace)

    def observe(self, row: SpanRow) -> TraceState:
        t = self.traces.get(row.trace)
        if t is None:
            t = self.traces[row.trace] = TraceState(row.tenant, row.ts, row.trace)
        t.observe(row)
        return t

    def finished(self, watermark: int, max_ts: int, config: DetectorConfig) -> list[TraceState]:
        """Take out the traces that are final: the root arrived (it ends last) and the stream moved
        `trace_grace_s` past their last span, or, root or not, the watermark passed their last span by
        `trace_idle_s`."""
        idle = int(config.trace_idle_s * NS)
        grace = max_ts - int(config.trace_grace_s * NS)
        done = [tid for tid, t in self.traces.items()
                if (t.root_seen and t.last_ts < grace) or watermark > t.last_ts + idle]
        return [self.traces.pop(tid) for tid in done]
