"""Altair charts of the dashboard. Times are shown in UTC, whatever the browser's time zone."""

from __future__ import annotations

from datetime import datetime, timedelta

import altair as alt
import polars as pl

from agentwatch.schemas.vocabulary import INVOKE_AGENT_OPERATION, MODEL_OPERATIONS, SEVERITIES, TOOL_OPERATION

_SEVERITY_COLOR = {"critical": "#d62728", "warning": "#ff7f0e", "info": "#1f77b4"}
SEVERITY_COLORS = alt.Scale(domain=list(reversed(SEVERITIES)),  # most severe first
                            range=[_SEVERITY_COLOR.get(s, "#bab0ac") for s in reversed(SEVERITIES)])
# One colour per operation of the vocabulary (every model operation, not only chat), then the rest.
_OPERATION_COLOR = {INVOKE_AGENT_OPERATION: "#4c78a8", "chat": "#f58518", "text_completion": "#72b7b2",
                    "generate_content": "#eeca3b", "embeddings": "#b279a2", TOOL_OPERATION: "#54a24b",
                    "retrieval": "#9d755d"}
TIMELINE_OPERATIONS = [INVOKE_AGENT_OPERATION, *MODEL_OPERATIONS, TOOL_OPERATION, "retrieval"]
OPERATION_COLORS = alt.Scale(domain=[*TIMELINE_OPERATIONS, "other"],
                             range=[*(_OPERATION_COLOR.get(op, "#ff9da6") for op in TIMELINE_OPERATIONS), "#bab0ac"])


def vega(df: pl.DataFrame) -> pl.DataFrame:
    """Datetimes as ISO 8601 strings in UTC with millisecond precision, which Vega parses as UTC instants."""
    casts = [pl.col(name).dt.convert_time_zone("UTC").dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").alias(name)
             if getattr(dtype, "time_zone", None) else
             pl.col(name).dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").alias(name)
             for name, dtype in df.schema.items() if isinstance(dtype, pl.Datetime)]
    casts += [pl.col(name).cast(pl.Utf8).alias(name) for name, dtype in df.schema.items() if dtype == pl.Date]
    return df.with_columns(casts) if casts else df


def time_x(field: str = "Time", title: str = "time (UTC)", domain: tuple[datetime, datetime] | None = None,
           fmt: str | None = None) -> alt.X:
    scale = alt.Scale(type="utc", domain=[d.isoformat() for d in domain]) if domain else alt.Scale(type="utc")
    if fmt is None:
        fmt = "%H:%M" if not domain or domain[1] - domain[0] <= timedelta(days=1) else "%b %d %H:%M"
    axis = alt.Axis(title=title, format=fmt, labelOverlap=True) if fmt else alt.Axis(title=title, labelOverlap=True)
    return alt.X(f"{field}:T", scale=scale, axis=axis)


def _tooltip_time(field: str, title: str | None = None) -> alt.Tooltip:
    return alt.Tooltip(f"utcyearmonthdatehoursminutesseconds({field}):T", title=title or f"{field} (UTC)")


def spans_per_second(df: pl.DataFrame, domain=None) -> alt.Chart:
    return alt.Chart(vega(df)).mark_area(opacity=0.6, line=True, interpolate="step-after").encode(
        x=time_x("Minute", domain=domain), y=alt.Y("SpansPerSecond:Q", title="spans/s"),
        tooltip=[_tooltip_time("Minute"), alt.Tooltip("SpansPerSecond:Q", format=",.2f", title="spans/s")],
    ).properties(height=220, title="Spans per second")


def cost_by_tenant(df: pl.DataFrame, per: str = "minute", domain=None) -> alt.Chart:
    return alt.Chart(vega(df)).mark_bar().encode(
        x=time_x("Minute", domain=domain), y=alt.Y("sum(CostUSD):Q", title=f"USD per {per}", stack=True),
        color=alt.Color("Tenant:N", legend=alt.Legend(labelLimit=180)),
        tooltip=[_tooltip_time("Minute"), "Tenant:N", alt.Tooltip("sum(CostUSD):Q", format="$,.4f", title="cost")],
    ).properties(height=240, title=f"Cost per {per} by tenant")


def top_agents(df: pl.DataFrame) -> alt.Chart:
    return alt.Chart(vega(df)).mark_bar().encode(
        y=alt.Y("AgentId:N", sort="-x", title=None, axis=alt.Axis(labelLimit=220)), x=alt.X("CostUSD:Q", title="USD"),
        color=alt.Color("Tenant:N", legend=None),
        tooltip=["Tenant:N", "AgentId:N", "AgentName:N", alt.Tooltip("CostUSD:Q", format="$,.4f"),
                 alt.Tooltip("ModelCalls:Q", format=","), alt.Tooltip("Tokens:Q", format=",")],
    ).properties(height=max(120, 24 * len(df)), title="Cost by agent (USD)")


