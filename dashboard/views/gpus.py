"""GPUs: utilization, memory and power per device, beside the model calls and traces running then."""

from __future__ import annotations

from datetime import datetime

import polars as pl
import streamlit as st

from agentwatch.dashboard import charts, data
from agentwatch.dashboard.auth import Viewer
from agentwatch.dashboard.trace_model import human_bytes
from agentwatch.dashboard.views.common import open_trace, table

TITLE = "GPUs"


def render(db, viewer: Viewer, start: datetime, end: datetime) -> None:
    st.header(TITLE)
    metrics = data.gpu_metrics(db, viewer, start, end)
    domain = (start, end)
    if metrics.is_empty():
        st.info("No GPU metrics in this time range. The SDK samples NVIDIA GPUs through NVML "
                "(`agentwatch.init(..., gpu_interval=10)`) on the hosts that have them.")
    else:
        devices = metrics.filter(pl.col("Device") != "").select("Device", "DeviceName", "ServiceName", "Host").unique()
        c = st.columns(4)
        c[0].metric("Devices", f"{devices['Device'].n_unique()}")
        util = metrics.filter(pl.col("MetricName") == "hw.gpu.utilization")
        c[1].metric("Mean utilization", f"{util['Value'].mean():.0%}" if len(util) else "—")
        mem = metrics.filter(pl.col("MetricName") == "hw.gpu.memory.usage")
        c[2].metric("Peak memory", human_bytes(mem["Value"].max()) if len(mem) else "—")
        power = metrics.filter(pl.col("MetricName") == "hw.power")
        c[3].metric("Mean power", f"{power['Value'].mean():,.0f} W" if len(power) else "—")
        labelled = metrics.with_columns(
            pl.when(pl.col("DeviceName") != "").then(pl.concat_str(
                pl.col("Device").str.slice(0, 12), pl.lit(" · "), pl.col("DeviceName").str.replace("NVIDIA ", "")))
            .otherwise(pl.col("Device")).alias("Device"),
            pl.concat_str(pl.lit("pid "), pl.col("Pid"), pl.lit(" · "), pl.col("ServiceName")).alias("Process"))
        left, right = st.columns(2)
        left.altair_chart(charts.gpu_lines(labelled, "hw.gpu.utilization", "Utilization per device", "%", domain,
                                           scale=100), width="stretch")
        mem_both = labelled.filter(pl.col("MetricName").is_in(["hw.gpu.memory.usage", "hw.gpu.memory.limit"])) \
            .with_columns(pl.concat_str(pl.col("Device"), pl.lit(" "),
                                        pl.col("MetricName").str.replace("hw.gpu.memory.", "")).alias("Series"),
                          pl.lit("mem").alias("MetricName"))
        right.altair_chart(charts.gpu_lines(mem_both, "mem", "Memory used and limit per device", "GiB", domain,
                                            scale=1 / 2**30, color="Series"), width="stretch")
        left, right = st.columns(2)
        left.altair_chart(charts.gpu_lines(labelled, "hw.power", "Power per device", "W", domain), width="stretch")
        right.altair_chart(charts.gpu_lines(labelled, "process.gpu.memory.usage", "GPU memory per process", "GiB",
                                            domain, scale=1 / 2**30, color="Process"), width="stretch")
    st.divider()
    st.markdown("**The traces running then**: model calls of the services that report these GPUs, and their traces")
    services = metrics["ServiceName"].unique().to_list() if len(metrics) else []
    act = data.activity(db, viewer, start, end, services or None)
    if act.is_empty() and services:
        st.caption("No spans from the services that report these GPUs; showing every service.")
        act = data.activity(db, viewer, start, end)
    if len(act):
        st.altair_chart(charts.activity(act, domain), width="stretch")
    traces = data.find_traces(db, viewer, start, end, services=services, limit=200) if services else None
    if traces is None or traces.is_empty():
        traces = data.find_traces(db, viewer, start, end, limit=200)
    if len(traces):
        table(traces.select("Start", "End", "Tenant", "RootAgentId", "Spans", "ModelCalls", "CostUSD", "TraceId"),
               column_config={"CostUSD": st.column_config.NumberColumn("Cost", format="$%.4f")}, height=300)
        c = st.columns([3, 1])
        c[0].selectbox("Trace", traces["TraceId"].to_list(), key="gpu_trace")
        c[1].button("Open trace", key="gpu_open_trace", width="stretch",
                    on_click=lambda: open_trace(st.session_state["gpu_trace"]))
    else:
        st.caption("No traces in this time range.")
