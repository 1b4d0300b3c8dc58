"""Containment policy: which anomalies halt what, per tenant, decided as the detectors raise them.

The detector worker hands every anomaly it is about to write to `Containment.apply`
(before the anomaly rows, in the same batch, so a halt is in the store as soon as
its anomaly is): a rule of the tenant's policy that matches it writes a halt to the
`halts` table (schemas/halts.py), which the receiver serves to the SDKs' guards as
a verdict. Run in the worker rather than in a loop tailing `anomalies`: a tail
would add its poll interval to the time a runaway keeps spending.

Defaults (what the fleet's operators get without configuring anything):

| anomaly | halts | calls |
| --- | --- | --- |
| `fanout` (runaway fan-out) | its trace | all: model calls, tool calls, agent starts |
| `loop` | its trace | all |
| `cost_spike` over the tenant's hard budget (evidence `over_budget`) | the tenant | model calls only |
| `cross_tenant` (a credential used across tenants) | the agent that used it, everywhere | all |

Configured with AGENTWATCH_CONTAINMENT_POLICY: `off`, or JSON (inline, or a path to
a JSON file) that replaces the default rules and sets tenants' own:

    {"rules": [{"kind": "fanout", "scope": "trace"},
               {"kind": "cost_spike", "when": "over_budget", "scope": "tenant", "calls": "model"}],
     "tenants": {"acme": [{"kind": "loop", "scope": "agent", "min_severity": "critical"}],
                 "sandbox": []},
     "release_on_resolve": true}

A rule: `kind`, `scope` (trace | agent | tenant), `calls` (all | model, default all),
`min_severity` (default any), `when` (an evidence field that must be true). A
tenant's list replaces the fleet's rules for it ([] turns containment off for it).
One setting in the detector process, read at start: the platform team operates
it like the detector thresholds (AGENTWATCH_DETECT_*), with no table to migrate.

Decisions, once per anomaly and target:

- a halt's id is derived from (anomaly, scope, target), and the policy looks up
  what it decided for an anomaly before deciding again: a worker replaying a batch
  after a crash, or a restarted one, never halts twice, and a target a person
  released is not halted again for the same anomaly (a new anomaly may);
- an anomaly the detectors resolve (its condition has been quiet for the quiet
  period) releases the policy halts it made, if they are still the decision in
  force; a person's halt, or a halt a person re-issued, is released only by a
  person (`agentwatch release`). One a person resolves is not seen here: a person
  releases its halts (the dashboard's buttons, when they come, will do both);
- the anomaly's summary and evidence (`containment`) say what was halted, so its
  alert does too;
- containment never fails the detectors' batch: if the store refuses the halts,
  nothing is decided (counted in `errors`, logged) and the anomaly's next change
  decides again (a runaway's anomaly changes with every batch).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from clickhouse_connect.driver.client import Client

from agentwatch.detectors.anomalies import Anomaly
from agentwatch.schemas import halts
from agentwatch.schemas.halts import Decision
from agentwatch.schemas.vocabulary import (
    ANOMALY_KINDS,
    HALT_CALLS,
    HALT_SCOPES,
    POLICY_DECIDER,
    SEVERITIES,
    UNRESOLVED_STATUSES,
    severity_rank,
)

log = logging.getLogger(__name__)

ENV = "AGENTWATCH_CONTAINMENT_POLICY"
PLACEHOLDER_AGENT = "open:"  # fanout's stand-in for a root agent not arrived yet: no agent to halt


@dataclass(frozen=True)
class Rule:
    """Anomalies of `kind` (at least `min_severity`, with evidence `when` true) halt their `scope`."""

    kind: str
    scope: str
    calls: str = "all"
    min_severity: str = ""
    when: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ANOMALY_KINDS:
            raise ValueError(f"containment rule: unknown anomaly kind {self.kind!r} (one of {tuple(ANOMALY_KINDS)})")
        if self.scope not in HALT_SCOPES:
            raise ValueError(f"containment rule for {self.kind}: scope must be one of {HALT_SCOPES}")
        if self.calls not in HALT_CALLS:
            raise ValueError(f"containment rule for {self.kind}: calls must be one of {HALT_CALLS}")
        if self.min_severity and self.min_severity not in SEVERITIES:
            raise ValueError(f"containment rule for {self.kind}: min_severity must be one of {SEVERITIES}")

    def applies(self, a: Anomaly) -> bool:
        return (a.kind == self.kind and severity_rank(a.severity) >= severity_rank(self.min_severity)
                and (not self.when or bool((a.evidence or {}).get(self.when))))

    def target(self, a: Anomaly) -> str:
        if self.scope == "trace":
            return a.trace_id
        if self.scope == "agent":
            return "" if a.agent_id.startswith(PLACEHOLDER_AGENT) else a.agent_id
        return a.tenant

    def describe(self) -> str:
        what = {"trace": "its trace", "agent": "its agent", "tenant": "its tenant"}[self.scope]
        calls = "the model calls of " if self.calls == "model" else ""
        condition = "".join([f" at {self.min_severity} or above" if self.min_severity else "",
                             f" when {self.when}" if self.when else ""])
        return f"policy: {self.kind}{condition} halts {calls}{what}"


DEFAULT_RULES = (
    Rule("fanout", "trace"),
    Rule("loop", "trace"),
    Rule("cost_spike", "tenant", calls="model", when="over_budget"),
    Rule("cross_tenant", "agent"),
)


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...] = DEFAULT_RULES
    tenants: Mapping[str, tuple[Rule, ...]] = field(default_factory=dict)
    release_on_resolve: bool = True

    def rules_for(self, tenant: str) -> tuple[Rule, ...]:
        return self.tenants.get(tenant, self.rules)

    @classmethod
    def parse(cls, spec: object) -> Policy:
        """From the JSON document (parsed) described in the module docstring."""
        if not isinstance(spec, Mapping):
            raise ValueError(f"{ENV}: a JSON object expected")
        unknown = set(spec) - {"rules", "tenants", "release_on_resolve"}
        if unknown:
            raise ValueError(f"{ENV}: unknown keys {sorted(unknown)}")
        rules = _rules(spec["rules"]) if "rules" in spec else DEFAULT_RULES
        tenants = {str(t): _rules(r) for t, r in (spec.get("tenants") or {}).items()}
        return cls(rules, tenants, bool(spec.get("release_on_resolve", True)))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Policy:
        raw = (os.environ if environ is None else environ).get(ENV, "").strip()
        if not raw:
            return cls()
        if raw.lower() in ("off", "false", "none", "0"):
            return cls(rules=())
        text = raw if raw.startswith("{") else Path(raw).expanduser().read_text()
        try:
            return cls.parse(json.loads(text))
        except json.JSONDecodeError as error:
            raise ValueError(f"{ENV}: not JSON ({error})") from None


def _rules(items: object) -> tuple[Rule, ...]:
    if not isinstance(items, list):
        raise ValueError(f"{ENV}: rules must be a list")
    out = []
    for item in items:
        if not isinstance(item, Mapping):
            raise ValueError(f"{ENV}: a rule must be an object, not {item!r}")
        try:
            out.append(Rule(**item))
        except TypeError as error:
            raise ValueError(f"{ENV}: {error}") from None
    return tuple(out)


def policy_halt_id(anomaly_id: str, scope: str, target: str) -> str:
    """The same anomaly halting the same target always gives the same id (replays write nothing new)."""
    return hashlib.sha1(f"{anomaly_id}|{scope}|{target}|halt".encode()).hexdigest()[:32]


def describe(d: Decision) -> str:
    """'trace 4bf9…', 'the model calls of tenant acme', ..."""
    what = f"{d.scope} {d.target}"
    return f"the model calls of {what}" if d.calls == "model" else what


class Containment:
    """The policy at work in one detector worker: decides, writes `halts`, annotates the anomalies."""

    def __init__(self, policy: Policy | None = None, max_known: int = 50_000) -> None:
        self.policy = policy if policy is not None else Policy.from_env()
        self.max_known = max_known
        # anomaly id -> (scope, target) -> the latest decision naming that anomaly (from here or the store)
        self._known: dict[str, dict[tuple[str, str], Decision]] = {}
        self.decisions = 0  # written since start
        self.errors = 0  # batches whose decisions the store refused (decided again later)

    def apply(self, client: Client, changed: Iterable[Anomaly]) -> list[Decision]:
        """Decide for anomalies about to be written; record the decisions; returns them.

        Never fails the detectors' batch: if the store refuses (a read or the insert), nothing is decided
        now, the error is counted and logged, and the next change of the anomaly (a runaway's anomaly
        changes with every batch) decides again."""
        candidates = [a for a in changed if a.anomaly_id in self._known
                      or any(r.kind == a.kind for r in self.policy.rules_for(a.tenant))]
        if not candidates:
            return []
        undo: list[tuple[dict, tuple[str, str], Decision | None]] = []
        out: list[Decision] = []
        try:
            self._load(client, [a.anomaly_id for a in candidates if a.anomaly_id not in self._known])
            for a in candidates:
                mine = self._known[a.anomaly_id]
                if a.status in UNRESOLVED_STATUSES:
                    out += self._halts(a, mine, undo)
                elif a.status == "resolved" and self.policy.release_on_resolve:
                    out += self._releases(client, a, mine, undo)
            halts.record(client, out)
        except Exception as error:  # noqa: BLE001 - containment must not stop detection
            self.errors += 1
            log.warning("containment: cannot decide (%s: %s); deciding again at the anomalies' next change",
                        type(error).__name__, error)
            for mine, key, previous in reversed(undo):
                if previous is None:
                    mine.pop(key, None)
                else:
                    mine[key] = previous
            out = []
        self.decisions += len(out)
        for d in out:
            log.info("containment: %s %s %s of %s (%s, anomaly %s)", d.action, d.scope, d.target, d.tenant,
                     d.reason, d.anomaly_id)
        for a in candidates:
            _annotate(a, self._known.get(a.anomaly_id) or {})
            if a.status == "resolved":
                self._known.pop(a.anomaly_id, None)  # nothing more to decide; the store remembers
        if len(self._known) > self.max_known:
            for key in list(self._known)[: len(self._known) // 2]:
                del self._known[key]
        return out

    def _load(self, client: Client, anomaly_ids: list[str]) -> None:
        known = {aid: {} for aid in anomaly_ids}
        for d in halts.for_anomalies(client, anomaly_ids):  # oldest first: the latest per target stays
            known[d.anomaly_id][(d.scope, d.target)] = d
        self._known.update(known)

    def _halts(self, a: Anomaly, mine: dict[tuple[str, str], Decision], undo: list) -> list[Decision]:
        out = []
        for rule in self.policy.rules_for(a.tenant):
            if not rule.applies(a):
                continue
            target = rule.target(a)
            if not target or (rule.scope, target) in mine:
                continue
            d = halts.decision(a.tenant, rule.scope, target, "halt", calls=rule.calls, anomaly_id=a.anomaly_id,
                               kind=a.kind, severity=a.severity, agent_id=a.agent_id, trace_id=a.trace_id,
                               summary=a.summary, reason=rule.describe(), decided_by=POLICY_DECIDER,
                               halt_id=policy_halt_id(a.anomaly_id, rule.scope, target))
            undo.append((mine, (rule.scope, target), None))
            mine[(rule.scope, target)] = d
            out.append(d)
        return out

    def _releases(self, client: Client, a: Anomaly, mine: dict[tuple[str, str], Decision],
                  undo: list) -> list[Decision]:
        ours = [d for d in mine.values() if d.action == "halt" and d.decided_by == POLICY_DECIDER]
        if not ours:
            return []
        in_force = {(d.tenant, d.scope, d.target): d
                    for d in halts.current(client, targets=[(d.tenant, d.scope, d.target) for d in ours])}
        out = []
        for d in ours:
            now = in_force.get((d.tenant, d.scope, d.target))
            if now is None or now.halt_id != d.halt_id:
                continue  # a person (or another anomaly) decided since: theirs stands
            r = halts.released(d, reason=f"policy: anomaly {a.anomaly_id} resolved", decided_by=POLICY_DECIDER)
            undo.append((mine, (d.scope, d.target), d))
            mine[(d.scope, d.target)] = r
            out.append(r)
        return out


def _annotate(a: Anomaly, mine: Mapping[tuple[str, str], Decision]) -> None:
    """Say in the anomaly (its summary, and `containment` in its evidence) what its policy halted."""
    if not mine:
        return
    decided = sorted(mine.values(), key=lambda d: (d.scope, d.target))
    a.evidence["containment"] = [{"action": d.action, "scope": d.scope, "target": d.target, "calls": d.calls,
                                  "halt_id": d.halt_id, "decided_by": d.decided_by, "decided_at": d.decided_at,
                                  "reason": d.reason} for d in decided]
    halted = [describe(d) for d in decided if d.action == "halt"]
    lifted = [describe(d) for d in decided if d.action == "release"]
    if halted:
        a.summary += f" Halt issued (agents with the guard on stop at their next call): {', '.join(halted)}."
    if lifted:
        a.summary += f" Released: {', '.join(lifted)}."
