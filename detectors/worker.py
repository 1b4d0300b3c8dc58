"""The streaming detector worker (`agentwatch detect`, and a thread of `agentwatch up`).

It tails `agent_spans`, `credential_events` and `secret_findings` in commit order (block numbers,
see `agentwatch.detectors.tailing`), runs the detectors of
`agentwatch.detectors.streams` over the new rows and writes `anomalies`:

    worker = DetectorWorker(lambda: store.connect(dsn, database), DetectorConfig.from_env(), shard=(0, 1))
    worker.run_forever(stop_event)          # or: while worker.run_once(): ...

One batch (`run_once`):

1. read the rows committed after this shard's position: whole blocks (inserts),
   at least `max_rows` rows when there are that many, in (block, Timestamp,
   TraceId, SpanId) order; no row is skipped or read twice, however late an
   insert commits; for the tool spans among them, a hash of their arguments
   from otel_traces; for the credential uses, the parent of the span they
   happened on (to find their agent when the span carries none);
2. process them one by one (deterministic: see stream.py);
3. write the halts the containment policy decides for them (containment.py),
   then a row version for every anomaly that changed materially;
4. checkpoint: positions and the pickled model state in `detector_state`
   (Detector='worker', Shard='k/N'), in one row, after the anomalies.

A crash before 4 replays the batch from the previous checkpoint: the same rows
in the same order give the same decisions and the same AnomalyIds, so the
replay writes new versions of the same anomalies, never duplicates; none is
missed since the position only moves with the state that saw the rows.

Sharding: `shard=(k, N)` takes the tenants with cityHash64(Tenant) % N = k, and
each anomaly is raised by exactly one shard (shard_reader.py). On a ClickHouse
cluster (`cluster=NAME`) shard k is connected to a node of cluster shard k+1
(checked, cluster_shard.py) and reads that node's local tables.
"""

from __future__ import annotations

import base64
import json
import logging
import pickle
import threading
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime

from clickhouse_connect.driver.client import Client

from agentwatch.detectors import anomalies as anomaly_store
from agentwatch.detectors import secret_exposure
from agentwatch.detectors.anomalies import AnomalyBook
from agentwatch.detectors.cluster_shard import check_cluster_shard
from agentwatch.detectors.config import DetectorConfig
from agentwatch.detectors.containment import Containment
from agentwatch.detectors.shard_reader import TABLES, ShardReader
from agentwatch.detectors.streams import CredentialStream, SpanStream
from agentwatch.detectors.tailing import SETTINGS as BY_BLOCK
from agentwatch.schemas import store

log = logging.getLogger(__name__)

__all__ = ["DetectorConfig", "DetectorWorker", "parse_shard"]

DETECTOR = "worker"
STATE_VERSION = 2  # 2: positions are block numbers (1: IngestedAt stamps)
def _utc_ns(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat(timespec="microseconds")


def _utc_us(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, tz=UTC).isoformat(timespec="microseconds")


def parse_shard(text: str) -> tuple[int, int]:
    """'k/N' -> (k, N), 0 <= k < N."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"shard must look like k/N (e.g. 0/4), not {text!r}") from None
    if not 0 <= k < n:
        raise ValueError(f"shard {text!r}: need 0 <= k < N")
    return k, n


class WorkerState:
    """Everything a worker checkpoints: positions per table, rows processed, the detectors' state."""

    def __init__(self, config: DetectorConfig, positions: dict) -> None:
        self.version = STATE_VERSION
        # where each table's tail resumes: the last block number read (on a cluster, the block ranges read)
        self.positions = dict(positions)
        self.processed = {table: 0 for table in self.positions}  # rows read, ever (= the rows up to the position)
        self.spans = SpanStream(config)
        self.credentials = CredentialStream(config)
        self.secrets = secret_exposure.SecretStream(config)
        self.book = AnomalyBook()

    @property
    def streams(self) -> tuple:
        return self.spans, self.credentials, self.secrets

    def upgrade(self, config: DetectorConfig, starts: dict) -> None:
        """A checkpoint of a release that tailed fewer tables: the new ones start at their beginning."""
        for table, start in starts.items():
            self.positions.setdefault(table, start)
            self.processed.setdefault(table, 0)
        if not hasattr(self, "secrets"):
            self.secrets = secret_exposure.SecretStream(config)

    def encode(self) -> str:
        """The model state: pickled (river objects included), zlib-compressed, base64."""
        return base64.b64encode(zlib.compress(pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL), 3)).decode()

    @staticmethod
    def decode(text: str) -> WorkerState:
        return pickle.loads(zlib.decompress(base64.b64decode(text)))


