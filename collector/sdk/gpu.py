"""GPU metrics from NVML (nvidia-ml-py), in the OpenTelemetry hardware conventions.

A daemon thread reads every device each `interval_s`; observable instruments
report the latest reading whenever the MeterProvider's reader collects. The
thread keeps NVML calls off the export path and makes `interval_s` the
sampling period whatever the export period is. Per device: hw.gpu.utilization
(ratio 0..1), hw.gpu.memory.usage and hw.gpu.memory.limit (bytes), hw.power
(watts), with hw.id / hw.name / hw.vendor / hw.type; and per process on a GPU,
process.gpu.memory.usage (bytes) with process.pid.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

logger = logging.getLogger("agentwatch.sdk.gpu")

_unavailable_logged = False


def _log_unavailable(error: BaseException) -> None:
    global _unavailable_logged
    if not _unavailable_logged:
        _unavailable_logged = True
        logger.info("agentwatch GPU sampler off: NVML unavailable (%s)", error)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value  # older nvidia-ml-py returns bytes


def _memory_info(nvml, handle) -> tuple[int, int]:
    """(used, total) bytes. The v2 call leaves out what the driver reserves
    for itself (~480 MiB on an H100), so `used` is what nvidia-smi shows and
    an idle GPU reads 0; drivers without v2 get the v1 figure."""
    try:
        memory = nvml.nvmlDeviceGetMemoryInfo(handle, version=nvml.nvmlMemory_v2)
    except Exception:  # nvidia-ml-py or driver without nvmlDeviceGetMemoryInfo_v2
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    return memory.used, memory.total


@dataclass
class DeviceReading:
    attributes: dict
    utilization: float | None = None
    memory_used: int | None = None
    memory_total: int | None = None
    power_watts: float | None = None
    process_memory: dict[int, int] = field(default_factory=dict)  # pid -> bytes


class GpuSampler:
    def __init__(self, meter_provider: MeterProvider, interval_s: float = 10.0) -> None:
        self.meter_provider = meter_provider
        self.interval_s = interval_s
        self.readings: list[DeviceReading] = []
        self._devices: list[tuple[object, dict]] = []
        self._nvml = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> bool:
        """Start sampling; False, logged once per process, when NVML does not initialise."""
        if self._thread is not None:
            return True
        try:
            import pynvml

            pynvml.nvmlInit()
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                attributes = {
                    "hw.id": _text(pynvml.nvmlDeviceGetUUID(handle)),
                    "hw.name": _text(pynvml.nvmlDeviceGetName(handle)),
                    "hw.vendor": "NVIDIA",
                    "hw.type": "gpu",
                }
                self._devices.append((handle, attributes))
        except Exception as error:  # no driver, no device, or no library: all mean "no GPU here"
            _log_unavailable(error)
            self._devices = []
            return False
        self._nvml = pynvml
        self.sample()
        meter = self.meter_provider.get_meter("agentwatch.gpu")
        meter.create_observable_gauge(
            "hw.gpu.utilization", [self._observe_utilization], unit="1", description="Fraction of time the GPU was busy"
        )
        meter.create_observable_up_down_counter(
            "hw.gpu.memory.usage", [self._observe_memory_used], unit="By", description="GPU memory used"
        )
        meter.create_observable_up_down_counter(
            "hw.gpu.memory.limit", [self._observe_memory_total], unit="By", description="GPU memory size"
        )
        meter.create_observable_gauge("hw.power", [self._observe_power], unit="W", description="GPU power draw")
        meter.create_observable_up_down_counter(
            "process.gpu.memory.usage", [self._observe_process_memory], unit="By", description="GPU memory per process"
        )
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="agentwatch-gpu-sampler", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        self.readings = []
        try:
            self._nvml.nvmlShutdown()
        except Exception as error:
            logger.debug("nvmlShutdown failed: %s", error)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        """Read every device now; a reading NVML does not support on a device is left out."""
        nvml = self._nvml
        readings = []
        for handle, attributes in self._devices:
            reading = DeviceReading(attributes)
            try:
                reading.utilization = nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
            except Exception:  # e.g. NVMLError_NotSupported on MIG or vGPU devices
                pass
            try:
                reading.memory_used, reading.memory_total = _memory_info(nvml, handle)
            except Exception:
                pass
            try:
                reading.power_watts = nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0  # milliwatts
            except Exception:
                pass
            try:
                for process in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if process.usedGpuMemory is not None:  # None where the driver hides it
                        reading.process_memory[process.pid] = process.usedGpuMemory
            except Exception:
                pass
            readings.append(reading)
        self.readings = readings  # swapped whole: the collecting thread never sees half a sample

    def _observe_utilization(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(r.utilization, r.attributes) for r in self.readings if r.utilization is not None]

    def _observe_memory_used(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(r.memory_used, r.attributes) for r in self.readings if r.memory_used is not None]

    def _observe_memory_total(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(r.memory_total, r.attributes) for r in self.readings if r.memory_total is not None]

    def _observe_power(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(r.power_watts, r.attributes) for r in self.readings if r.power_watts is not None]

    def _observe_process_memory(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(used, {**r.attributes, "process.pid": pid})
            for r in self.readings
            for pid, used in r.process_memory.items()
        ]
