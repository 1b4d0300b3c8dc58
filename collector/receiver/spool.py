"""Write-ahead spool: a request is on disk, fsynced, before the receiver acknowledges it.

Each accepted request becomes one record: its converted row blocks, a sequence
number and a digest of the request. Records are appended to segment files by
one thread that writes every record waiting and then fsyncs once (group
commit), so many concurrent exporters share one fsync. Only then are their
requests answered and their rows handed to the writer.

The writer inserts records into ClickHouse in sequence order, in batches. Before
a batch it records the batch's bounds (`begin`), then inserts every table with
the deduplication token `<spool id>-<first>-<last>`, then marks the batch done
(`commit`). After a crash, `open` returns the records not yet committed and the
bounds of a batch that was begun, so the writer repeats exactly that batch with
the same tokens: what reached ClickHouse before the crash is skipped by
ClickHouse's insert deduplication, in the tables and in their materialized
views alike, and the rest is written.

A record's digest lets a retried request (the exporter timed out, or the
receiver died after the fsync but before its answer) be recognised and answered
without storing it again. Digests are kept for `dedup_window_s`: in the
segments while they exist, then in a small digest log.

Written by hand: the OpenTelemetry Collector's persistent queue does this in
Go, and no maintained Python library offers an fsync'd, group-committed
append log with replay.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import orjson

log = logging.getLogger(__name__)

MAGIC = b"AWS1"
FRAME = struct.Struct("<4sIQI")  # magic, header length, body length, crc32 of header and body
DIGEST = struct.Struct("<16sd")  # digest, time accepted
DURABLE: Future = Future()  # the answer to a retry of a request already on disk
DURABLE.set_result(None)


class SpoolError(OSError):
    """The spool cannot take the request (disk full, I/O error): answered 503."""


@dataclass
class Record:
    seq: int
    digest: bytes
    accepted_at: float
    blocks: list[tuple[str, bytes, int]]  # (table, JSONEachRow body, rows)

    @property
    def size(self) -> int:
        return sum(len(body) for _, body, _ in self.blocks)

    @property
    def rows(self) -> int:
        return sum(rows for _, _, rows in self.blocks)

    def frame(self) -> list[bytes]:
        """The record as written: frame header, record header, then its blocks as they are (not copied)."""
        header = orjson.dumps({"seq": self.seq, "digest": self.digest.hex(), "at": self.accepted_at,
                               "blocks": [[table, len(body), rows] for table, body, rows in self.blocks]})
        crc = zlib.crc32(header)
        for _, body, _ in self.blocks:
            crc = zlib.crc32(body, crc)
        return [FRAME.pack(MAGIC, len(header), self.size, crc), header, *(body for _, body, _ in self.blocks)]


@dataclass
class Recovered:
    """What `open` found: records not yet in ClickHouse, and a batch begun before the crash."""

    records: list[Record] = field(default_factory=list)
    begun: tuple[int, int] | None = None
    torn_bytes: int = 0  # an unacknowledged record cut short by the crash, discarded


def read_segment(path: Path) -> tuple[list[Record], int, int]:
    """Records of one segment file, the offset where valid data ends, and its size."""
    data = path.read_bytes()
    records, offset = [], 0
    while offset + FRAME.size <= len(data):
        magic, header_len, body_len, crc = FRAME.unpack_from(data, offset)
        start = offset + FRAME.size
        end = start + header_len + body_len
        if magic != MAGIC or end > len(data) or zlib.crc32(data[start:end]) != crc:
            break
        header = orjson.loads(data[start:start + header_len])
        position = start + header_len
        blocks = []
        for table, size, rows in header["blocks"]:
            blocks.append((table, data[position:position + size], rows))
            position += size
        records.append(Record(header["seq"], bytes.fromhex(header["digest"]), header["at"], blocks))
        offset = end
    return records, offset, len(data)


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_suffix(".tmp")
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    _fsync_directory(path.parent)


class Spool:
    def __init__(self, directory: str | Path, *, segment_bytes: int = 64 << 20, dedup_window_s: float = 900,
                 metrics=None) -> None:
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.dedup_window_s = dedup_window_s
        self._metrics = metrics
        self.id = ""
        self._next_seq = 1
        self._committed = 0
        self._segments: list[tuple[int, Path]] = []  # (first seq, path), oldest first
        self._active = None  # open file of the newest segment
        self._active_size = 0
        self._recent: OrderedDict[bytes, float] = OrderedDict()  # digest -> accepted at, durable ones
        self._spooling: dict[bytes, Future] = {}  # digest -> done once durable, for requests being written
        self._pending: list[tuple[Record, Future]] = []
        self._lock = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._lock_file = None
        self.on_durable: Callable[[list[Record]], None] = lambda records: None

    # --- start and recovery -----------------------------------------------------

    def open(self) -> Recovered:
        self.directory.mkdir(parents=True, exist_ok=True)
        # One receiver per spool: a second one would interleave its records.
        self._lock_file = open(self.directory / "LOCK", "a")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise SpoolError(f"spool {self.directory} is in use by another receiver; "
                             "give each receiver its own AGENTWATCH_SPOOL_DIR") from None
        id_file = self.directory / "ID"
        if not id_file.exists():
            _write_atomically(id_file, uuid.uuid4().hex.encode())
        self.id = id_file.read_text().strip()
        cursor = self._read_cursor()
        self._committed = cursor.get("committed", 0)
        now = time.time()
        for digest, accepted_at in self._read_digests():
            self._remember(digest, accepted_at, now)
        recovered = Recovered(begun=tuple(cursor["begun"]) if cursor.get("begun") else None)
        for path in sorted(self.directory.glob("*.seg")):
            records, valid_end, size = read_segment(path)
            if valid_end < size:
                # Only the newest segment can end in a record cut short (the
                # crash came before its fsync, so it was never acknowledged).
                log.warning("spool segment %s: discarding %d bytes of a record cut short", path.name,
                            size - valid_end)
                recovered.torn_bytes += size - valid_end
                with open(path, "r+b") as file:
                    file.truncate(valid_end)
                    os.fsync(file.fileno())
            self._segments.append((int(path.stem), path))
            for record in records:
                self._remember(record.digest, record.accepted_at, now)
                self._next_seq = max(self._next_seq, record.seq + 1)
                if record.seq > self._committed:
                    recovered.records.append(record)
        self._next_seq = max(self._next_seq, self._committed + 1)
        self._drop_committed_segments()
        self._thread = threading.Thread(target=self._run, name="agentwatch-spool", daemon=True)
        self._thread.start()
        return recovered

    def _read_cursor(self) -> dict:
        path = self.directory / "cursor.json"
        return orjson.loads(path.read_bytes()) if path.exists() else {}

    def _write_cursor(self, begun: tuple[int, int] | None) -> None:
        _write_atomically(self.directory / "cursor.json",
                          orjson.dumps({"committed": self._committed, "begun": begun}))

    def _read_digests(self) -> list[tuple[bytes, float]]:
        path = self.directory / "digests"
        if not path.exists():
            return []
        data = path.read_bytes()
        whole = len(data) - len(data) % DIGEST.size
        return [DIGEST.unpack_from(data, offset) for offset in range(0, whole, DIGEST.size)]

    # --- accepting requests -----------------------------------------------------

    def _remember(self, digest: bytes, accepted_at: float, now: float) -> None:
        if now - accepted_at > self.dedup_window_s:
            return
        self._recent[digest] = accepted_at
        self._recent.move_to_end(digest)

    def append(self, digest: bytes, blocks: list[tuple[str, bytes, int]]) -> tuple[Future, bool]:
        """Spool one request. Returns a future done once it is durable, and
        whether the request is a retry of one already accepted (nothing new is
        spooled then; the future is the original's)."""
        now = time.time()
        with self._lock:
            if self._closing:
                raise SpoolError("the spool is closed")
            self._expire(now)
            if digest in self._spooling:
                return self._spooling[digest], True
            if digest in self._recent:
                return DURABLE, True
            record = Record(self._next_seq, digest, now, blocks)
            self._next_seq += 1
            future: Future = Future()
            self._spooling[digest] = future
            self._pending.append((record, future))
            self._lock.notify()
        return future, False

    def _expire(self, now: float) -> None:
        # Only digests are kept, 16 bytes and a time each: a window of 900 s at
        # 1,000 requests/s is under 150 MB; a pending request's future is dropped
        # as soon as the request is durable.
        while self._recent:
            digest, accepted_at = next(iter(self._recent.items()))
            if now - accepted_at <= self.dedup_window_s:
                return
            del self._recent[digest]

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closing:
                    self._lock.wait()
                if not self._pending:
                    return
                batch, self._pending = self._pending, []
            try:
                self._write(record for record, _ in batch)
            except OSError as error:
                log.error("spool write failed (%s): %d requests refused", error, len(batch))
                self._abandon_segment()
                with self._lock:
                    for record, _ in batch:
                        self._spooling.pop(record.digest, None)
                for _, future in batch:
                    future.set_exception(SpoolError(str(error)))
                continue
            records = [record for record, _ in batch]
            with self._lock:
                for record in records:
                    del self._spooling[record.digest]
                    self._recent[record.digest] = record.accepted_at
            self.on_durable(records)
            for _, future in batch:
                future.set_result(None)

    def _write(self, records) -> None:
        started = time.perf_counter()
        for record in records:
            if self._active is None or self._active_size >= self.segment_bytes:
                self._rotate(record.seq)
            parts = record.frame()
            self._active.writelines(parts)
            self._active_size += sum(len(part) for part in parts)
        self._active.flush()
        os.fdatasync(self._active.fileno())
        if self._metrics:
            self._metrics.spool_fsync_seconds.observe(time.perf_counter() - started)

    def _abandon_segment(self) -> None:
        # The failed write may have left part of a record: later records go to
        # a new segment, and recovery cuts this one where its valid data ends.
        if self._active is not None:
            try:
                self._active.close()
            except OSError:
                pass
            self._active = None

    def _rotate(self, first_seq: int) -> None:
        if self._active is not None:
            self._active.flush()
            os.fdatasync(self._active.fileno())
            self._active.close()
        path = self.directory / f"{first_seq:016d}.seg"
        self._active = open(path, "ab")
        self._active_size = 0
        _fsync_directory(self.directory)
        with self._lock:
            self._segments.append((first_seq, path))

    # --- the writer's side --------------------------------------------------------

    def token(self, first: int, last: int) -> str:
        return f"{self.id}-{first}-{last}"

    def begin(self, first: int, last: int) -> None:
        """Record the bounds of the batch about to be inserted."""
        self._write_cursor((first, last))

    def commit(self, last: int) -> None:
        """Every record up to `last` is in ClickHouse."""
        self._committed = last
        self._write_cursor(None)
        self._drop_committed_segments()

    def _drop_committed_segments(self) -> None:
        """Delete segments whose every record is committed, their digests kept in the digest log."""
        with self._lock:
            segments = list(self._segments)
        done = []
        for index, (first, path) in enumerate(segments[:-1]):
            next_first = segments[index + 1][0]
            if next_first - 1 <= self._committed:
                done.append((first, path))
        if not done:
            return
        now = time.time()
        with self._lock:
            kept = [(digest, at) for digest, at in self._recent.items() if now - at <= self.dedup_window_s]
        # The digest log is rewritten whole from what is still within the
        # window: it holds at most one window of digests, 24 bytes each.
        _write_atomically(self.directory / "digests", b"".join(DIGEST.pack(d, at) for d, at in kept))
        for first, path in done:
            path.unlink(missing_ok=True)
        _fsync_directory(self.directory)
        with self._lock:
            self._segments = [segment for segment in self._segments if segment not in done]

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(60)
        if self._active is not None:
            self._active.close()
            self._active = None
        if self._lock_file is not None:
            self._lock_file.close()  # releases the lock
            self._lock_file = None

    @property
    def segments(self) -> int:
        return len(self._segments)
