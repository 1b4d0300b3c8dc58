"""The checks every OTLP answer must pass, shared by tests/test_otlp_fuzz.py and bench/fuzz_otlp.py.

A request is refused whole with a reason, or converted; a converted request's
accepted and rejected counts cover every record it holds, by the contract in
tests/otlp_cases.py; and the store takes every row the converter emits, since
rows are acknowledged before they are inserted.
"""

from __future__ import annotations

import uuid
from collections import Counter

from agentwatch.collector.receiver import otlp
from tests.otlp_cases import Case, records

TABLES = {
    "traces": ("otel_traces",),
    "metrics": ("otel_metrics_gauge", "otel_metrics_sum", "otel_metrics_histogram"),
    "logs": ("otel_logs",),
}
ALL_TABLES = tuple(table for tables in TABLES.values() for table in tables)


class Broken(AssertionError):
    """An answer or a stored row that breaks the contract: what a fuzz run reports as a crash."""

    def __init__(self, message: str, case: Case | None = None):
        super().__init__(message)
        self.case = case  # the input to blame, when it is not the one being checked


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Broken(message)


def answer(case: Case) -> otlp.Converted | None:
    """Convert as the receiver does; None for a request refused whole (HTTP 400)."""
    try:
        converted = otlp.convert(case.signal, case.body, case.is_json, None)
    except otlp.BadRequest as error:
        check(bool(str(error)), "a refused request must say why")
        check(case.request is None, f"a well-formed {case.signal} request was refused whole: {error}")
        return None
    message = case.request if case.request is not None else otlp.decode(case.signal, case.body, case.is_json)
    refusals = Counter(refusal for _, refusal in records(case.signal, message))
    storable = refusals.pop(None, 0)
    check((converted.accepted, converted.rejected) == (storable, refusals.total()),
          f"{case.signal}: accepted/rejected {converted.accepted}/{converted.rejected}, but the request holds "
          f"{storable} storable records and refusable ones for {', '.join(sorted(refusals)) or 'nothing'}")
    check(bool(converted.rejected) == bool(converted.error_message), "refused records must come with a reason")
    check(sum(rows for _, _, rows in converted.blocks) == converted.accepted, "blocks must hold the accepted rows")
    check(all(table in TABLES[case.signal] and rows > 0 for table, _, rows in converted.blocks),
          f"unexpected blocks {[(table, rows) for table, _, rows in converted.blocks]}")
    return converted


def insert(client, table: str, block: bytes) -> None:
    # A token per insert, as the writer sends: without one, the tables (migration 0008)
    # skip a block identical to one stored before, and generated requests often repeat.
    client.raw_insert(table, None, insert_block=block, fmt="JSONEachRow",
                      settings={"insert_deduplication_token": uuid.uuid4().hex})


def _join(bodies: list[bytes]) -> bytes:
    # Each block is a JSON array of rows: splice them into one, as the writer does.
    return b"[" + b",".join(body[1:-1] for body in bodies if len(body) > 2) + b"]"


class StoreCheck:
    """Inserts converted blocks into the real store the way the writer does, a batch of cases at a
    time, and checks that every emitted row was taken."""

    def __init__(self, client, batch_size: int = 1):
        self.client = client
        self.batch_size = batch_size
        self.pending: list[tuple[Case, otlp.Converted]] = []
        self.rows_stored = 0

    def add(self, case: Case, converted: otlp.Converted) -> None:
        if converted.blocks:
            self.pending.append((case, converted))
        if len(self.pending) >= self.batch_size:
            self.flush()

    def counts(self) -> Counter:
        return Counter({table: self.client.query(f"SELECT count() FROM {table}").result_rows[0][0]
                        for table in ALL_TABLES})

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        if not pending:
            return
        before = self.counts()
        expected: Counter = Counter()
        bodies: dict[str, list[bytes]] = {}
        for _, converted in pending:
            for table, body, rows in converted.blocks:
                bodies.setdefault(table, []).append(body)
                expected[table] += rows
        try:
            for table, table_bodies in bodies.items():
                insert(self.client, table, _join(table_bodies))
        except Exception as error:
            self._blame(pending, error)
        stored = self.counts() - before
        check(stored == expected, f"the store holds {dict(stored)} new rows where {dict(expected)} were accepted")
        self.rows_stored += sum(expected.values())

    def _blame(self, pending, error: Exception) -> None:
        """The store refused a batch: find the case whose rows it refuses, to report that one."""
        for case, converted in pending:
            for table, body, _ in converted.blocks:
                try:
                    insert(self.client, table, body)
                except Exception as alone:
                    raise Broken(f"the store refuses an accepted row of {table}: {alone}", case) from None
        raise Broken(f"the store refused a batch, no single case alone: {error}")
