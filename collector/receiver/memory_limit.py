"""A bound on the receiver process's memory: refuse new requests while it holds more than the limit.

The byte bounds (request, converting, queue) hold what the receiver counts itself. What the
embedded engine, the inserts' buffers and the allocators hold besides is only seen from outside,
as the process's resident anonymous memory: the memory the kernel cannot drop (file pages, such as
the embedded engine's ~300 MB of mapped code, are left out). While it is above the limit, `over()`
is true and the receiver answers 503 + Retry-After (gRPC RESOURCE_EXHAUSTED) before reading a
body, as the OpenTelemetry Collector's memory_limiter refuses data; what it already accepted is
still written, memory falls, and it takes requests again.

Linux only (`/proc/self/status`); elsewhere the limit is not applied and says so once.

>>> limit = MemoryLimit(100, read=lambda: 150)
>>> limit.over(), limit.used_bytes
(True, 150)
>>> MemoryLimit(0, read=lambda: 150).over()  # 0: no limit
False
"""

from __future__ import annotations

import logging
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


class MemoryLimit:
    """`over()`: whether the process holds more than `limit_bytes` (read at most every `interval_s`)."""

    def __init__(self, limit_bytes: int, interval_s: float = 0.05,
                 read: Callable[[], int | None] = anonymous_resident_bytes) -> None:
        self.limit_bytes = limit_bytes
        self.interval_s = interval_s
        self._read = read
        self._read_at = float("-inf")
        self.used_bytes: int | None = None
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
        return self.used_bytes is not None and self.used_bytes > self.limit_bytes