def baseline(series: pl.DataFrame, metric: str, normal: float | None, window: tuple[datetime, datetime],
             normal_label: str = "normal before", threshold: float | None = None) -> alt.Chart:
    band = alt.Chart(vega(pl.DataFrame({"start": [window[0]], "end": [window[1]]}))).mark_rect(
        color="#d62728", opacity=0.12).encode(x=alt.X("start:T"), x2="end:T")
    domain = (series["Time"].min(), series["Time"].max()) if len(series) else None
    line = alt.Chart(vega(series)).mark_line(interpolate="step-after", point=False).encode(
        x=time_x("Time", domain=domain), y=alt.Y("Value:Q", title=None),
        color=alt.Color("Series:N", legend=alt.Legend(title=None, labelLimit=180)),
        tooltip=[_tooltip_time("Time"), "Series:N", alt.Tooltip("Value:Q", format=",.4g")],
    )
    layers = [band, line]
    for value, label, color in ((normal, normal_label, "#555"), (threshold, "threshold", "#d62728")):
        if value is None:
            continue
        rule = alt.Chart(pl.DataFrame({"level": [float(value)], "label": [f"{label}: {value:,.4g}"]}))
        layers.append(rule.mark_rule(strokeDash=[6, 4], color=color).encode(y="level:Q", tooltip=["label:N"]))
        layers.append(rule.mark_text(align="left", dx=4, dy=-6, color=color).encode(
            y="level:Q", text="label:N", x=alt.value(0)))
    return alt.layer(*layers).properties(height=260, title=alt.Title(metric, subtitle="shaded: the anomalous window"))


def timeline(bars: pl.DataFrame, binned: bool, start_ns: int, marker_ns: int | None,
             anomalies_ns: list[int]) -> alt.Chart:
    df = bars.with_columns(
        pl.from_epoch(pl.col("StartNs"), time_unit="ns").dt.replace_time_zone("UTC").alias("Start"),
        pl.from_epoch(pl.col("EndNs"), time_unit="ns").dt.replace_time_zone("UTC").alias("End"),
        ((pl.col("StartNs") - start_ns) / 1e9).round(3).alias("Offset s"),
        ((pl.col("EndNs") - pl.col("StartNs")) / 1e9).round(3).alias("Duration s"),
        pl.when(pl.col("Operation").is_in(TIMELINE_OPERATIONS))
        .then(pl.col("Operation")).otherwise(pl.lit("other")).alias("Kind"),
    ).drop("StartNs", "EndNs")
    rows = df["Row"].n_unique()
    enc = dict(
        x=time_x("Start", title="time (UTC)", fmt="%H:%M:%S"), x2="End:T",
        y=alt.Y("Row:N", title="agent", sort=alt.EncodingSortField("Start", op="min"),
                axis=alt.Axis(labelLimit=260)),
        color=alt.Color("Kind:N", scale=OPERATION_COLORS, legend=alt.Legend(title=None, labelLimit=180)),
        tooltip=["Row:N", "Label:N", "Kind:N", "Offset s:Q", "Duration s:Q", "Count:Q", "SpanId:N"],
    )
    if binned:
        enc["opacity"] = alt.Opacity("Count:Q", scale=alt.Scale(type="log", range=[0.25, 1]), legend=None)
    bars_chart = alt.Chart(vega(df)).mark_bar(height={"band": 0.8}).encode(**enc)
    layers = [bars_chart]
    if anomalies_ns:
        a = pl.DataFrame({"At": anomalies_ns}).with_columns(
            pl.from_epoch("At", time_unit="ns").dt.replace_time_zone("UTC"))
        layers.append(alt.Chart(vega(a)).mark_rule(color="#d62728", strokeWidth=2).encode(x="At:T"))
    if marker_ns is not None:
        m = pl.DataFrame({"At": [marker_ns]}).with_columns(
            pl.from_epoch("At", time_unit="ns").dt.replace_time_zone("UTC"))
        layers.append(alt.Chart(vega(m)).mark_rule(color="black", strokeDash=[4, 3]).encode(x="At:T"))
    title = "Timeline: one bar per span" if not binned else "Timeline: agent bars, then spans binned (darker = more)"
    return alt.layer(*layers).properties(height=min(1200, 60 + 26 * rows), title=title)


