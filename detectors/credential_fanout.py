"""credential_fanout: one credential used by far more distinct agents than it normally is.

Per credential, the distinct agents that used it in a sliding window (5 minutes
by default, in minute buckets), against the credential's learned baseline (a
new credential borrows its owner tenant's), plus hard guard rails on agents and
on tenants per window. An agent is the use's own agent id or, with stock
instrumentation where the span names none, its nearest agent in the trace (a
stand-in while that agent's span has not arrived: see `traces`). Agents new to
the credential are listed first in the evidence: they are where it spread.

A burst of traffic brings more agents to every credential of a tenant at once,
so the count is judged against the most agents the credential had at once
(its slowly decaying peak) times `credential_peak_factor`, besides its mean and
spread.

    >>> from agentwatch.detectors.anomalies import AnomalyBook
    >>> from agentwatch.detectors.config import DetectorConfig
    >>> from agentwatch.detectors.stream import CredentialRow
    >>> book, rule = AnomalyBook(), CredentialFanout(DetectorConfig(credential_max_agents=4))
    >>> for k in range(4):
    ...     rule.observe(CredentialRow(0, k, f"t{k}", "s", "acme", f"bot-{k}", "use", "key-1", "acme", "db", "acme",
    ...                                "read"), None, book)
    >>> [(a.kind, a.tenant, a.subject) for a in book.open.values()]
    [('credential_fanout', 'acme', 'key-1')]
"""

from __future__ import annotations

import heapq
import math
from dataclasses import replace

from agentwatch.detectors.anomalies import Anomaly, AnomalyBook
from agentwatch.detectors.baselines import BaselineBook, evaluate
from agentwatch.detectors.config import DetectorConfig
from agentwatch.detectors.detector import Detector
from agentwatch.detectors.stream import MAX_IDLE_WINDOWS, MAX_LISTED, MINUTE_NS, NS, CredentialRow, severity, utc


class CredentialState:
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.buckets: dict[int, dict[str, list]] = {}  # minute -> agent -> [tenant, first ts, trace, span, new]
        self.known: set[str] = set()  # agents that used it before (first-seen pairs)
        self.max_bucket = -(1 << 62)
        self.first_bucket: int | None = None
        self.last_ts = 0
        self.flagged: set[int] = set()  # window ends (minute index) found anomalous