class DetectorWorker:
    """Tails the store, detects, writes anomalies, checkpoints. One per shard."""

    def __init__(self, connect: Callable[[], Client], config: DetectorConfig | None = None,
                 shard: tuple[int, int] = (0, 1), cluster: str = "") -> None:
        k, n = shard
        if not 0 <= k < n:
            raise ValueError(f"shard {shard}: need 0 <= k < N")
        self.connect = connect
        self.config = config or DetectorConfig.from_env()
        self.shard = (int(k), int(n))
        self.shard_name = f"{k}/{n}"
        # On a cluster (`cluster`, the name in remote_servers) the worker reads its own shard's local, Replicated
        # tables on the node it is connected to, by the block ranges of their parts (part_tail.py).
        self.cluster = cluster
        self.reader = ShardReader(self.shard, cluster)
        self.containment = Containment()  # the containment policy (AGENTWATCH_CONTAINMENT_POLICY)
        self._client: Client | None = None
        self._state: WorkerState | None = None
        self._pending = False  # batches processed since the last checkpoint
        self._audited = 0.0
        self.stats = {"batches": 0, "rows": 0, "span_rows": 0, "credential_rows": 0, "anomalies_written": 0,
                      "last_batch_rows": 0, "last_batch_written": 0, "last_batch_s": 0.0, "checkpoints": 0,
                      "restores": 0, "errors": 0, "caught_up": False, "last_ingested_us": 0,
                      # the audit (every audit_interval_s): rows stored up to the position vs rows processed
                      "stored": {}, "processed": {}, "pending": {}}

    # --- public ------------------------------------------------------------------------------------------

    @property
    def client(self) -> Client:
        if self._client is None:
            client = self.connect()
            if self.cluster:
                try:
                    check_cluster_shard(client, self.cluster, self.shard)
                except BaseException:
                    store.close_quietly(client)
                    raise
            self._client = client
        return self._client

    def run_once(self, max_rows: int = 50_000, checkpoint: bool = True) -> int:
        """Process one batch of new rows, write anomalies, checkpoint; returns the rows processed.

        checkpoint=False leaves the checkpoint behind (run_forever checkpoints on an interval): a crash
        then replays more rows, which gives the same anomalies again (same ids), never new ones.
        """
        began = time.perf_counter()
        client = self.client
        if self._state is None:
            self._pending = False
        state = self._state if self._state is not None else self.restore()
        self._state = None  # until this batch is done, the checkpoint (or the last good state) is the truth
        batch = self.reader.read(client, state.positions, max_rows)
        span_rows, credential_rows, secret_rows, to = batch.spans, batch.credentials, batch.secrets, batch.to
        rows = len(span_rows) + len(credential_rows) + len(secret_rows)
        moved = any(to[table] != state.positions[table] for table in to)
        self.stats["caught_up"] = rows == 0
        if rows == 0:
            if moved:  # blocks of other shards only: move past them (checkpointed with the next batch)
                state.positions.update(to)
                self._pending = True
            self._state = state
            return 0
        self.stats["last_ingested_us"] = max([self.stats["last_ingested_us"]]
                                             + [r.ingested_us for r in span_rows[-1:] + credential_rows[-1:]
                                                + secret_rows[-1:]])
        state.spans.process(span_rows, state.book)
        state.credentials.process(credential_rows, state.book, state.spans)
        state.secrets.process(secret_rows, state.book, state.spans)
        state.positions.update(to)
        for table, n in batch.rows.items():
            state.processed[table] = state.processed.get(table, 0) + n
        changed = state.book.take_dirty()
        for a in changed:
            stream = next(s for s in state.streams if a.kind in s.by_kind)
            a.summary, a.evidence = stream.render(a)
            if a.raised_by is not None:  # the span whose arrival raised it: where to start reading the trace
                trace_id, span_id, at_ns, ingested_us = a.raised_by
                a.evidence["raised_by"] = {"trace_id": trace_id, "span_id": span_id, "at": _utc_ns(at_ns),
                                           "ingested_at": _utc_us(ingested_us)}
        self.containment.apply(client, changed)  # halts first: in the store as soon as their anomalies are
        written = anomaly_store.write(client, state.book, changed, min_score_step=self.config.update_score_step,
                                      min_last_seen_step_ns=int(self.config.update_last_seen_step_s * 1e9))
        self.stats["last_batch_written"] = len(written)
        if checkpoint:
            self._checkpoint(state)
        else:
            self._pending = True
        self._state = state
        s = self.stats
        s["batches"] += 1
        s["rows"] += rows
        s["span_rows"] += len(span_rows)
        s["credential_rows"] += len(credential_rows)
        s["anomalies_written"] += len(written)
        s["last_batch_rows"] = rows
        s["last_batch_s"] = time.perf_counter() - began
        log.debug("detector %s: %d rows, %d anomaly versions written in %.3fs", self.shard_name, rows, len(written),
                  s["last_batch_s"])
        return rows

    def run_forever(self, stop: threading.Event, poll_s: float = 0.5) -> None:
        """Run batches until `stop` is set; wait `poll_s` when caught up; back off on errors.

        Checkpoints every `checkpoint_interval_s` (and on a full batch, and when stopping); audits
        (rows stored vs processed) every `audit_interval_s`.
        """
        backoff = poll_s
        last_checkpoint = time.monotonic()
        while not stop.is_set():
            try:
                due = time.monotonic() - last_checkpoint >= self.config.checkpoint_interval_s
                rows = self.run_once(self.config.batch_rows, checkpoint=False)
                if self._pending and (due or rows >= self.config.batch_rows):
                    self.flush_checkpoint()
                if not self._pending:
                    last_checkpoint = time.monotonic()
                if self.config.audit_interval_s > 0 and \
                        time.monotonic() - self._audited >= self.config.audit_interval_s:
                    self.audit()
                backoff = poll_s
            except Exception:
                self.stats["errors"] += 1
                log.exception("detector %s: batch failed; resuming from the last checkpoint", self.shard_name)
                self.close()
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            if rows == 0:
                stop.wait(poll_s)
        try:
            self.flush_checkpoint()
        except Exception:  # noqa: BLE001 - the next start replays from the previous checkpoint
            log.exception("detector %s: final checkpoint failed", self.shard_name)
        self.close()

    def flush_checkpoint(self) -> None:
        """Checkpoint now if batches were processed since the last checkpoint."""
        if self._pending and self._state is not None:
            self._checkpoint(self._state)

    def _checkpoint(self, state: WorkerState) -> None:
        try:
            self.save_checkpoint(json.dumps({**state.positions, "processed": state.processed,
                                             "version": STATE_VERSION}), state.encode())
        except BaseException:
            self._state = None  # the checkpoint is the truth: the next batch restores it
            raise
        self._pending = False
        self.stats["checkpoints"] += 1

    def audit(self) -> dict[str, dict[str, int]]:
        """Per table: rows stored up to the position, rows processed (equal unless a row was skipped or read
        twice), rows stored after it (still to read). Kept in `stats` for /metrics."""
        self._audited = time.monotonic()
        state = self._state if self._state is not None else self.restore()
        self._state = state
        out = {}
        for table, tail in self.tails.items():
            done, params = tail.done(state.positions[table])
            stored, pending = self.client.query(
                f"SELECT countIf({done}), countIf(NOT {done}) FROM {tail.table} "
                f"WHERE 1{self.reader.table_filter(table)}", parameters=params, settings=BY_BLOCK).result_rows[0]
            out[table] = {"stored": int(stored), "processed": state.processed[table], "pending": int(pending)}
            self.stats["stored"][table] = int(stored)
            self.stats["processed"][table] = state.processed[table]
            self.stats["pending"][table] = int(pending)
            if int(stored) != state.processed[table]:
                log.warning("detector %s: %s holds %d rows up to %s, %d were processed", self.shard_name,
                            table, stored, state.positions[table], state.processed[table])
        return out

    def catch_up(self, max_rows: int = 50_000, timeout_s: float = 120.0) -> int:
        """Process every row committed before this call; returns rows processed (tests, benchmarks, replays)."""
        targets = {table: tail.top(self.client) for table, tail in self.tails.items()}
        deadline = time.monotonic() + timeout_s
        total = 0
        while True:
            total += self.run_once(max_rows)
            state = self._state
            if state is not None and all(self.tails[t].covers(state.positions[t], target)
                                         for t, target in targets.items()):
                self.flush_checkpoint()
                return total
            if time.monotonic() > deadline:
                raise TimeoutError(f"detector {self.shard_name}: not caught up after {timeout_s}s")

    def save_checkpoint(self, position: str, state: str) -> None:
        """Write positions and model state in one detector_state row (the last step of a batch)."""
        self.client.insert("detector_state", [[DETECTOR, self.shard_name, position, state]],
                           column_names=["Detector", "Shard", "Position", "State"])

    def load_checkpoint(self) -> tuple[str, str] | None:
        rows = self.client.query("SELECT Position, State FROM detector_state FINAL WHERE Detector = {d:String} "
                                 "AND Shard = {s:String}", parameters={"d": DETECTOR, "s": self.shard_name}
                                 ).result_rows
        return (rows[0][0], rows[0][1]) if rows else None

    def restore(self) -> WorkerState:
        """The state of the last checkpoint (a fresh one if there is none)."""
        saved = self.load_checkpoint()
        self.stats["restores"] += 1
        if saved is None:
            state = self._new_state()
            if self.config.start_at_latest:
                for table, tail in self.tails.items():
                    state.positions[table] = tail.top(self.client)
                    state.processed[table] = self._stored_through(table, state.positions[table])
            return state
        position, blob = saved
        positions = json.loads(position)
        if positions.get("version") != STATE_VERSION and not self.cluster:
            # an older release's checkpoint: positions were IngestedAt stamps, not block numbers
            log.warning("detector %s: checkpoint of an older release; resuming after the rows it had read, "
                        "models start cold", self.shard_name)
            return self._from_old_checkpoint(positions)
        try:
            state = WorkerState.decode(blob)
        except Exception as exc:  # noqa: BLE001 - unreadable state: keep the positions, learn afresh
            log.warning("detector %s: model state not readable (%s); keeping positions, models start cold",
                        self.shard_name, exc)
            state = self._new_state()
            state.positions = {table: positions.get(table, state.positions[table]) for table in self.tails}
            state.processed = {table: self._stored_through(table, state.positions[table]) for table in self.tails}
        state.upgrade(self.config, self._starts())
        for stream in state.streams:
            stream.configure(self.config)
        return state

    @property
    def tails(self) -> dict:
        return self.reader.tails

    def _starts(self) -> dict:
        return {table: tail.start() for table, tail in self.tails.items()}

    def _new_state(self) -> WorkerState:
        return WorkerState(self.config, self._starts())

    def _from_old_checkpoint(self, positions: dict) -> WorkerState:
        state = self._new_state()
        for table in TABLES:
            ingested_us = int(positions.get(table, 0))
            state.positions[table] = int(self.client.query(
                f"SELECT max(_block_number) FROM {table} WHERE IngestedAt <= fromUnixTimestamp64Micro({{u:Int64}})",
                parameters={"u": ingested_us}, settings=BY_BLOCK).result_rows[0][0] or 0)
            state.processed[table] = self._stored_through(table, state.positions[table])
        return state

    def _stored_through(self, table: str, position) -> int:
        tail = self.tails[table]
        done, params = tail.done(position)
        return int(self.client.query(f"SELECT count() FROM {tail.table} WHERE {done}{self.reader.table_filter(table)}",
                                     parameters=params, settings=BY_BLOCK).result_rows[0][0])

    def status(self) -> dict:
        """Counters and the event-time watermarks (for logs and /metrics)."""
        state = self._state
        out = dict(self.stats, shard=self.shard_name, merge_retries=sum(t.retries for t in self.tails.values()))
        if state is not None:
            out.update(positions=dict(state.positions), span_watermark_ns=state.spans.watermark,
                       credential_watermark_ns=state.credentials.watermark,
                       late_span_rows=state.spans.late_rows, late_credential_rows=state.credentials.late_rows,
                       open_anomalies=len(state.book.open), active_traces=len(state.spans.traces))
        return out

    def close(self) -> None:
        """Drop the connection and the in-memory state (the next batch restores the checkpoint)."""
        store.close_quietly(self._client)
        self._client = None
        self._state = None
