"""Batching writer: a bounded in-memory queue drained into ClickHouse by one thread.

Admission is all-or-nothing per request and bounded in bytes: when the queue
is full the request is refused (the HTTP/gRPC layer answers 503 with
Retry-After), so what was accepted is never dropped. A failed insert is
retried with backoff, keeping its place in the queue. `close()` drains
everything accepted before returning.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from clickhouse_connect.driver.client import Client

log = logging.getLogger(__name__)


@dataclass
class Chunk:
    table: str
    body: bytes  # a JSON array of row objects
    rows: int


class QueueFull(Exception):
    pass


class BatchWriter:
    def __init__(self, connect: Callable[[], Client], *, max_queue_bytes: int = 512 << 20,
                 max_batch_bytes: int = 64 << 20, flush_interval_s: float = 0.2, metrics=None):
        self._connect = connect
        self.max_queue_bytes = max_queue_bytes
        self.max_batch_bytes = max_batch_bytes
        self.flush_interval_s = flush_interval_s
        self._metrics = metrics
        self._pending: deque[Chunk] = deque()
        self._queued_bytes = 0
        self._queued_rows = 0
        self._in_flight = 0
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="agentwatch-writer", daemon=True)
        self._client: Client | None = None
        self.written_rows = 0

    def start(self) -> None:
        self._client = self._connect()
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def submit(self, chunks: list[Chunk]) -> None:
        """Queue all chunks of one request, or raise QueueFull and queue none."""
        size = sum(len(c.body) for c in chunks)
        with self._cond:
            if self._closing:
                raise QueueFull("shutting down")
            # An empty queue takes any one request, however big: the request
            # size limit, not the queue, bounds a single payload.
            if self._queued_bytes and self._queued_bytes + size > self.max_queue_bytes:
                raise QueueFull(f"write queue holds {self._queued_bytes} bytes")
            self._pending.extend(chunks)
            self._queued_bytes += size
            self._queued_rows += sum(c.rows for c in chunks)
            self._cond.notify()
        self._report()

    def _take_batch(self) -> tuple[str, list[Chunk]] | None:
        """All pending chunks of the first table in line, up to max_batch_bytes."""
        if not self._pending:
            return None
        table = self._pending[0].table
        batch, size, keep = [], 0, deque()
        while self._pending:
            chunk = self._pending.popleft()
            if chunk.table == table and (not batch or size + len(chunk.body) <= self.max_batch_bytes):
                batch.append(chunk)
                size += len(chunk.body)
            else:
                keep.append(chunk)
        keep.extend(self._pending)
        self._pending = keep
        return table, batch

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._pending and not self._closing:
                    self._cond.wait(self.flush_interval_s)
                if not self._pending and self._closing:
                    return
                taken = self._take_batch()
                if taken:
                    self._in_flight += 1
            if taken:
                self._write(*taken)
                with self._cond:
                    self._in_flight -= 1
                    self._cond.notify_all()

    def _write(self, table: str, batch: list[Chunk]) -> None:
        body = _join(batch)
        rows = sum(c.rows for c in batch)
        delay = 0.1
        while True:
            started = time.perf_counter()
            try:
                self._client.raw_insert(table, None, insert_block=body, fmt="JSONEachRow")
            except Exception as error:  # the store is down or refused the data
                if self._metrics:
                    self._metrics.write_errors.labels(table).inc()
                if _is_bad_data(error):
                    # A batch the store refuses as data will never succeed whole:
                    # write its requests one by one so one bad request cannot block others.
                    if len(batch) > 1:
                        for chunk in batch:
                            self._write(table, [chunk])
                        return
                    log.error("store refused %d rows for %s as invalid; kept out of the table: %s",
                              rows, table, error)
                    if self._metrics:
                        self._metrics.rejected.labels(_signal(table), "store_refused").inc(rows)
                    self._done(batch)
                    return
                log.warning("insert of %d rows into %s failed, retrying in %.1fs: %s", rows, table, delay, error)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if self._metrics:
                self._metrics.write_seconds.labels(table).observe(time.perf_counter() - started)
                self._metrics.written.labels(table).inc(rows)
            self.written_rows += rows
            self._done(batch)
            return

    def _done(self, batch: list[Chunk]) -> None:
        with self._cond:
            self._queued_bytes -= sum(len(c.body) for c in batch)
            self._queued_rows -= sum(c.rows for c in batch)
        self._report()

    def _report(self) -> None:
        if self._metrics:
            self._metrics.queue_bytes.set(self._queued_bytes)
            self._metrics.queue_rows.set(self._queued_rows)

    def flush(self, timeout_s: float = 60) -> bool:
        """Wait until everything queued so far is written."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._cond.notify_all()
            while self._pending or self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.05))
        return True

    def close(self, timeout_s: float = 300) -> None:
        """Stop accepting, write everything accepted, then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if self._client is not None:
            self._client.close()


def _join(batch: list[Chunk]) -> bytes:
    if len(batch) == 1:
        return batch[0].body
    # Each body is "[row,...]": splice the arrays into one.
    return b"[" + b",".join(c.body[1:-1] for c in batch if len(c.body) > 2) + b"]"


def _signal(table: str) -> str:
    return "traces" if "traces" in table else "metrics" if "metrics" in table else "logs"


def _is_bad_data(error: Exception) -> bool:
    text = str(error)
    return any(code in text for code in ("CANNOT_PARSE", "INCORRECT_DATA", "TYPE_MISMATCH", "CANNOT_READ",
                                         "DECIMAL_OVERFLOW", "VALUE_IS_OUT_OF_RANGE"))
