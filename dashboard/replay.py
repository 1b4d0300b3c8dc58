"""`agentwatch replay TRACE_ID`: the dashboard's step-by-step replay, printed in a terminal (on call over SSH).

It runs on the store's machine with the store's own connection, so it reads as
the local admin (every tenant), through the same scoped queries as the pages.

Same steps as the Trace replay page (trace_model): the agent tree first, then
every event in order: prompts, reasoning, tool calls and results, credential
uses (cross-tenant ones flagged), costs accumulating, anomalies where they
fired. Payloads are printed whole, as text (GenAI messages part by part),
unless show_payloads is False, when only their names and sizes are.
"""

from __future__ import annotations

import sys
from typing import TextIO

import polars as pl

from agentwatch.dashboard import data, trace_model
from agentwatch.dashboard.auth import LOCAL_ADMIN
from agentwatch.dashboard.trace_model import human_bytes

TAGS = {"agent_start": "AGENT", "agent_end": "AGENT END", "prompt": "PROMPT", "answer": "ANSWER",
        "tool_call": "TOOL CALL", "tool_result": "TOOL RESULT", "credential": "CREDENTIAL", "anomaly": "ANOMALY",
        "span_start": "SPAN", "span_end": "SPAN END"}


def _payloads_of(client, trace: trace_model.Trace, span_ids: list[str]) -> dict[str, dict[str, str]]:
    """Every attribute of these spans, whole, read in batches (span id -> name -> value)."""
    out: dict[str, dict[str, str]] = {}
    for i in range(0, len(span_ids), 500):
        out.update(data.spans_attributes(client, LOCAL_ADMIN, trace.trace_id, span_ids[i:i + 500], trace.start_ns,
                                         trace.end_ns + 1))
    return out


def _indent(text: str, prefix: str = "      ") -> str:
    return "\n".join(prefix + line for line in text.splitlines()) if text else prefix + "(empty)"


def _print_payload(out: TextIO, name: str, value: str) -> None:
    out.write(f"    {name} ({human_bytes(len(value.encode()))}):\n")
    messages = trace_model.parse_messages(value)
    if messages is None:
        out.write(_indent(value) + "\n")
        return
    for role, kind, text in messages:
        out.write(f"      [{role} · {kind}]\n")
        out.write(_indent(text, "        ") + "\n")


def replay(client, trace_id: str, out: TextIO = sys.stdout, show_payloads: bool = True) -> int:
    """Print the trace step by step. 0: printed; 1: no such trace stored."""
    trace = trace_model.load(client, LOCAL_ADMIN, trace_id)
    if trace is None:
        out.write(f"agentwatch replay: no spans stored for trace {trace_id.strip().lower()}\n")
        return 1
    s = trace.summary()
    out.write(f"trace {s['trace_id']}  tenant {s['tenant']}  root {s['root']}\n")
    out.write(f"  {s['start']:%Y-%m-%d %H:%M:%S.%f} -> {s['end']:%H:%M:%S.%f} UTC ({s['duration_s']:,.3f} s), "
              f"{s['spans']:,} spans, {s['agents']} agents, {s['model_calls']:,} model calls, "
              f"{s['tool_calls']:,} tool calls, {s['errors']} errors\n")
    out.write(f"  cost ${s['cost_usd']:,.4f}, {s['input_tokens']:,} input / {s['output_tokens']:,} output tokens "
              f"({s['reasoning_tokens']:,} reasoning), payloads {human_bytes(s['payload_bytes'])}, "
              f"{s['credential_uses']} credential uses ({s['cross_tenant_uses']} CROSS-TENANT)\n")
    for a in trace.anomalies.iter_rows(named=True):
        out.write(f"  ANOMALY {a['Kind']} ({a['Severity']}, {a['Status']}) id {a['AnomalyId']}: {a['Summary']}\n")
    if not trace.agents.is_empty():
        out.write("\nagents:\n")
        for r in trace.agents.iter_rows(named=True):
            out.write(f"  {r['Agent']} [{r['AgentId']}]  {r['DurationS']:,.2f} s, {r['ModelCalls']} model calls, "
                      f"{r['ToolCalls']} tool calls, ${r['CostUSD']:,.4f}"
                      + (f", {r['CrossTenantUses']} CROSS-TENANT credential uses" if r["CrossTenantUses"] else "")
                      + "\n")
    out.write("\nsteps:\n")
    n = len(trace.steps)
    steps = trace.with_titles(trace.steps)
    # Payloads are read in time order, 500 spans at a time, and dropped after a span's last step:
    # a 200 MB trace never sits in memory whole.
    with_span = steps.filter(pl.col("SpanId") != "")
    order = with_span["SpanId"].unique(maintain_order=True).to_list() if show_payloads else []
    position = {span_id: i for i, span_id in enumerate(order)}
    last_step = dict(with_span.group_by("SpanId").agg(pl.col("Step").max()).iter_rows())
    loaded: dict[str, dict[str, str]] = {}
    loaded_upto = 0
    for step in steps.iter_rows(named=True):
        tag = TAGS.get(step["Kind"], step["Kind"]).ljust(11)
        flag = "  <<< CROSS-TENANT" if step["Kind"] == "credential" and step["Flag"] else \
            "  <<< ERROR" if step["Flag"] and step["Kind"] not in ("anomaly", "credential") else ""
        out.write(f"[{step['Step']}/{n}] +{step['Offset']:,.3f}s {tag} {step['Title']}{flag}\n")
        if step["Kind"] in ("answer", "anomaly") or step["Step"] == n:
            out.write(f"    cost so far ${step['CostSoFar']:,.4f}, tokens {step['TokensSoFar']:,} "
                      f"(reasoning {step['ReasoningSoFar']:,})\n")
        if step["Kind"] == "anomaly":
            a = trace.anomalies.filter(pl.col("AnomalyId") == step["Ref"])
            if len(a):
                out.write(_indent(str(a["Evidence"][0]), "    evidence ") + "\n")
            continue
        names = trace.step_payloads(step)
        span_id = step["SpanId"]
        if names and not show_payloads:
            out.write("    " + ", ".join(f"{k} ({human_bytes(v)})" for k, v in names) + "\n")
        elif names:
            if span_id not in loaded and position[span_id] >= loaded_upto:
                chunk = order[position[span_id]:position[span_id] + 500]
                loaded.update(_payloads_of(client, trace, chunk))
                loaded_upto = position[span_id] + len(chunk)
            values = loaded.get(span_id, {})
            for name, _ in names:
                if name in values:
                    _print_payload(out, name, values[name])
        if span_id and last_step.get(span_id) == step["Step"]:
            loaded.pop(span_id, None)
    out.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    """python -m agentwatch.dashboard.replay TRACE_ID [--no-payloads] (store from AGENTWATCH_* variables)."""
    import argparse

    from agentwatch.schemas import store

    parser = argparse.ArgumentParser(prog="agentwatch replay", description=__doc__.splitlines()[0])
    parser.add_argument("trace_id")
    parser.add_argument("--no-payloads", dest="show_payloads", action="store_false",
                        help="print payload names and sizes, not their contents")
    args = parser.parse_args(argv)
    client = store.connect()
    try:
        return replay(client, args.trace_id, show_payloads=args.show_payloads)
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
