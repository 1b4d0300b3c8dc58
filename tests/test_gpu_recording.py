"""GPU metrics recorded on a real NVIDIA H100, replayed into the receiver byte for byte.

`tests/data/h100_gpu_run/` holds what `python bench/gpu_sampler.py` captured
there: every OTLP/HTTP request body the SDK's GPU sampler exported (idle, a
bf16 matrix-multiply load holding 20 GiB, idle again) and nvidia-smi's own
log of the same seconds. The store and the dashboard's GPU query must tell
the same story as nvidia-smi.
"""

from __future__ import annotations

import csv
from datetime import UTC, timedelta
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from agentwatch.dashboard import data
from agentwatch.dashboard.auth import LOCAL_ADMIN
from tests.helpers import wait_for

RUN = Path(__file__).parent / "data" / "h100_gpu_run"
H100 = "NVIDIA H100 80GB HBM3"
MIB = 2**20


def sent_points() -> int:
    total = 0
    for path in sorted(RUN.glob("metrics-*.pb")):
        for resource_metrics in ExportMetricsServiceRequest.FromString(path.read_bytes()).resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    total += len((metric.gauge if metric.HasField("gauge") else metric.sum).data_points)
    return total


def nvidia_smi() -> list[dict]:
    names = ("timestamp", "util", "used_mib", "total_mib", "power_w")
    with (RUN / "nvidia-smi.csv").open() as handle:
        return [{k: v.strip() for k, v in zip(names, row)} for row in csv.reader(handle)]


@pytest.fixture(scope="module")
def stored(receiver, client):
    bodies = sorted(RUN.glob("metrics-*.pb"))
    assert len(bodies) == 30
    for path in bodies:
        response = httpx.post(f"http://127.0.0.1:{receiver.http_port}/v1/metrics", content=path.read_bytes(),
                              headers={"Content-Type": "application/x-protobuf"})
        assert response.status_code == 200, response.text
    expected = sent_points()

    def all_stored():
        rows = client.query("SELECT (SELECT count() FROM otel_metrics_gauge) + (SELECT count() FROM otel_metrics_sum)")
        return rows.result_rows[0][0] == expected

    wait_for(all_stored)
    return client


def value(client, sql: str):
    return client.query(sql).result_rows[0][0]


def test_every_point_of_the_h100_run_is_stored_with_its_device(stored):
    devices = stored.query(
        "SELECT DISTINCT Attributes['hw.name'], Attributes['hw.vendor'], Attributes['hw.type'] FROM otel_metrics_gauge"
        " WHERE MetricName = 'hw.gpu.utilization'").result_rows
    assert devices == [(H100, "NVIDIA", "gpu")]
    assert value(stored, "SELECT uniqExact(ServiceName) FROM otel_metrics_sum") == 1


def test_stored_readings_match_nvidia_smi(stored):
    smi = nvidia_smi()
    # Memory in use: the sampler's figure is nvidia-smi's, to the MiB, at the peak and at rest.
    peak = value(stored, "SELECT max(Value) FROM otel_metrics_sum WHERE MetricName = 'hw.gpu.memory.usage'")
    assert abs(peak - max(float(r["used_mib"]) for r in smi) * MIB) <= MIB
    assert value(stored, "SELECT min(Value) FROM otel_metrics_sum WHERE MetricName = 'hw.gpu.memory.usage'") == 0
    limit = value(stored, "SELECT max(Value) FROM otel_metrics_sum WHERE MetricName = 'hw.gpu.memory.limit'")
    assert limit >= float(smi[0]["total_mib"]) * MIB
    # Utilization as a 0..1 ratio: idle at 0, the matmul load at 100 %.
    assert value(stored, "SELECT min(Value) FROM otel_metrics_gauge WHERE MetricName = 'hw.gpu.utilization'") == 0
    assert value(stored, "SELECT max(Value) FROM otel_metrics_gauge WHERE MetricName = 'hw.gpu.utilization'") == 1.0
    # Power in watts, within 5 % of nvidia-smi's peak (the two read at different instants).
    watts = value(stored, "SELECT max(Value) FROM otel_metrics_gauge WHERE MetricName = 'hw.power'")
    assert watts == pytest.approx(max(float(r["power_w"]) for r in smi), rel=0.05)


def test_the_loading_process_is_seen_holding_its_memory(stored):
    pids = stored.query(
        "SELECT Attributes['process.pid'] AS pid, max(Value) FROM otel_metrics_sum"
        " WHERE MetricName = 'process.gpu.memory.usage' GROUP BY pid").result_rows
    assert len(pids) == 1
    assert pids[0][1] > 20 * 2**30  # the 20 GiB it held, plus its CUDA context and matrices


def test_dashboard_gpu_query_shows_the_run(stored):
    first, last = stored.query(
        "SELECT min(TimeUnix), max(TimeUnix) FROM otel_metrics_gauge").result_rows[0]
    start = first.replace(tzinfo=UTC) - timedelta(minutes=1)
    end = last.replace(tzinfo=UTC) + timedelta(minutes=1)
    frame = data.gpu_metrics(stored, LOCAL_ADMIN, start, end)
    assert set(frame["MetricName"]) == set(data.GPU_METRICS)
    assert set(frame["DeviceName"]) == {H100}
    utilization = frame.filter(frame["MetricName"] == "hw.gpu.utilization")
    assert utilization["Value"].max() > 0.5 and utilization["Value"].min() == 0
