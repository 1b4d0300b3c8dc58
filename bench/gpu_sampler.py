"""The GPU sampler on real hardware: what it reads, what it costs, what it sends.

Run on a machine with an NVIDIA GPU and PyTorch (for the load):

    python bench/gpu_sampler.py --out gpu-run

Phases: idle, a matrix-multiply load holding a known amount of GPU memory,
idle again. Meanwhile `nvidia-smi` logs its own view once a second, and
`agentwatch.init(gpu_interval=1)` exports through the stock OTLP/HTTP
exporter to a loopback listener that keeps every request body whole
(`--out/otlp/metrics-NNNN.pb`). Those bodies are what the receiver gets from
a real GPU host; `tests/data/` keeps a set of them for the receiver and
dashboard tests. The summary (`--out/summary.json`) sets the sampler's
readings beside nvidia-smi's per phase and gives the cost of one sample.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import agentwatch
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest


class _Capture(BaseHTTPRequestHandler):
    """Keeps each request body the exporter sends, whole, to replay into a receiver elsewhere."""

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        server: CaptureServer = self.server  # type: ignore[assignment]
        server.keep(self.path, body)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


class CaptureServer(ThreadingHTTPServer):
    def __init__(self, out: Path):
        super().__init__(("127.0.0.1", 0), _Capture)
        self.out = out
        self.count = 0
        self.lock = threading.Lock()
        out.mkdir(parents=True, exist_ok=True)

    def keep(self, path: str, body: bytes) -> None:
        with self.lock:
            self.count += 1
            kind = path.rstrip("/").rsplit("/", 1)[-1]
            (self.out / f"{kind}-{self.count:04d}.pb").write_bytes(body)


def nvidia_smi_log(path: Path) -> subprocess.Popen:
    return subprocess.Popen(
        ["nvidia-smi", "--query-gpu=timestamp,utilization.gpu,memory.used,memory.total,power.draw",
         "--format=csv,noheader,nounits", "-lms", "1000"],
        stdout=path.open("w"), stderr=subprocess.DEVNULL)


def gpu_load(seconds: float, hold_gib: float) -> None:
    import torch

    held = torch.empty(int(hold_gib * 2**30), dtype=torch.uint8, device="cuda")  # memory the sampler must see
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(20):
            a @ b
        torch.cuda.synchronize()
    del held, a, b
    torch.cuda.empty_cache()


def points(out: Path) -> list[dict]:
    """Every data point the exporter sent, flattened."""
    rows = []
    for path in sorted(out.glob("metrics-*.pb")):
        request = ExportMetricsServiceRequest.FromString(path.read_bytes())
        for resource_metrics in request.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    data = metric.gauge if metric.HasField("gauge") else metric.sum
                    for point in data.data_points:
                        attributes = {kv.key: (kv.value.string_value or kv.value.int_value) for kv in point.attributes}
                        value = point.as_double if point.HasField("as_double") else point.as_int
                        rows.append({"metric": metric.name, "time_s": point.time_unix_nano / 1e9,
                                     "value": value, "attributes": attributes})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-run"))
    parser.add_argument("--idle", type=float, default=6.0)
    parser.add_argument("--load", type=float, default=15.0)
    parser.add_argument("--hold-gib", type=float, default=20.0)
    args = parser.parse_args()

    capture = CaptureServer(args.out / "otlp")
    threading.Thread(target=capture.serve_forever, daemon=True).start()
    smi = nvidia_smi_log(args.out / "nvidia-smi.csv")

    telemetry = agentwatch.init("gpu-bench", endpoint=f"http://127.0.0.1:{capture.server_port}",
                                tenant="bench", gpu_interval=1.0)
    sampler = telemetry.gpu_sampler
    if sampler is None:
        raise SystemExit("NVML did not initialise: no GPU sampler")

    timings = []
    for _ in range(200):
        started = time.perf_counter()
        sampler.sample()
        timings.append(time.perf_counter() - started)

    phases = []

    def phase(name: str, work) -> None:
        start = time.time()
        work()
        phases.append({"phase": name, "start_s": start, "end_s": time.time()})

    phase("idle_before", lambda: time.sleep(args.idle))
    phase("load", lambda: gpu_load(args.load, args.hold_gib))
    phase("idle_after", lambda: time.sleep(args.idle))
    agentwatch.shutdown()
    smi.terminate()
    smi.wait()
    capture.shutdown()

    sent = points(args.out / "otlp")
    smi_rows = []
    for line in (args.out / "nvidia-smi.csv").read_text().splitlines():
        stamp, util, used, total, power = (part.strip() for part in line.split(","))
        moment = time.mktime(time.strptime(stamp.split(".")[0], "%Y/%m/%d %H:%M:%S"))
        smi_rows.append({"time_s": moment, "util": float(util), "used_mib": float(used),
                         "power_w": float(power)})

    def within(rows, p, key):
        inner = [r[key] for r in rows if p["start_s"] + 1 <= r["time_s"] <= p["end_s"]]
        return {"n": len(inner), "max": max(inner) if inner else None,
                "mean": round(statistics.fmean(inner), 3) if inner else None}

    summary = {
        "device": sorted({p["attributes"].get("hw.name") for p in sent if "hw.name" in p["attributes"]}),
        "sample_ms": {"median": round(statistics.median(timings) * 1000, 3),
                      "p99": round(sorted(timings)[int(len(timings) * 0.99)] * 1000, 3)},
        "requests_kept": capture.count,
        "points": len(sent),
        "metrics": sorted({p["metric"] for p in sent}),
        "phases": [],
    }
    this_pid = os.getpid()
    for p in phases:
        by_metric = {}
        for metric in ("hw.gpu.utilization", "hw.gpu.memory.usage", "hw.power"):
            rows = [r for r in sent if r["metric"] == metric]
            by_metric[metric] = within(rows, p, "value")
        own = [r for r in sent if r["metric"] == "process.gpu.memory.usage"
               and r["attributes"].get("process.pid") == this_pid]
        by_metric["process.gpu.memory.usage(own pid)"] = within(own, p, "value")
        summary["phases"].append({**p, "agentwatch": by_metric,
                                  "nvidia_smi": {k: within(smi_rows, p, k) for k in ("util", "used_mib", "power_w")}})
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
