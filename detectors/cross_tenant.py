"""cross_tenant: an agent of one tenant using another tenant's credential or touching its resources.

No learning: every such use is an incident (the rule is the shared vocabulary's
`is_cross_tenant`, the same the dashboard counts with). One anomaly per (actor
tenant, credential), updated with every further use while it lasts, naming the
victims, agents, resources and traces.

    >>> from agentwatch.detectors.anomalies import AnomalyBook
    >>> from agentwatch.detectors.stream import CredentialRow
    >>> book, rule = AnomalyBook(), CrossTenant(None)
    >>> rule.observe(CredentialRow(0, 0, "t1", "s1", "acme", "bot-1", "use", "key-9", "globex", "db", "globex",
    ...                            "read"), None, book)
    >>> [(a.kind, a.tenant, a.subject) for a in book.open.values()]
    [('cross_tenant', 'acme', 'key-9')]
"""

from __future__ import annotations

from agentwatch.detectors.anomalies import Anomaly, AnomalyBook
from agentwatch.detectors.detector import Detector
from agentwatch.detectors.stream import MAX_LISTED, CredentialRow, utc
from agentwatch.detectors.traces import describe_agent
from agentwatch.schemas.vocabulary import CROSS_TENANT_RULE, is_cross_tenant


class CrossTenantCase:
    def __init__(self, tenant: str, credential: str) -> None:
        self.tenant = tenant
        self.credential = credential
        self.uses = 0
        self.credential_tenants: set[str] = set()
        self.victims: set[str] = set()
        self.agents: dict[str, int] = {}
        self.resources: dict[str, int] = {}
        self.traces: list[str] = []
        self.events: list[dict] = []


class CrossTenant(Detector):
    kind = "cross_tenant"
    stream = "credentials"

    def __init__(self, config) -> None:
        self.cases: dict[tuple[str, str], CrossTenantCase] = {}
        super().__init__(config)

    def observe(self, row: CredentialRow, trace, book: AnomalyBook) -> None:
        if row.event != "use" or not row.mine_actor:
            return
        tenant = row.tenant
        if not is_cross_tenant(tenant, row.credential_tenant, row.resource_tenant):
            return
        key = (tenant, row.credential)
        case = self.cases.get(key)
        if case is None:
            case = self.cases[key] = CrossTenantCase(tenant, row.credential)
        case.uses += 1
        if row.credential_tenant:
            case.credential_tenants.add(row.credential_tenant)
        for victim in (row.credential_tenant, row.resource_tenant):
            if victim not in ("", tenant):
                case.victims.add(victim)
        case.agents[row.agent_id] = case.agents.get(row.agent_id, 0) + 1
        case.resources[row.resource] = case.resources.get(row.resource, 0) + 1
        if row.trace not in case.traces and len(case.traces) < MAX_LISTED:
            case.traces.append(row.trace)
        if len(case.events) < MAX_LISTED:
            case.events.append({"at": utc(row.ts), "agent_id": row.agent_id, "trace_id": row.trace,
                                "span_id": row.span, "credential_tenant": row.credential_tenant,
                                "resource": row.resource, "resource_tenant": row.resource_tenant,
                                "action": row.action})
        book.observe(self.kind, tenant, row.credential, first_ns=row.ts, last_ns=row.ts, score=float(case.uses),
                     severity="critical", agent_id=next(iter(case.agents)), trace_id=case.traces[0], ctx=case)

    def tick(self, watermark_ns: int, book: AnomalyBook) -> None:
        for key in [k for k in self.cases if book.get(self.kind, k[0], k[1]) is None]:
            del self.cases[key]  # cases of resolved anomalies start afresh

    def render(self, a: Anomaly) -> tuple[str, dict]:
        case: CrossTenantCase = a.ctx
        victims = ", ".join(sorted(case.victims))
        owners = ", ".join(sorted(case.credential_tenants)) or "unknown"
        agents = sorted(case.agents.items(), key=lambda kv: -kv[1])
        first = describe_agent(agents[0][0])
        who = first if len(agents) == 1 else f"{len(agents)} agents (first {first})"
        resources = sorted(case.resources.items(), key=lambda kv: -kv[1])
        res = ", ".join(r for r, _ in resources[:3]) + (f" and {len(resources) - 3} more" if len(resources) > 3
                                                        else "")
        summary = (f"Cross-tenant access: {who} of tenant {case.tenant} used credential {case.credential} "
                   f"(tenant {owners}) {case.uses} time{'s' if case.uses != 1 else ''} on resources of {victims}: "
                   f"{res}.")
        evidence = {
            "credential_id": case.credential, "credential_tenants": sorted(case.credential_tenants),
            "actor_tenant": case.tenant, "victim_tenants": sorted(case.victims), "uses": case.uses,
            "agents": [{"agent_id": k, "uses": v} for k, v in agents[:MAX_LISTED]],
            "resources": [{"resource": k, "uses": v} for k, v in resources[:MAX_LISTED]],
            "trace_ids": case.traces, "events": case.events, "trace_id": a.trace_id, "rule": CROSS_TENANT_RULE,
        }
        return summary, evidence
