"""The streaming detector worker (`agentwatch detect`, and a thread of `agentwatch up`).

It tails `agent_spans` and `credential_events` by IngestedAt, runs the detectors
of `agentwatch.detectors.rules` over the new rows and writes `anomalies`:

    worker = DetectorWorker(lambda: store.connect(dsn, database), DetectorConfig.from_env(), shard=(0, 1))
    worker.run_forever(stop_event)          # or: while worker.run_once(): ...

One batch (`run_once`):

1. read the rows ingested after this shard's position, up to now64() minus a
   safety lag (an insert still committing must not be skipped), whole
   IngestedAt groups, at least `max_rows` rows when there are that many, in
   (IngestedAt, Timestamp, TraceId, SpanId) order; for the tool spans among
   them, a hash of their arguments from otel_traces;
2. process them one by one (deterministic: see rules.py);
3. write a row version for every anomaly that changed materially;
4. checkpoint: positions and the pickled model state in `detector_state`
   (Detector='worker', Shard='k/N'), in one row, after the anomalies.

A crash before 4 replays the batch from the previous checkpoint: the same rows
in the same order give the same decisions and the same AnomalyIds, so the
replay writes new versions of the same anomalies, never duplicates; none is
missed since the position only moves with the state that saw the rows.

Sharding: `shard=(k, N)` takes tenants with cityHash64(Tenant) % N = k, filtered
in SQL. cross_tenant belongs to the actor's tenant, credential_fanout to the
credential's tenant, so a shard reads the credential events of both and each
anomaly is raised by exactly one shard.
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
from agentwatch.detectors.anomalies import AnomalyBook
from agentwatch.detectors.config import DetectorConfig
from agentwatch.detectors.rules import CredentialDetectors, CredentialRow, SpanDetectors, SpanRow

log = logging.getLogger(__name__)

__all__ = ["DetectorConfig", "DetectorWorker", "parse_shard"]

DETECTOR = "worker"
STATE_VERSION = 1
TOOL_ARGUMENTS = "gen_ai.tool.call.arguments"
ARGS_PREVIEW_CHARS = 300
CREDENTIAL_OWNER = "if(CredentialTenant != '', CredentialTenant, Tenant)"  # credential_fanout's tenant


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
    """Everything a worker checkpoints: positions per table and the detectors' state."""

    def __init__(self, config: DetectorConfig) -> None:
        self.version = STATE_VERSION
        self.positions = {"agent_spans": 0, "credential_events": 0}  # IngestedAt, microseconds
        # per table, IngestedAt (µs) -> rows processed, for the groups within `late_commit_window_s` of the
        # position: a group that turns up there unseen was committed late and is processed then
        self.recent_groups: dict[str, dict[int, int]] = {"agent_spans": {}, "credential_events": {}}
        self.spans = SpanDetectors(config)
        self.credentials = CredentialDetectors(config)
        self.book = AnomalyBook()

    def encode(self) -> str:
        """The model state: pickled (river objects included), zlib-compressed, base64."""
        return base64.b64encode(zlib.compress(pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL), 3)).decode()

    @staticmethod
    def decode(text: str) -> WorkerState:
        return pickle.loads(zlib.decompress(base64.b64decode(text)))