class CredentialFanout(Detector):
    kind = "credential_fanout"
    stream = "credentials"
    MAX_KNOWN = 5_000

    def __init__(self, config: DetectorConfig) -> None:
        self.credentials: dict[str, CredentialState] = {}
        self.baselines = BaselineBook(**config.baseline_options())
        self.buckets = max(1, round(config.credential_window_s / 60))
        self.closed_until: int | None = None
        self.late_rows = 0
        super().__init__(config)

    def configure(self, config: DetectorConfig) -> None:
        c = self.config = config
        self.limits = replace(c.limits(c.credential_min_agents, c.credential_min_history, c.credential_max_agents),
                              peak_factor=c.credential_peak_factor)

    def observe(self, row: CredentialRow, trace, book: AnomalyBook) -> None:
        if row.event != "use" or not row.mine_owner or not row.credential:
            return
        owner = row.credential_tenant or row.tenant
        cs = self.credentials.get(row.credential)
        if cs is None:
            cs = self.credentials[row.credential] = CredentialState(owner)
        cs.last_ts = max(cs.last_ts, row.ts)
        new = row.agent_id not in cs.known
        if new and len(cs.known) < self.MAX_KNOWN:
            cs.known.add(row.agent_id)
        m = row.ts // MINUTE_NS
        if self.closed_until is None:
            self.closed_until = m - math.ceil(self.config.allowed_lateness_s / 60)
        if m < self.closed_until - self.buckets + 1:
            self.late_rows += 1  # every window holding this minute is final
            return
        bucket = cs.buckets.setdefault(m, {})
        entry = bucket.get(row.agent_id)
        if entry is not None:
            if row.ts < entry[1]:
                entry[1:4] = [row.ts, row.trace, row.span]
            return
        bucket[row.agent_id] = [row.tenant, row.ts, row.trace, row.span, new]
        cs.max_bucket = max(cs.max_bucket, m)
        cs.first_bucket = m if cs.first_bucket is None else min(cs.first_bucket, m)
        for end in range(max(m, self.closed_until), min(m + self.buckets - 1, cs.max_bucket) + 1):
            self._evaluate(row.credential, cs, end, book)

    def tick(self, watermark_ns: int, book: AnomalyBook) -> None:
        """Windows ending before the watermark's minute are final: evaluate them whole, learn the normal ones."""
        until = watermark_ns // MINUTE_NS
        if self.closed_until is None:
            return
        start = max(self.closed_until, until - MAX_IDLE_WINDOWS)
        for credential, cs in self.credentials.items():
            for end in range(start, until):
                if end > cs.max_bucket + self.buckets:
                    break
                if not any(m in cs.buckets for m in range(end - self.buckets + 1, end + 1)):
                    continue
                # learn whole windows only: the first ones of a credential's history cover less than W minutes
                bad = end in cs.flagged or self._evaluate(credential, cs, end, book)
                if end - self.buckets + 1 >= cs.first_bucket:  # anomalous ones are held back (baselines.py)
                    self.baselines.learn(len(self._window(cs, end)), (end + 1) * MINUTE_NS,
                                         ("credential", credential), ("owner", cs.owner), anomalous=bad)
                cs.flagged.discard(end)
            for m in [m for m in cs.buckets if m < until - self.buckets + 1]:
                del cs.buckets[m]
        # forget credentials idle for the TTL (short-lived credentials must not grow the checkpoint forever)
        horizon = until * MINUTE_NS - int(self.config.credential_idle_ttl_s * NS)
        for credential in [c for c, cs in self.credentials.items() if not cs.buckets and cs.last_ts < horizon]:
            del self.credentials[credential]
            self.baselines.drop(("credential", credential))
        self.closed_until = max(self.closed_until, until)

    def render(self, a: Anomaly) -> tuple[str, dict]:
        ctx = a.ctx
        b = ctx.get("baseline") or {}
        normal = (f"it is normally used by {b['mean']:.1f} agents per {ctx['window_s'] // 60} minutes (threshold "
                  f"{ctx['threshold_agents']:.0f})" if b.get("warm") else "it has no learned baseline yet")
        summary = (f"Credential fan-out: {ctx['credential_id']} of tenant {ctx['credential_tenant']} was used by "
                   f"{ctx['distinct_agents']} distinct agents of {ctx['distinct_tenants']} tenants "
                   f"({', '.join(ctx['tenants'])}) within {ctx['window_s'] // 60} minutes, "
                   f"{ctx['first_seen_count']} of them for the first time; {normal}.")
        return summary, {**ctx, "trace_id": a.trace_id}

    # --- windows -----------------------------------------------------------------------------------------

    def _window(self, cs: CredentialState, end: int) -> dict[str, list]:
        agents: dict[str, list] = {}
        for m in range(end - self.buckets + 1, end + 1):
            for agent, entry in cs.buckets.get(m, {}).items():
                seen = agents.get(agent)
                if seen is None or entry[1] < seen[1]:
                    agents[agent] = entry
        return agents

    def _evaluate(self, credential: str, cs: CredentialState, end: int, book: AnomalyBook) -> bool:
        agents = self._window(cs, end)
        n_agents = len(agents)
        tenants = {e[0] for e in agents.values()}
        limits = self.limits
        tenant_limit = self.config.credential_max_tenants
        too_many_tenants = bool(tenant_limit) and len(tenants) >= tenant_limit
        if n_agents <= limits.floor and not limits.hard_crossed(n_agents) and not too_many_tenants:
            return False
        t_end = (end + 1) * MINUTE_NS
        key, baseline = self.baselines.lookup(limits, ("credential", credential), ("owner", cs.owner))
        bad, score, thr = evaluate(n_agents, t_end, baseline, limits)
        if too_many_tenants:
            bad, score = True, max(score, len(tenants) / tenant_limit)
        if not bad:
            return False
        cs.flagged.add(end)
        new_uses = [e[1] for e in agents.values() if e[4]]
        first = min(new_uses) if new_uses else min(e[1] for e in agents.values())
        last = max(e[1] for e in agents.values())
        hard = limits.hard_crossed(n_agents) or too_many_tenants
        existing = book.get(self.kind, cs.owner, credential)
        previous = existing.score if existing is not None else 0.0
        # the earliest uses, and of agents new to it, only as many as the evidence lists: a credential of a
        # busy tenant is used by thousands of agent runs in a window, re-judged at each new one
        earliest = heapq.nsmallest(MAX_LISTED, agents.items(), key=_use_time)
        earliest_new = heapq.nsmallest(MAX_LISTED, ((a, e) for a, e in agents.items() if e[4]), key=_use_time)
        lead = earliest_new[0] if earliest_new else earliest[0]  # the first agent new to it
        a, _ = book.observe(self.kind, cs.owner, credential, first_ns=first, last_ns=last, score=score,
                            severity=severity(self.config, score, hard), agent_id=lead[0], trace_id=lead[1][2])
        if a.ctx is None or score >= previous:
            a.ctx = {
                "credential_id": credential, "credential_tenant": cs.owner,
                "window_start": utc(t_end - self.buckets * MINUTE_NS), "window_end": utc(t_end),
                "window_s": self.buckets * 60, "distinct_agents": n_agents, "distinct_tenants": len(tenants),
                "tenants": sorted(tenants), "threshold_agents": thr, "hard_limit_agents": limits.hard,
                "hard_limit_tenants": tenant_limit or None,
                "baseline": baseline.describe(t_end, limits) if baseline else None,
                "baseline_key": "/".join(key) if key else None,
                "first_seen_pairs": [{"agent_id": agent, "tenant": e[0], "at": utc(e[1]), "trace_id": e[2],
                                      "span_id": e[3]} for agent, e in earliest_new],
                "first_seen_count": len(new_uses),
                "uses": [{"agent_id": agent, "tenant": e[0], "at": utc(e[1]), "trace_id": e[2], "span_id": e[3]}
                         for agent, e in earliest],
                "first_use_at": utc(first), "last_use_at": utc(last),
            }
        return True


def _use_time(item: tuple[str, list]) -> int:
    return item[1][1]
