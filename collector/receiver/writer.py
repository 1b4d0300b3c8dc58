"""Batching writer: accepted requests drained into ClickHouse, in order, by one thread.

Admission is all-or-nothing per request and bounded in bytes: `reserve` refuses
a request when the queue is full (the HTTP/gRPC layer answers 503 with
Retry-After), so what was accepted is never dropped. Requests are inserted in
the order they were accepted, a batch of consecutive requests at a time; a
failed insert is retried with backoff, keeping its place. With a spool, each
batch's bounds are recorded before its inserts and every insert carries a
deduplication token derived from them, so a batch repeated after a crash is
stored once (see spool.py). `close()` drains everything accepted before
returning.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from clickhouse_connect.driver.client import Client

from agentwatch.collector.receiver.spool import Record, Spool

log = logging.getLogger(__name__)


class QueueFull(Exception):
    pass


class BatchWriter:
    def __init__(self, connect: Callable[[], Client], *, max_queue_bytes: int = 512 << 20,
                 max_batch_bytes: int = 64 << 20, flush_interval_s: float = 0.2, metrics=None,
                 spool: Spool | None = None):
        self._connect = connect
        self.max_queue_bytes = max_queue_bytes
        self.max_batch_bytes = max_batch_bytes
        self.flush_interval_s = flush_interval_s
        self._metrics = metrics
        self._spool = spool
        self._pending: deque[Record] = deque()
        self._reserved_bytes = 0  # admitted, not yet written (pending or still being spooled)
        self._queued_rows = 0
        self._in_flight = 0
        self._forced: tuple[int, int] | None = None  # a batch begun before a crash, repeated as it was
        self._next_seq = 1  # without a spool, requests are numbered here
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="agentwatch-writer", daemon=True)
        self._client: Client | None = None
        self.written_rows = 0

    def start(self, recovered: list[Record] = (), begun: tuple[int, int] | None = None) -> None:
        """Start writing, first the records a spool recovered (and the batch begun before a crash)."""
        self._client = self._connect()
        with self._cond:
            for record in recovered:
                self._reserved_bytes += record.size
            self._forced = begun
        self.enqueue(list(recovered))
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def queued_bytes(self) -> int:
        return self._reserved_bytes

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def reserve(self, size: int) -> None:
        """Admit one request of `size` bytes, or raise QueueFull."""
        with self._cond:
            if self._closing:
                raise QueueFull("shutting down")
            # An empty queue takes any one request, however big: the request
            # size limit, not the queue, bounds a single payload.
            if self._reserved_bytes and self._reserved_bytes + size > self.max_queue_bytes:
                raise QueueFull(f"write queue holds {self._reserved_bytes} bytes")
            self._reserved_bytes += size
        self._report()

    def release(self, size: int) -> None:
        """Give back an admission whose request was not queued after all."""
        with self._cond:
            self._reserved_bytes -= size
        self._report()

    def enqueue(self, records: list[Record]) -> None:
        """Queue admitted requests, in their order."""
        with self._cond:
            self._pending.extend(records)
            self._queued_rows += sum(record.rows for record in records)
            self._cond.notify()
        self._report()

    def submit(self, blocks: list[tuple[str, bytes, int]]) -> None:
        """Admit and queue one request at once (no spool: acknowledged when queued)."""
        record = Record(0, b"", time.time(), blocks)
        self.reserve(record.size)
        with self._cond:
            record.seq = self._next_seq
            self._next_seq += 1
        self.enqueue([record])

    def _take_batch(self) -> list[Record]:
        """Consecutive requests from the head of the queue, up to max_batch_bytes."""
        batch, size = [], 0
        if self._forced:
            _, last = self._forced
            while self._pending and self._pending[0].seq <= last:
                batch.append(self._pending.popleft())
            self._forced = None
            return batch
        while self._pending and (not batch or size + self._pending[0].size <= self.max_batch_bytes):
            record = self._pending.popleft()
            batch.append(record)
            size += record.size
        return batch

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._pending and not self._closing:
                    self._cond.wait(self.flush_interval_s)
                if not self._pending and self._closing:
                    return
                batch = self._take_batch()
                if batch:
                    self._in_flight += 1
            if batch:
                self._write_batch(batch)
                with self._cond:
                    self._in_flight -= 1
                    self._cond.notify_all()

    def _write_batch(self, batch: list[Record]) -> None:
        first, last = batch[0].seq, batch[-1].seq
        token = self._spool.token(first, last) if self._spool else None
        if self._spool:
            _until_done(lambda: self._spool.begin(first, last), "record the batch in the spool")
        tables: dict[str, list[tuple[Record, bytes, int]]] = {}
        for record in batch:
            for table, body, rows in record.blocks:
                tables.setdefault(table, []).append((record, body, rows))
        for table, parts in tables.items():
            self._insert_table(table, parts, token)
        if self._spool:
            _until_done(lambda: self._spool.commit(last), "mark the batch written in the spool")
        self._done(batch)

    def _insert_table(self, table: str, parts: list[tuple[Record, bytes, int]], token: str | None) -> None:
        body = _join([body for _, body, _ in parts])
        rows = sum(rows for _, _, rows in parts)
        delay = 0.1
        while True:
            started = time.perf_counter()
            try:
                settings = {"insert_deduplication_token": token} if token else None
                self._client.raw_insert(table, None, insert_block=body, fmt="JSONEachRow", settings=settings)
            except Exception as error:  # the store is down or refused the data
                if self._metrics:
                    self._metrics.write_errors.labels(table).inc()
                if _is_bad_data(error):
                    # A batch the store refuses as data will never succeed whole:
                    # write its requests one by one so one bad request cannot block others.
                    if len(parts) > 1:
                        for part in parts:
                            self._insert_table(table, [part], f"{token}-{part[0].seq}" if token else None)
                        return
                    log.error("store refused %d rows for %s as invalid; kept out of the table: %s",
                              rows, table, error)
                    if self._metrics:
                        self._metrics.rejected.labels(_signal(table), "store_refused").inc(rows)
                    return
                log.warning("insert of %d rows into %s failed, retrying in %.1fs: %s", rows, table, delay, error)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if self._metrics:
                self._metrics.write_seconds.labels(table).observe(time.perf_counter() - started)
                self._metrics.written.labels(table).inc(rows)
            self.written_rows += rows
            return

    def _done(self, batch: list[Record]) -> None:
        with self._cond:
            self._reserved_bytes -= sum(record.size for record in batch)
            self._queued_rows -= sum(record.rows for record in batch)
        self._report()

    def _report(self) -> None:
        if self._metrics:
            self._metrics.queue_bytes.set(self._reserved_bytes)
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


def _until_done(step: Callable[[], None], what: str) -> None:
    """Retry a spool step (a full or failing disk) until it succeeds: the batch keeps its place."""
    delay = 0.1
    while True:
        try:
            return step()
        except OSError as error:
            log.error("cannot %s, retrying in %.1fs: %s", what, delay, error)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _join(bodies: list[bytes]) -> bytes:
    if len(bodies) == 1:
        return bodies[0]
    # Each body is "[row,...]": splice the arrays into one.
    return b"[" + b",".join(body[1:-1] for body in bodies if len(body) > 2) + b"]"


def _signal(table: str) -> str:
    return "traces" if "traces" in table else "metrics" if "metrics" in table else "logs"


def _is_bad_data(error: Exception) -> bool:
    text = str(error)
    return any(code in text for code in ("CANNOT_PARSE", "INCORRECT_DATA", "TYPE_MISMATCH", "CANNOT_READ",
                                         "DECIMAL_OVERFLOW", "VALUE_IS_OUT_OF_RANGE"))
