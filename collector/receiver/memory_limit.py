"""A bound on the receiver process's memory: refuse new requests while it nears the limit.

The byte bounds (request, converting, queue) hold what the receiver counts itself. What the
embedded engine, the inserts' buffers and the allocators hold besides is only seen from outside,
as the process's resident anonymous memory: the memory the kernel cannot drop (file pages, such as
the embedded engine's ~300 MB of mapped code, are left out).

The limit is what the process may hold (`AGENTWATCH_MAX_MEMORY_BYTES`). What was accepted before
refusing began is still converted and written, and one insert into the embedded engine (the traces
table and its views) briefly needs a few hundred MB of its own, so refusing starts a spike's
headroom below the limit (`AGENTWATCH_MAX_MEMORY_SPIKE_BYTES`), as the OpenTelemetry Collector's
memory_limiter has a soft limit `spike_limit_mib` below its hard one. By default the headroom is a
fifth of the limit, as there, and at least SPIKE_FLOOR: under 3x overload the process was measured
to rise up to 137 MB past the point where it began refusing (bench/README.md).
Above that soft limit `over()` is true and the receiver answers 503 + Retry-After (gRPC
RESOURCE_EXHAUSTED) before reading a body; what it accepted is still written, memory falls, and it
takes requests again.

Over the limit it also asks the C allocator to hand back what it holds freed (`malloc_trim`, glibc
only; at most once a second, in a thread of its own so the event loop does not wait on it): the
interpreter's request bodies, rows and insert buffers are freed into glibc's arenas, which otherwise
keep 50-100 MB of them resident between trims under overload. (The embedded engine's own allocator
is set to return freed memory at once when the store is opened: `AGENTWATCH_EMBEDDED_DIRTY_DECAY_MS`
in schemas/store.py.)

The headroom is measured, not guaranteed: bench/README.md gives the peaks under 3x overload for
several limits.

Linux only (`/proc/self/status`); elsewhere the limit is not applied and says so once.

>>> limit = MemoryLimit(1000 << 20, read=lambda: 850 << 20)
>>> limit.refuse_above >> 20, limit.over()  # refusing starts a fifth below the limit ...
(800, True)
>>> MemoryLimit(600 << 20, read=lambda: 0).refuse_above >> 20  # ... and at least SPIKE_FLOOR below it
440
>>> MemoryLimit(1000, spike_bytes=100, read=lambda: 850).over()
False
>>> MemoryLimit(0, read=lambda: 150).over()  # 0: no limit
False
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def anonymous_resident_bytes() -> int | None:
    """This process's resident anonymous memory (RssAnon), or None where /proc does not say."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _malloc_trim() -> Callable[[], None] | None:
    """glibc's malloc_trim(0): return the free memory of every arena to the system (None elsewhere)."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


SPIKE_FLOOR = 160 << 20  # the default headroom's least: above the most measured past the refusal point


class MemoryLimit:
    """`over()`: whether the process holds more than `limit_bytes - spike_bytes` (read at most every
    `interval_s`); `spike_bytes` None or 0: a fifth of the limit, at least SPIKE_FLOOR (at most half)."""

    def __init__(self, limit_bytes: int, interval_s: float = 0.05,
                 read: Callable[[], int | None] = anonymous_resident_bytes,
                 release: Callable[[], None] | None = _malloc_trim(), release_interval_s: float = 1.0,
                 spike_bytes: int | None = None) -> None:
        if limit_bytes and spike_bytes and not 0 < spike_bytes < limit_bytes:
            raise ValueError(f"AGENTWATCH_MAX_MEMORY_SPIKE_BYTES ({spike_bytes}) must be below "
                             f"AGENTWATCH_MAX_MEMORY_BYTES ({limit_bytes})")
        self.limit_bytes = limit_bytes
        default_spike = min(max(limit_bytes // 5, SPIKE_FLOOR), limit_bytes // 2)
        self.refuse_above = limit_bytes - (spike_bytes or default_spike)
        self.interval_s = interval_s
        self._read = read
        self._read_at = float("-inf")
        self.used_bytes: int | None = None
        self._release = release
        self.release_interval_s = release_interval_s
        self._released_at = float("-inf")
        self._releasing = threading.Lock()
        self.releases = 0  # how often the allocator was asked to return memory
        if limit_bytes and read() is None:
            log.warning("AGENTWATCH_MAX_MEMORY_BYTES: this system does not report a process's resident memory; "
                        "the receiver's memory is bounded by its byte limits only")
            self.limit_bytes = 0

    def over(self) -> bool:
        if not self.limit_bytes:
            return False
        now = time.monotonic()
        if now - self._read_at >= self.interval_s:  # a read costs ~20 us; requests may come by thousands
            self.used_bytes = self._read()
            self._read_at = now
        over = self.used_bytes is not None and self.used_bytes > self.refuse_above
        if over and self._release and now - self._released_at >= self.release_interval_s:
            self._released_at = now
            threading.Thread(target=self._release_now, name="agentwatch-memory-release", daemon=True).start()
        return over

    def _release_now(self) -> None:
        if not self._releasing.acquire(blocking=False):
            return
        try:
            self._release()
            self.releases += 1
            self._read_at = float("-inf")  # read again at the next request
        finally:
            self._releasing.release()