def cost_stacked(df: pl.DataFrame, x: str, color: str, title: str, fmt: str | None = None) -> alt.Chart:
    x_enc = time_x(x, title="", fmt=fmt) if x in ("Day", "Hour", "Minute") else alt.X(f"{x}:N", sort="-y")
    return alt.Chart(vega(df)).mark_bar().encode(
        x=x_enc, y=alt.Y("sum(CostUSD):Q", title="USD"), color=alt.Color(f"{color}:N"),
        tooltip=[alt.Tooltip(f"{x}:{'T' if x in ('Day', 'Hour') else 'N'}"), f"{color}:N",
                 alt.Tooltip("sum(CostUSD):Q", format="$,.4f", title="cost")],
    ).properties(height=260, title=title)


def tokens_by_kind(df: pl.DataFrame, by: str) -> alt.Chart:
    return alt.Chart(vega(df)).mark_bar().encode(
        y=alt.Y(f"{by}:N", sort="-x", title=None), x=alt.X("sum(Tokens):Q", title="tokens", stack="zero"),
        color=alt.Color("Kind:N", scale=alt.Scale(
            domain=["input (uncached)", "cached input", "output (visible)", "reasoning"],
            range=["#4c78a8", "#9ecae9", "#f58518", "#e45756"]), legend=alt.Legend(title=None, labelLimit=180)),
        tooltip=[f"{by}:N", "Kind:N", alt.Tooltip("sum(Tokens):Q", format=",")],
    ).properties(height=max(140, 26 * df[by].n_unique()), title=f"Tokens by kind, per {by.lower()}")


def credential_uses(df: pl.DataFrame, domain=None) -> alt.Chart:
    df = df.with_columns(pl.when(pl.col("CrossTenant")).then(pl.lit("cross-tenant")).otherwise(pl.lit("own tenant"))
                         .alias("Use"))
    return alt.Chart(vega(df)).mark_circle(opacity=0.85).encode(
        x=time_x("Minute", domain=domain), y=alt.Y("CredentialId:N", title=None),
        size=alt.Size("sum(Uses):Q", legend=None, scale=alt.Scale(range=[20, 400])),
        color=alt.Color("Use:N", scale=alt.Scale(domain=["own tenant", "cross-tenant"], range=["#4c78a8", "#d62728"]),
                        legend=alt.Legend(title=None, labelLimit=180)),
        tooltip=[_tooltip_time("Minute"), "CredentialId:N", "Use:N", alt.Tooltip("sum(Uses):Q", title="uses")],
    ).properties(height=max(160, 24 * df["CredentialId"].n_unique()), title="Credential uses per minute")


def credential_trail(df: pl.DataFrame, domain=None) -> alt.Chart:
    df = df.with_columns(pl.when(pl.col("CrossTenant")).then(pl.lit("cross-tenant use"))
                         .otherwise(pl.col("Event")).alias("What"))
    return alt.Chart(vega(df)).mark_tick(thickness=2, size=18).encode(
        x=time_x("Timestamp", domain=domain), y=alt.Y("Tenant:N", title="actor tenant"),
        color=alt.Color("What:N", scale=alt.Scale(domain=["grant", "use", "revoke", "cross-tenant use"],
                                                 range=["#54a24b", "#4c78a8", "#9d755d", "#d62728"]),
                        legend=alt.Legend(title=None, labelLimit=180)),
        tooltip=[_tooltip_time("Timestamp"), "Event:N", "Tenant:N", "AgentId:N", "Resource:N", "ResourceTenant:N",
                 "Action:N", "TraceId:N"],
    ).properties(title="Grants, uses and revokes over time")


def gpu_lines(df: pl.DataFrame, metric: str, title: str, y_title: str, domain, scale: float = 1.0,
              color: str = "Device") -> alt.Chart:
    d = df.filter(pl.col("MetricName") == metric).with_columns((pl.col("Value") * scale).alias("Value"))
    return alt.Chart(vega(d)).mark_line(interpolate="monotone").encode(
        x=time_x("Time", domain=domain), y=alt.Y("Value:Q", title=y_title),
        color=alt.Color(f"{color}:N", legend=alt.Legend(title=None, labelLimit=180)),
        tooltip=[_tooltip_time("Time"), f"{color}:N", alt.Tooltip("Value:Q", format=",.2f")],
    ).properties(height=200, title=title)


def activity(df: pl.DataFrame, domain) -> alt.Chart:
    return alt.Chart(vega(df)).mark_area(opacity=0.6, interpolate="step-after").encode(
        x=time_x("Minute", domain=domain), y=alt.Y("sum(ModelCalls):Q", title="model calls/min", stack=True),
        color=alt.Color("ServiceName:N", legend=alt.Legend(title=None, labelLimit=180)),
        tooltip=[_tooltip_time("Minute"), "ServiceName:N", alt.Tooltip("sum(ModelCalls):Q", title="model calls")],
    ).properties(height=180, title="Model calls per minute (the traces running then)")
