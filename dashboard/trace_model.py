"""A trace made ready to replay: its agent tree, a timeline and the ordered steps.

Built from what `data.trace_spans` / `trace_credentials` / `trace_anomalies`
return (typed columns, small attributes, payload names and sizes; never a
payload), so a 12,000-span trace is ready in a fraction of a second. Shared by
the Streamlit page and the terminal replay.

Steps, in time order: an agent starts / finishes, a prompt goes to a model and
its answer (reasoning, text, tool calls) comes back, a tool is called and
returns, a credential is granted / used / revoked, an anomaly fires. Each step
carries the cost and tokens accumulated up to and including it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import polars as pl

from agentwatch.dashboard import data
from agentwatch.dashboard.auth import Viewer
from agentwatch.schemas.vocabulary import INVOKE_AGENT_OPERATION, MODEL_OPERATIONS, TOOL_OPERATION

# Which payloads belong to the start of a span and which to its end.
START_KEYS = ("gen_ai.system_instructions", "gen_ai.input.messages", "gen_ai.tool.call.arguments",
              "agentwatch.input", "input.value", "llm.input_messages")
END_KEYS = ("gen_ai.output.messages", "gen_ai.tool.call.result", "agentwatch.output", "output.value",
            "llm.output_messages")

STEP_KINDS = {
    "agent_start": "agent starts",
    "prompt": "prompt to model",
    "tool_call": "tool call",
    "credential": "credential",
    "tool_result": "tool result",
    "answer": "model answer",
    "span_start": "span starts",
    "span_end": "span ends",
    "agent_end": "agent finishes",
    "anomaly": "anomaly",
}


def attr_dict(value) -> dict[str, str]:
    """A Map column value as a dict (Arrow maps arrive as lists of key/value structs)."""
    if not value:
        return {}
    if isinstance(value, dict):
        return dict(value)
    return {item["key"]: item["value"] for item in value}


def human_bytes(n: float | int | None) -> str:
    n = float(n or 0)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class Trace:
    trace_id: str
    spans: pl.DataFrame
    credentials: pl.DataFrame
    anomalies: pl.DataFrame
    steps: pl.DataFrame = field(init=False)
    agents: pl.DataFrame = field(init=False)

    def __post_init__(self) -> None:
        self.spans = self._prepare_spans(self.spans)
        self.agents = self._agent_tree()
        self.steps = self._build_steps()

    # --- summary ---------------------------------------------------------------------
    @property
    def empty(self) -> bool:
        return self.spans.is_empty()

    @property
    def start_ns(self) -> int:
        return int(self.spans["StartNs"].min())

    @property
    def end_ns(self) -> int:
        return int(self.spans["EndNs"].max())

    def summary(self) -> dict:
        s = self.spans
        root = s.filter(pl.col("ParentSpanId") == "")
        root_row = root.row(0, named=True) if len(root) else s.row(0, named=True)
        return {
            "trace_id": self.trace_id,
            "tenant": root_row["Tenant"],
            "root": root_row["SpanName"],
            "root_agent": root_row["AgentId"],
            "start": data.utc(self.start_ns),
            "end": data.utc(self.end_ns),
            "duration_s": (self.end_ns - self.start_ns) / 1e9,
            "spans": len(s),
            "agents": s.filter(pl.col("AgentId") != "")["AgentId"].n_unique(),
            "model_calls": int(s["Operation"].is_in(list(MODEL_OPERATIONS)).sum()),
            "tool_calls": int((s["Operation"] == TOOL_OPERATION).sum()),
            "errors": int((s["StatusCode"] == "Error").sum()),
            "cost_usd": float(s["CostUSD"].fill_null(0).sum()),
            "input_tokens": int(s["InputTokens"].sum()),
            "output_tokens": int(s["OutputTokens"].sum()),
            "reasoning_tokens": int(s["ReasoningTokens"].sum()),
            "payload_bytes": int(s["PayloadBytes"].sum()),
            "credential_uses": int((self.credentials["Event"] == "use").sum()) if len(self.credentials) else 0,
            "cross_tenant_uses": int(self.credentials["CrossTenant"].sum()) if len(self.credentials) else 0,
            "anomalies": len(self.anomalies),
        }

    def span(self, span_id: str) -> dict | None:
        found = self.spans.filter(pl.col("SpanId") == span_id)
        if found.is_empty():
            return None
        row = found.row(0, named=True)
        row["TraceId"] = self.trace_id
        return row

    def payloads(self, span_id: str) -> dict[str, int]:
        """Payload name -> size in bytes (values over 256 bytes; smaller ones are in Attributes)."""
        row = self.span(span_id)
        if not row:
            return {}
        return dict(zip(row["PayloadKeys"] or [], row["PayloadSizes"] or []))

    # --- building ---------------------------------------------------------------------
    @staticmethod
    def _prepare_spans(spans: pl.DataFrame) -> pl.DataFrame:
        if spans.is_empty():
            return spans.with_columns(pl.lit(0, pl.Int64).alias("EndNs"), pl.lit(0).alias("Depth"))
        spans = spans.with_columns(
            (pl.col("StartNs") + pl.col("Duration").cast(pl.Int64)).alias("EndNs"),
            pl.col("PayloadKeys").fill_null([]), pl.col("PayloadSizes").fill_null([]),
            pl.col("EventNs").fill_null([]), pl.col("EventNames").fill_null([]),
            pl.col("StatusMessage").fill_null(""),
        )
        # depth in the span tree (iterative parent lookup, vectorised per level)
        parent = dict(zip(spans["SpanId"].to_list(), spans["ParentSpanId"].to_list()))
        depth: dict[str, int] = {}
        for span_id in parent:
            chain = []
            cur = span_id
            while cur in parent and cur not in depth and len(chain) < 10_000:
                chain.append(cur)
                cur = parent[cur]
            base = depth.get(cur, -1) if cur in parent else -1
            for k, sid in enumerate(reversed(chain)):
                depth[sid] = base + 1 + k
        return spans.with_columns(pl.Series("Depth", [depth[s] for s in spans["SpanId"].to_list()]))

    def _agent_tree(self) -> pl.DataFrame:
        """One row per agent invocation, with its parent agent invocation and totals of what it did."""
        s = self.spans
        if s.is_empty():
            return pl.DataFrame()
        agent_spans = s.filter(pl.col("Operation") == INVOKE_AGENT_OPERATION)
        agent_of_span = {}
        parent = dict(zip(s["SpanId"].to_list(), s["ParentSpanId"].to_list()))
        is_agent = set(agent_spans["SpanId"].to_list())

        def owner(span_id: str) -> str:
            """The nearest invoke_agent span at or above span_id ('' if none)."""
            path = []
            cur = span_id
            while cur and cur not in agent_of_span:
                if cur in is_agent:
                    break
                path.append(cur)
                cur = parent.get(cur, "")
            found = agent_of_span.get(cur, cur if cur in is_agent else "")
            for p in path:
                agent_of_span[p] = found
            return found

        owners = [owner(x) for x in s["SpanId"].to_list()]
        s = s.with_columns(pl.Series("Invocation", owners))
        parent_agent = {sid: owner(parent.get(sid, "")) for sid in is_agent}
        totals = (s.filter(pl.col("Operation") != INVOKE_AGENT_OPERATION).group_by("Invocation").agg(
            pl.len().alias("Spans"),
            pl.col("Operation").is_in(list(MODEL_OPERATIONS)).sum().alias("ModelCalls"),
            (pl.col("Operation") == TOOL_OPERATION).sum().alias("ToolCalls"),
            pl.col("CostUSD").fill_null(0).sum().alias("CostUSD"),
            (pl.col("InputTokens") + pl.col("OutputTokens")).sum().alias("Tokens"),
            pl.col("ReasoningTokens").sum().alias("ReasoningTokens"),
        ))
        creds = (self.credentials.group_by("SpanId").agg(pl.len().alias("n"), pl.col("CrossTenant").sum().alias("x"))
                 if len(self.credentials) else None)
        rows = []
        children: dict[str, list[str]] = {}
        for sid in agent_spans["SpanId"].to_list():
            children.setdefault(parent_agent[sid], []).append(sid)
        info = {r["SpanId"]: r for r in agent_spans.iter_rows(named=True)}
        tot = {r["Invocation"]: r for r in totals.iter_rows(named=True)}
        cred_by_inv: dict[str, tuple[int, int]] = {}
        if creds is not None:
            for sid, n, x in creds.iter_rows():
                inv = sid if sid in is_agent else agent_of_span.get(sid, "")
                a, b = cred_by_inv.get(inv, (0, 0))
                cred_by_inv[inv] = (a + n, b + (x or 0))

        def walk(sid: str, level: int) -> None:
            r = info[sid]
            t = tot.get(sid, {})
            c = cred_by_inv.get(sid, (0, 0))
            rows.append({
                "Agent": "    " * level + ("└─ " if level else "") + (r["AgentName"] or r["SpanName"]),
                "AgentId": r["AgentId"], "Level": level, "SpanId": sid, "ParentAgentSpanId": parent_agent[sid],
                "StartNs": r["StartNs"], "EndNs": r["EndNs"], "DurationS": r["Duration"] / 1e9,
                "Spans": t.get("Spans", 0), "ModelCalls": t.get("ModelCalls", 0), "ToolCalls": t.get("ToolCalls", 0),
                "Tokens": t.get("Tokens", 0), "ReasoningTokens": t.get("ReasoningTokens", 0),
                "CostUSD": t.get("CostUSD", 0.0), "CredentialEvents": c[0], "CrossTenantUses": c[1],
                "Status": r["StatusCode"],
            })
            for child in sorted(children.get(sid, []), key=lambda x: info[x]["StartNs"]):
                walk(child, level + 1)

        for root in sorted(children.get("", []), key=lambda x: info[x]["StartNs"]):
            walk(root, 0)
        return pl.DataFrame(rows) if rows else pl.DataFrame()

    def _build_steps(self) -> pl.DataFrame:
        s = self.spans
        if s.is_empty():
            return pl.DataFrame()
        op = pl.col("Operation")
        start_kind = (pl.when(op == INVOKE_AGENT_OPERATION).then(pl.lit("agent_start"))
                      .when(op.is_in(list(MODEL_OPERATIONS))).then(pl.lit("prompt"))
                      .when(op == TOOL_OPERATION).then(pl.lit("tool_call"))
                      .otherwise(pl.lit("span_start")))
        end_kind = (pl.when(op == INVOKE_AGENT_OPERATION).then(pl.lit("agent_end"))
                    .when(op.is_in(list(MODEL_OPERATIONS))).then(pl.lit("answer"))
                    .when(op == TOOL_OPERATION).then(pl.lit("tool_result"))
                    .otherwise(pl.lit("span_end")))
        base = ["SpanId", "AgentId", "AgentName", "Operation", "SpanName", "Depth"]
        tool_args = pl.col("Attributes").map.get("gen_ai.tool.call.arguments").fill_null("")
        starts = s.select(*base, pl.col("StartNs").alias("TimeNs"), start_kind.alias("Kind"),
                          pl.lit(0.0).alias("Cost"), pl.lit(0, pl.Int64).alias("Tokens"),
                          pl.lit(0, pl.Int64).alias("Reasoning"), pl.col("ToolName"), pl.col("Model"),
                          tool_args.alias("Detail"), pl.lit(False).alias("Flag"), pl.lit("").alias("Ref"))
        status = pl.when(pl.col("StatusCode") == "Error").then(
            pl.concat_str(pl.lit("ERROR "), pl.col("StatusMessage"))).otherwise(pl.lit(""))
        ends = s.select(*base, pl.col("EndNs").alias("TimeNs"), end_kind.alias("Kind"),
                        pl.col("CostUSD").fill_null(0.0).alias("Cost"),
                        (pl.col("InputTokens") + pl.col("OutputTokens")).cast(pl.Int64).alias("Tokens"),
                        pl.col("ReasoningTokens").cast(pl.Int64).alias("Reasoning"), pl.col("ToolName"),
                        pl.col("Model"), status.alias("Detail"), (pl.col("StatusCode") == "Error").alias("Flag"),
                        pl.lit("").alias("Ref"))
        parts = [starts, ends]
        if len(self.credentials):
            names = dict(zip(s["SpanId"].to_list(), s["AgentName"].to_list()))
            c = self.credentials
            parts.append(pl.DataFrame({
                "SpanId": c["SpanId"], "AgentId": c["AgentId"],
                "AgentName": [names.get(x, "") for x in c["SpanId"].to_list()],
                "Operation": pl.Series([""] * len(c), dtype=pl.Utf8),
                "SpanName": pl.Series([""] * len(c), dtype=pl.Utf8),
                "Depth": pl.Series([0] * len(c), dtype=s["Depth"].dtype),
                "TimeNs": c["TimeNs"].cast(pl.Int64), "Kind": pl.Series(["credential"] * len(c)),
                "Cost": pl.Series([0.0] * len(c)), "Tokens": pl.Series([0] * len(c), dtype=pl.Int64),
                "Reasoning": pl.Series([0] * len(c), dtype=pl.Int64),
                "ToolName": pl.Series([""] * len(c), dtype=pl.Utf8), "Model": pl.Series([""] * len(c), dtype=pl.Utf8),
                "Detail": [f"{e} {cid} ({ct}) " + (f"on {r} ({rt}) {a}".strip() if r else f"scope {sc}")
                           for e, cid, ct, r, rt, a, sc in zip(c["Event"], c["CredentialId"], c["CredentialTenant"],
                                                               c["Resource"], c["ResourceTenant"], c["Action"],
                                                               c["Scope"])],
                "Flag": c["CrossTenant"].cast(pl.Boolean),
                "Ref": c["CredentialId"],
            }))
        if len(self.anomalies):
            a = self.anomalies
            n = len(a)
            parts.append(pl.DataFrame({
                "SpanId": pl.Series([""] * n, dtype=pl.Utf8), "AgentId": a["AgentId"],
                "AgentName": pl.Series([""] * n, dtype=pl.Utf8), "Operation": pl.Series([""] * n, dtype=pl.Utf8),
                "SpanName": pl.Series([""] * n, dtype=pl.Utf8),
                "Depth": pl.Series([0] * n, dtype=s["Depth"].dtype),
                "TimeNs": a["FirstSeenNs"].cast(pl.Int64), "Kind": pl.Series(["anomaly"] * n),
                "Cost": pl.Series([0.0] * n), "Tokens": pl.Series([0] * n, dtype=pl.Int64),
                "Reasoning": pl.Series([0] * n, dtype=pl.Int64), "ToolName": pl.Series([""] * n, dtype=pl.Utf8),
                "Model": pl.Series([""] * n, dtype=pl.Utf8),
                "Detail": [f"{k} ({sev}): {summ}" for k, sev, summ in zip(a["Kind"], a["Severity"], a["Summary"])],
                "Flag": pl.Series([True] * n), "Ref": a["AnomalyId"],
            }))
        steps = pl.concat([p.with_columns(pl.col("Depth").cast(pl.Int64)) for p in parts], how="vertical_relaxed")
        if len(self.credentials):
            depth = dict(zip(s["SpanId"].to_list(), s["Depth"].to_list()))
            steps = steps.with_columns(
                pl.when(pl.col("Kind") == "credential")
                .then(pl.col("SpanId").replace_strict(depth, default=0, return_dtype=pl.Int64))
                .otherwise(pl.col("Depth")).alias("Depth"))
        # At equal times: an anomaly first, then the spans that end then (inside out: a tool's result before
        # the next prompt that reads it), then the spans that start (outside in, a span's credential grants
        # and uses right after its own start).
        kind = pl.col("Kind")
        zero = pl.col("SpanId").is_in(s.filter(pl.col("Duration") == 0)["SpanId"].implode())
        phase = (pl.when(kind == "anomaly").then(0)
                 .when(kind.is_in(["agent_start", "prompt", "tool_call", "span_start"])).then(10_000 + 2 * pl.col("Depth"))
                 .when(kind == "credential").then(10_000 + 2 * pl.col("Depth") + 1)
                 .when(zero).then(100_000 - pl.col("Depth"))  # a zero-length span ends right after it starts
                 .otherwise(1_000 - pl.col("Depth")))  # what ends at an instant, before what starts at it
        steps = steps.with_columns(phase.alias("_phase")).sort("TimeNs", "_phase", maintain_order=True).drop("_phase")
        steps = steps.with_columns(
            pl.int_range(1, pl.len() + 1).alias("Step"),
            pl.col("Cost").cum_sum().alias("CostSoFar"),
            pl.col("Tokens").cum_sum().alias("TokensSoFar"),
            pl.col("Reasoning").cum_sum().alias("ReasoningSoFar"),
            (pl.col("Kind") == "answer").cum_sum().alias("ModelCallsSoFar"),
            ((pl.col("Kind") == "credential") & pl.col("Detail").str.starts_with("use")).cum_sum()
            .alias("CredentialUsesSoFar"),
            (pl.col("Kind") == "anomaly").cum_sum().alias("AnomaliesSoFar"),
            ((pl.col("TimeNs") - self.start_ns) / 1e9).alias("Offset"),
        )
        return steps  # titles are made for the steps shown (with_titles): a 24,000-step trace opens faster

    @staticmethod
    def _titles(steps: pl.DataFrame) -> pl.Series:
        out = []
        for kind, agent, model, tool, detail, tokens, reasoning, cost, span_name in zip(
                steps["Kind"], steps["AgentId"], steps["Model"], steps["ToolName"], steps["Detail"], steps["Tokens"],
                steps["Reasoning"], steps["Cost"], steps["SpanName"]):
            who = agent or "?"
            if kind == "agent_start":
                title = f"{who} starts"
            elif kind == "agent_end":
                title = f"{who} finishes" + (f" — {detail}" if detail else "")
            elif kind == "prompt":
                title = f"{who} → {model or span_name}: prompt"
            elif kind == "answer":
                title = (f"{model or span_name} answers {who}: {tokens:,} tokens"
                         + (f" ({reasoning:,} reasoning)" if reasoning else "") + (f", ${cost:.4f}" if cost else "")
                         + (f" — {detail}" if detail else ""))
            elif kind == "tool_call":
                title = f"{who} calls {tool or span_name}" + (f" {_short(detail, 100)}" if detail else "")
            elif kind == "tool_result":
                title = f"{tool or span_name} returns to {who}" + (f" — {detail}" if detail else "")
            elif kind == "credential":
                title = f"{who}: credential {detail}"
            elif kind == "anomaly":
                title = f"ANOMALY {detail}"
            else:
                title = f"{span_name} {'starts' if kind == 'span_start' else 'ends'}" + (f" — {detail}" if detail else "")
            out.append(_short(title, 200))
        return pl.Series(out, dtype=pl.Utf8)

    # --- per step ---------------------------------------------------------------------
    def with_titles(self, steps: pl.DataFrame) -> pl.DataFrame:
        """These steps with a one-line Title each."""
        return steps.with_columns(self._titles(steps).alias("Title"))

    def step(self, number: int) -> dict:
        number = max(1, min(int(number), len(self.steps)))
        return self.with_titles(self.steps.slice(number - 1, 1)).row(0, named=True)

    def step_payloads(self, step: dict) -> list[tuple[str, int]]:
        """(payload name, size) that belong to this step: inputs at a start, outputs at an end."""
        if not step["SpanId"] or step["Kind"] in ("credential", "anomaly"):
            return []
        row = self.span(step["SpanId"])
        attrs = attr_dict(row.get("Attributes"))
        sizes = {k: len(v.encode()) for k, v in attrs.items()}
        sizes.update(self.payloads(step["SpanId"]))
        starting = step["Kind"] in ("agent_start", "prompt", "tool_call", "span_start")
        wanted = START_KEYS if starting else END_KEYS
        chosen = [(k, sizes[k]) for k in wanted if k in sizes]
        if not chosen and step["Kind"] in ("span_start", "span_end"):
            chosen = [(k, v) for k, v in self.payloads(step["SpanId"]).items()]
        return chosen

    def next_step(self, current: int, kind: str | None = None, flagged: bool = False, direction: int = 1) -> int | None:
        s = self.steps
        if direction > 0:
            cand = s.filter(pl.col("Step") > current)
        else:
            cand = s.filter(pl.col("Step") < current)
        if kind:
            cand = cand.filter(pl.col("Kind") == kind)
        if flagged:
            cand = cand.filter(pl.col("Flag"))
        if cand.is_empty():
            return None
        return int(cand["Step"][0] if direction > 0 else cand["Step"][-1])

    def step_of_span(self, span_id: str, end: bool = False) -> int | None:
        found = self.steps.filter((pl.col("SpanId") == span_id)
                                  & pl.col("Kind").is_in(["agent_end", "answer", "tool_result", "span_end"]
                                                         if end else ["agent_start", "prompt", "tool_call",
                                                                      "span_start"]))
        return int(found["Step"][0]) if len(found) else None

    # --- timeline ---------------------------------------------------------------------
    def timeline(self, max_bars: int = 3000, bins: int = 240) -> tuple[pl.DataFrame, bool]:
        """Bars for the timeline chart: one per span when few, else agent bars plus binned activity.

        Returns (frame with Row, Start, End, Operation, Label, Count, SpanId), binned?"""
        s = self.spans
        row_label = pl.concat_str(pl.col("AgentId").replace("", "(no agent)"))
        cols = [row_label.alias("Row"), pl.col("StartNs"), pl.col("EndNs"), pl.col("Operation"),
                pl.col("SpanName").alias("Label"), pl.col("SpanId")]
        if len(s) <= max_bars:
            return s.select(*cols, pl.lit(1).alias("Count")), False
        agents = s.filter(pl.col("Operation") == INVOKE_AGENT_OPERATION).select(*cols, pl.lit(1).alias("Count"))
        rest = s.filter(pl.col("Operation") != INVOKE_AGENT_OPERATION)
        width = max(1, (self.end_ns - self.start_ns) // bins)
        binned = (rest.with_columns(((pl.col("StartNs") - self.start_ns) // width).alias("Bin"), row_label.alias("Row"))
                  .group_by("Row", "Operation", "Bin")
                  .agg(pl.len().alias("Count"), pl.col("SpanName").first().alias("Label"))
                  .with_columns((pl.col("Bin") * width + self.start_ns).alias("StartNs"),
                                ((pl.col("Bin") + 1) * width + self.start_ns).alias("EndNs"),
                                pl.lit("").alias("SpanId"))
                  .select("Row", "StartNs", "EndNs", "Operation", "Label", "SpanId", "Count"))
        return pl.concat([agents.select(binned.columns), binned], how="vertical_relaxed"), True


def load(client, viewer: Viewer, trace_id: str) -> Trace | None:
    """Everything to replay a trace, without its payloads; None if no span of it the viewer may see is stored."""
    trace_id = trace_id.strip().lower()
    spans = data.trace_spans(client, viewer, trace_id)
    if spans.is_empty():
        return None
    credentials = data.trace_credentials(client, viewer, trace_id)
    start, end = int(spans["StartNs"].min()), int((spans["StartNs"] + spans["Duration"].cast(pl.Int64)).max())
    agent_ids = [a for a in spans["AgentId"].unique().to_list() if a]
    anomalies = data.trace_anomalies(client, viewer, trace_id, agent_ids, start, end)
    return Trace(trace_id, spans, credentials, anomalies)


# --- rendering payloads as text ------------------------------------------------------------

def parse_messages(value: str):
    """GenAI messages / system instructions JSON -> list of (role, part type, text); None if not that shape."""
    try:
        parsed = json.loads(value)
    except (ValueError, TypeError):
        return None
    out = []
    if isinstance(parsed, list) and parsed and all(isinstance(m, dict) and "parts" in m for m in parsed):
        for m in parsed:
            role = str(m.get("role", ""))
            for part in m.get("parts") or []:
                out.append((role, *_part_text(part)))
            if m.get("finish_reason"):
                out.append((role, "finish_reason", str(m["finish_reason"])))
        return out
    if isinstance(parsed, list) and parsed and all(isinstance(p, dict) and "type" in p for p in parsed):
        return [("system", *_part_text(p)) for p in parsed]
    return None


def _part_text(part) -> tuple[str, str]:
    if not isinstance(part, dict):
        return "text", str(part)
    kind = str(part.get("type", "text"))
    if kind in ("text", "reasoning", "thinking"):
        return kind, str(part.get("content", ""))
    if kind == "tool_call":
        args = part.get("arguments")
        args = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        return kind, f"{part.get('name', '')}({args})  [id {part.get('id', '')}]"
    if kind == "tool_call_response":
        response = part.get("response", part.get("result", ""))
        response = response if isinstance(response, str) else json.dumps(response, ensure_ascii=False)
        return kind, f"[id {part.get('id', '')}] {response}"
    content = part.get("content", part)
    return kind, content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