class DetectorWorker:
    """Tails the store, detects, writes anomalies, checkpoints. One per shard."""

    def __init__(self, connect: Callable[[], Client], config: DetectorConfig | None = None,
                 shard: tuple[int, int] = (0, 1)) -> None:
        k, n = shard
        if not 0 <= k < n:
            raise ValueError(f"shard {shard}: need 0 <= k < N")
        self.connect = connect
        self.config = config or DetectorConfig.from_env()
        self.shard = (int(k), int(n))
        self.shard_name = f"{k}/{n}"
        self._client: Client | None = None
        self._state: WorkerState | None = None
        self._pending = False  # batches processed since the last checkpoint
        self.stats = {"batches": 0, "rows": 0, "span_rows": 0, "credential_rows": 0, "anomalies_written": 0,
                      "last_batch_rows": 0, "last_batch_written": 0, "last_batch_s": 0.0, "checkpoints": 0,
                      "restores": 0, "errors": 0, "late_rows": 0, "late_collisions": 0,
                      "caught_up": False, "last_ingested_us": 0}

    # --- public ------------------------------------------------------------------------------------------

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = self.connect()
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
        late_spans = self._read_spans(client, state.positions["agent_spans"], max_rows,
                                      self._late_groups(client, "agent_spans", state))[0]
        late_credentials = self._read_credentials(client, state.positions["credential_events"], max_rows,
                                                  self._late_groups(client, "credential_events", state))[0]
        span_rows, span_to = self._read_spans(client, state.positions["agent_spans"], max_rows)
        credential_rows, credential_to = self._read_credentials(client, state.positions["credential_events"],
                                                                max_rows)
        span_rows = late_spans + span_rows
        credential_rows = late_credentials + credential_rows
        rows = len(span_rows) + len(credential_rows)
        self.stats["caught_up"] = rows == 0
        if rows == 0:
            self._state = state
            return 0
        self.stats["last_ingested_us"] = max(self.stats["last_ingested_us"], span_to, credential_to)
        state.spans.process(span_rows, state.book)
        state.credentials.process(credential_rows, state.book)
        state.positions["agent_spans"] = max(state.positions["agent_spans"], span_to)
        state.positions["credential_events"] = max(state.positions["credential_events"], credential_to)
        self._remember_groups(state, "agent_spans", span_rows)
        self._remember_groups(state, "credential_events", credential_rows)
        self.stats["late_rows"] += len(late_spans) + len(late_credentials)
        changed = state.book.take_dirty()
        for a in changed:
            detectors = state.spans if a.kind in ("fanout", "cost_spike", "loop") else state.credentials
            a.summary, a.evidence = detectors.render(a)
            if a.raised_by is not None:  # the span whose arrival raised it: where to start reading the trace
                trace_id, span_id, at_ns, ingested_us = a.raised_by
                a.evidence["raised_by"] = {"trace_id": trace_id, "span_id": span_id, "at": _utc_ns(at_ns),
                                           "ingested_at": _utc_us(ingested_us)}
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

        Checkpoints every `checkpoint_interval_s` (and on a full batch, and when stopping).
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
            self.save_checkpoint(json.dumps({**state.positions, "version": STATE_VERSION}), state.encode())
        except BaseException:
            self._state = None  # the checkpoint is the truth: the next batch restores it
            raise
        self._pending = False
        self.stats["checkpoints"] += 1

    def catch_up(self, max_rows: int = 50_000, timeout_s: float = 120.0) -> int:
        """Process every row ingested before this call (waiting out the safety lag); returns rows processed.

        For tests, benchmarks and replays: `run_once` returns 0 while the newest rows are still
        younger than the safety lag, which is not the same as having processed them.
        """
        targets = {"agent_spans": self._max_ingested("agent_spans"),
                   "credential_events": self._max_ingested("credential_events")}
        deadline = time.monotonic() + timeout_s
        total = 0
        while True:
            rows = self.run_once(max_rows)
            total += rows
            state = self._state
            if state is not None and all(state.positions[t] >= target for t, target in targets.items()):
                return total
            if rows == 0:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"detector {self.shard_name}: not caught up after {timeout_s}s")
                time.sleep(min(0.1, max(self.config.safety_lag_s, 0.01)))

    def _max_ingested(self, table: str) -> int:
        value = self.client.query(f"SELECT toUnixTimestamp64Micro(max(IngestedAt)) FROM {table} "
                                  f"WHERE 1{self._table_shard(table)}").result_rows[0][0]
        return int(value or 0)

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
            state = WorkerState(self.config)
            if self.config.start_at_latest:
                for table in state.positions:
                    state.positions[table] = int(self.client.query(
                        f"SELECT toUnixTimestamp64Micro(max(IngestedAt)) FROM {table}").result_rows[0][0] or 0)
                self._mark_groups_seen(state)
            return state
        position, blob = saved
        positions = json.loads(position)
        fresh = False
        try:
            state = WorkerState.decode(blob)
            if getattr(state, "version", None) != STATE_VERSION:
                raise ValueError(f"state version {getattr(state, 'version', None)}")
        except Exception as exc:  # an older release's state: keep the positions, learn afresh
            log.warning("detector %s: model state not readable (%s); keeping positions, models start cold",
                        self.shard_name, exc)
            state = WorkerState(self.config)
            fresh = True
        state.positions = {table: int(positions.get(table, 0)) for table in state.positions}
        if fresh or not hasattr(state, "recent_groups"):
            self._mark_groups_seen(state)  # a state without them: what the positions passed counts as seen
        state.spans.configure(self.config)
        state.credentials.configure(self.config)
        return state

    def status(self) -> dict:
        """Counters and the event-time watermarks (for logs and /metrics)."""
        state = self._state
        out = dict(self.stats, shard=self.shard_name)
        if state is not None:
            out.update(positions=dict(state.positions), span_watermark_ns=state.spans.watermark,
                       credential_watermark_ns=state.credentials.watermark, late_span_rows=state.spans.late_rows,
                       late_credential_rows=state.credentials.late_rows, open_anomalies=len(state.book.open),
                       active_traces=len(state.spans.traces))
        return out

    def close(self) -> None:
        """Drop the connection and the in-memory state (the next batch restores the checkpoint)."""
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
            self._client = None
        self._state = None

    # --- reading -------------------------------------------------------------------------------------------

    def _shard_filter(self, expression: str) -> str:
        k, n = self.shard
        return "" if n == 1 else f" AND cityHash64({expression}) % {n} = {k}"

    def _table_shard(self, table: str) -> str:
        if table == "agent_spans":
            return self._shard_filter("Tenant")
        k, n = self.shard
        return "" if n == 1 else (f" AND (cityHash64(Tenant) % {n} = {k} "
                                  f"OR cityHash64({CREDENTIAL_OWNER}) % {n} = {k})")

    def _group_counts(self, client: Client, table: str, position: int) -> dict[int, int]:
        """IngestedAt (µs) -> rows, for the groups in the late-commit window before `position`."""
        window_us = int(self.config.late_commit_window_s * 1e6)
        rows = client.query(
            f"SELECT toUnixTimestamp64Micro(IngestedAt) AS g, count() FROM {table} "
            "WHERE IngestedAt > fromUnixTimestamp64Micro({lo:Int64}) AND IngestedAt <= fromUnixTimestamp64Micro("
            f"{{pos:Int64}}){self._table_shard(table)} GROUP BY g",
            parameters={"lo": position - window_us, "pos": position}).result_rows
        return {int(g): int(n) for g, n in rows}

    def _late_groups(self, client: Client, table: str, state: WorkerState) -> list[int]:
        """Groups (IngestedAt µs) at or before the position that were not there when it passed them.

        IngestedAt is taken when an insert starts; an insert that commits after a later one is
        already visible (another receiver, a slow store) would be passed over by the position alone.
        """
        position = state.positions[table]
        if position == 0 or self.config.late_commit_window_s <= 0:
            return []
        seen = state.recent_groups[table]
        late = []
        for group, n in self._group_counts(client, table, position).items():
            done = seen.get(group)
            if done is None:
                late.append(group)
            elif n > done:  # two inserts with the same microsecond, one late: its rows cannot be told apart
                self.stats["late_collisions"] += 1
                seen[group] = n
                log.warning("detector %s: %d rows of %s committed late into an IngestedAt group already "
                            "processed; they are not processed", self.shard_name, n - done, table)
        return sorted(late)

    def _mark_groups_seen(self, state: WorkerState) -> None:
        state.recent_groups = {table: self._group_counts(self.client, table, position) if position else {}
                               for table, position in state.positions.items()}

    def _remember_groups(self, state: WorkerState, table: str, rows: list) -> None:
        seen = state.recent_groups[table]
        for row in rows:
            seen[row.ingested_us] = seen.get(row.ingested_us, 0) + 1
        horizon = state.positions[table] - int(self.config.late_commit_window_s * 1e6)
        for group in [g for g in seen if g <= horizon]:
            del seen[group]

    def _batch(self, table: str, where_shard: str) -> str:
        """WHERE clause of the next batch: IngestedAt after the position, up to a cut of whole groups."""
        return (f"IngestedAt > fromUnixTimestamp64Micro({{pos:Int64}}) AND IngestedAt <= ("
                f"SELECT max(IngestedAt) FROM (SELECT IngestedAt FROM {table} "
                f"WHERE IngestedAt > fromUnixTimestamp64Micro({{pos:Int64}}) "
                f"AND IngestedAt <= now64(6) - toIntervalMillisecond({{lag:Int64}}){where_shard} "
                f"ORDER BY IngestedAt LIMIT {{n:UInt64}})){where_shard}")

    def _groups_where(self, groups: list[int]) -> str:
        """WHERE clause for whole IngestedAt groups (late commits) before the position."""
        window_us = int(self.config.late_commit_window_s * 1e6)
        return (f"IngestedAt > fromUnixTimestamp64Micro({min(groups) - 1}) "
                f"AND IngestedAt <= fromUnixTimestamp64Micro({max(groups)}) "
                f"AND toUnixTimestamp64Micro(IngestedAt) IN {{groups:Array(Int64)}} "
                f"AND IngestedAt > fromUnixTimestamp64Micro({{pos:Int64}} - {window_us})")

    def _read_spans(self, client: Client, position: int, max_rows: int, groups: list[int] | None = None
                    ) -> tuple[list[SpanRow], int]:
        """The next batch after `position`; or, given `groups`, the rows of those IngestedAt groups."""
        if groups == []:
            return [], position
        shard = self._shard_filter("Tenant")
        params = {"pos": position, "lag": int(self.config.safety_lag_s * 1000), "n": max(1, int(max_rows)),
                  "groups": groups or []}
        where = self._batch("agent_spans", shard) if groups is None else self._groups_where(groups) + shard
        rows = client.query(
            "SELECT toUnixTimestamp64Micro(IngestedAt), toUnixTimestamp64Nano(Timestamp), TraceId, SpanId, "
            "ParentSpanId, Tenant, AgentId, AgentName, Operation, ToolName, Model, ifNull(CostUSD, 0) "
            f"FROM agent_spans WHERE {where} "
            "ORDER BY IngestedAt, Timestamp, TraceId, SpanId", parameters=params).result_rows
        if not rows:
            return [], position
        to = rows[-1][0]
        arguments = self._tool_arguments(client, rows[0][0] - 1, to, rows, shard)
        out = []
        for r in rows:
            args = arguments.get((r[2], r[3])) if r[8] == "execute_tool" else None
            if args is None:
                out.append(SpanRow(*r, 0, 0, ""))
            else:
                out.append(SpanRow(*r, *args))
        return out, to

    def _tool_arguments(self, client: Client, position: int, to: int, rows: list, shard: str
                        ) -> dict[tuple[str, str], tuple[int, int, str]]:
        """(trace, span) -> (cityHash64, bytes, preview) of gen_ai.tool.call.arguments of the batch's tool spans."""
        tool_ts = [r[1] for r in rows if r[8] == "execute_tool"]
        if not tool_ts:
            return {}
        result = client.query(
            f"SELECT TraceId, SpanId, cityHash64(a), length(a), substringUTF8(a, 1, {ARGS_PREVIEW_CHARS}) FROM ("
            f"SELECT TraceId, SpanId, SpanAttributes['{TOOL_ARGUMENTS}'] AS a FROM otel_traces "
            "WHERE Timestamp >= fromUnixTimestamp64Nano({lo:Int64}) "
            "AND Timestamp <= fromUnixTimestamp64Nano({hi:Int64}) "
            "AND (TraceId, SpanId) IN (SELECT TraceId, SpanId FROM agent_spans "
            "WHERE IngestedAt > fromUnixTimestamp64Micro({pos:Int64}) "
            "AND IngestedAt <= fromUnixTimestamp64Micro({to:Int64}) "
            f"AND Operation = 'execute_tool'{shard})) WHERE a != ''",
            parameters={"lo": min(tool_ts), "hi": max(tool_ts), "pos": position, "to": to}).result_rows
        return {(r[0], r[1]): (int(r[2]) or 1, int(r[3]), r[4]) for r in result}

    def _read_credentials(self, client: Client, position: int, max_rows: int, groups: list[int] | None = None
                          ) -> tuple[list[CredentialRow], int]:
        if groups == []:
            return [], position
        k, n = self.shard
        shard = self._table_shard("credential_events")
        mine = "1, 1" if n == 1 else f"cityHash64(Tenant) % {n} = {k}, cityHash64({CREDENTIAL_OWNER}) % {n} = {k}"
        params = {"pos": position, "lag": int(self.config.safety_lag_s * 1000), "n": max(1, int(max_rows)),
                  "groups": groups or []}
        where = self._batch("credential_events", shard) if groups is None else self._groups_where(groups) + shard
        rows = client.query(
            "SELECT toUnixTimestamp64Micro(IngestedAt), toUnixTimestamp64Nano(Timestamp), TraceId, SpanId, Tenant, "
            f"AgentId, Event, CredentialId, CredentialTenant, Resource, ResourceTenant, Action, {mine} "
            f"FROM credential_events WHERE {where} "
            "ORDER BY IngestedAt, Timestamp, TraceId, SpanId, Event, CredentialId, AgentId, Resource",
            parameters=params).result_rows
        if not rows:
            return [], position
        return [CredentialRow(*r[:12], bool(r[12]), bool(r[13])) for r in rows], rows[-1][0]
