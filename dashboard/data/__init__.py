"""Every query the dashboard and `agentwatch replay` run: the one place that applies a Viewer's tenant scope.

Each function takes the client and the Viewer it runs for (dashboard/auth.py)
and reads only the rows of the tenants that Viewer is granted (every tenant
for an admin); a lookup by id of another tenant's trace, anomaly, span or
payload returns what a missing id returns. Writes (anomaly status, halts) check
the Viewer's role too, and are recorded in the audit log (data/actions.py).

Results come back as polars DataFrames (through Arrow: no per-row Python).
Times are UTC. Nothing here imports Streamlit, so the bench and the terminal
replay use the very same SQL the pages do.
"""

from agentwatch.dashboard.data.actions import (actor, audit_log, containment, halt, note, release,
                                               set_anomaly_status, targets_of)
from agentwatch.dashboard.data.anomaly_queries import (ANOMALY_COLUMNS, alert_deliveries, anomalies, anomaly,
                                                       anomaly_facets)
from agentwatch.dashboard.data.baseline import Baseline, anomaly_baseline, evidence_of
from agentwatch.dashboard.data.core import (END, START, NotAllowed, frame, granted, ns, rollup, tenant_scope,
                                            time_range, utc)
from agentwatch.dashboard.data.credential_queries import (credential_trail, credential_uses_per_minute,
                                                          credentials, cross_tenant_uses)
from agentwatch.dashboard.data.fleet import (GPU_METRICS, TOKEN_KINDS, Overview, activity, agents, costs,
                                             find_traces, gpu_metrics, overview, tenants)
from agentwatch.dashboard.data.trace_queries import (INLINE_PAYLOAD_BYTES, export_trace, search_trace,
                                                     span_attributes, span_payload, spans_attributes,
                                                     trace_anomalies, trace_credentials, trace_spans)

__all__ = [
    "ANOMALY_COLUMNS", "END", "GPU_METRICS", "INLINE_PAYLOAD_BYTES", "START", "TOKEN_KINDS", "Baseline", "NotAllowed",
    "Overview", "activity", "actor", "agents", "alert_deliveries", "anomalies", "anomaly", "anomaly_baseline",
    "anomaly_facets", "audit_log", "containment", "costs", "credential_trail", "credential_uses_per_minute",
    "credentials", "cross_tenant_uses", "evidence_of", "export_trace", "find_traces", "frame", "gpu_metrics",
    "granted", "halt", "note", "ns", "overview", "release", "rollup", "search_trace", "set_anomaly_status",
    "span_attributes", "span_payload", "spans_attributes", "targets_of", "tenant_scope", "tenants", "time_range",
    "trace_anomalies", "trace_credentials", "trace_spans", "utc",
]
