"""Tailing by part ranges (detectors/part_tail.py), the detectors' cursor on a cluster.

No Keeper runs here, so a Replicated table's behaviour is modelled as
ClickHouse documents it: block numbers drawn per partition before an insert
commits, inserts committing (or becoming visible on this replica) in any
order, numbers abandoned by failed or deduplicated inserts, merges of
neighbouring parts only when no insert is still running between them,
mutations rewriting a part under its range. Hypothesis drives random histories
through the reader's own planning functions; the SQL around them runs on the
embedded engine's MergeTree (partitions, merges, a mutation, a dropped
partition, batches cut by size).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentwatch.detectors.part_tail import PartTail, advance, inside, unread
from agentwatch.schemas import store
from tests.helpers import fresh_database


@dataclass
class Part:
    name: str
    partition: str
    first: int
    last: int
    rows: list[tuple[int, str]]  # (block, row id)


@dataclass
class Replica:
    """What one replica of a Replicated table shows: its active parts, and the inserts still running."""

    parts: list[Part] = field(default_factory=list)
    next_block: dict[str, int] = field(default_factory=dict)
    running: list[tuple[str, int, list[str]]] = field(default_factory=list)  # (partition, block, row ids)
    names: int = 0
    rows: int = 0

    def _name(self) -> str:
        self.names += 1
        return f"part-{self.names}"

    def begin(self, partition: str, n_rows: int) -> None:
        block = self.next_block.get(partition, 0)
        self.next_block[partition] = block + 1
        ids = [f"r{self.rows + i}" for i in range(n_rows)]
        self.rows += n_rows
        self.running.append((partition, block, ids))

    def commit(self, which: int) -> None:
        partition, block, ids = self.running.pop(which % len(self.running))
        self.parts.append(Part(self._name(), partition, block, block, [(block, i) for i in ids]))

    def abandon(self, which: int) -> None:
        self.running.pop(which % len(self.running))

    def merge(self, which: int) -> None:
        """Merge two neighbouring parts of a partition, unless an insert still running lies between them."""
        ordered = sorted(self.parts, key=lambda p: (p.partition, p.first))
        pairs = [(a, b) for a, b in zip(ordered, ordered[1:]) if a.partition == b.partition
                 and not any(p == a.partition and a.last < blk < b.first for p, blk, _ in self.running)]
        if pairs:
            a, b = pairs[which % len(pairs)]
            self.parts = [p for p in self.parts if p is not a and p is not b]
            self.parts.append(Part(self._name(), a.partition, a.first, b.last, a.rows + b.rows))

    def mutate(self, which: int) -> None:
        if self.parts:
            old = self.parts.pop(which % len(self.parts))
            self.parts.append(Part(self._name(), old.partition, old.first, old.last, old.rows))

    def listing(self) -> list[tuple[str, str, int, int]]:
        return [(p.name, p.partition, p.first, p.last) for p in self.parts]


def poll(replica: Replica, position: dict, max_rows: int) -> tuple[list[str], dict]:
    """PartTail.read over the model: the same planning, the row filter and cut as its SQL does them."""
    kept, new = unread(position, replica.listing())
    by_name = {p.name: p for p in replica.parts}
    rows = sorted((block, row) for name, partition, _, _ in new for block, row in by_name[name].rows
                  if not inside(kept, partition, block, block))
    cut = rows[max_rows - 1][0] if len(rows) >= max_rows else None
    return [row for block, row in rows if cut is None or block <= cut], advance(kept, new, cut)


STEP = st.one_of(
    st.tuples(st.just("begin"), st.sampled_from(["p1", "p2"]), st.integers(1, 3)),
    st.tuples(st.just("commit"), st.integers(0, 50)),
    st.tuples(st.just("abandon"), st.integers(0, 50)),
    st.tuples(st.just("merge"), st.integers(0, 50)),
    st.tuples(st.just("mutate"), st.integers(0, 50)),
    st.tuples(st.just("poll"), st.integers(1, 6)),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(STEP, max_size=80))
def test_every_committed_row_is_read_once_whatever_the_order_of_commits_and_merges(steps):
    replica, position, read = Replica(), {}, Counter()
    for step in steps:
        kind = step[0]
        if kind == "begin":
            replica.begin(step[1], step[2])
        elif kind == "poll":
            rows, position = poll(replica, position, step[1])
            read.update(rows)
        elif kind in ("commit", "abandon") and replica.running:
            getattr(replica, kind)(step[1])
        elif kind in ("merge", "mutate"):
            getattr(replica, kind)(step[1])
    while replica.running:
        replica.commit(0)
    for _ in range(replica.rows + 1):  # drain: every poll reads at least one block while any is unread
        rows, position = poll(replica, position, 2)
        read.update(rows)
    stored = Counter(row for p in replica.parts for _, row in p.rows)
    assert read == stored
    assert PartTail.covers(position, advance({}, replica.listing(), None))


def test_a_late_commit_below_a_read_block_and_a_merge_across_an_abandoned_number():
    replica, position = Replica(), {}
    for _ in range(4):
        replica.begin("p1", 1)  # blocks 0..3
    replica.commit(1)  # block 1 visible first
    replica.commit(1)  # then block 2
    rows, position = poll(replica, position, 10)
    assert rows == ["r1", "r2"] and position == {"p1": [[1, 2]]}
    replica.commit(0)  # block 0 commits after 1 and 2 were read
    replica.abandon(0)  # block 3 never commits
    replica.begin("p1", 1)  # block 4
    replica.commit(0)
    rows, position = poll(replica, position, 10)
    assert rows == ["r0", "r4"] and position == {"p1": [[0, 2], [4, 4]]}
    while len(replica.parts) > 1:
        replica.merge(0)  # into one part [0, 4], the abandoned 3 inside it
    rows, position = poll(replica, position, 10)
    assert rows == [] and position == {"p1": [[0, 4]]}


def test_a_merged_part_not_yet_read_is_read_in_several_batches():
    replica, position, read = Replica(), {}, []
    for _ in range(5):
        replica.begin("p1", 2)
        replica.commit(0)
    while len(replica.parts) > 1:
        replica.merge(0)
    for _ in range(3):
        rows, position = poll(replica, position, 3)  # cut after the block holding the 3rd row: 2 blocks
        read.append(rows)
    assert read == [["r0", "r1", "r2", "r3"], ["r4", "r5", "r6", "r7"], ["r8", "r9"]]
    assert position == {"p1": [[0, 4]]}


# --- the SQL, on the embedded engine -----------------------------------------------------------------------

@pytest.fixture
def table(dsn):
    client = store.connect(dsn, fresh_database(dsn, "t_part_tail"))
    client.command("CREATE TABLE events (Day Date, Id UInt32) ENGINE = MergeTree PARTITION BY Day ORDER BY Id "
                   "SETTINGS enable_block_number_column = 1")
    yield client
    client.close()


def _insert(client, day: str, ids) -> None:
    client.command(f"INSERT INTO events SELECT toDate('{day}'), number FROM numbers({ids.start}, {len(ids)})")


def _drain(tail: PartTail, client, position: dict, max_rows: int) -> tuple[list[int], dict, int]:
    ids, batches = [], 0
    while True:
        batch = tail.read(client, position, "Id", "Id", max_rows)
        if not batch.parts:
            return ids, batch.position, batches
        ids += [r[1] for r in batch.rows]
        position, batches = batch.position, batches + 1


def test_part_tail_reads_each_row_once_across_partitions_merges_mutations_and_drops(table):
    client, tail = table, PartTail("events")
    for i, day in enumerate(["2026-01-01", "2026-01-02", "2026-01-01", "2026-01-03", "2026-01-02"]):
        _insert(client, day, range(i * 100, i * 100 + 100))
    client.command("OPTIMIZE TABLE events PARTITION '2026-01-01' FINAL")  # two blocks merged before any read
    ids, position, batches = _drain(tail, client, {}, 150)
    assert sorted(ids) == list(range(500)) and batches == 3  # cut in whole blocks: 200, 200, 100 rows
    assert set(position) == {p for (p,) in client.query("SELECT DISTINCT partition_id FROM system.parts "
                                                         "WHERE database = currentDatabase() AND table = 'events' "
                                                         "AND active").result_rows}

    client.command("OPTIMIZE TABLE events FINAL")  # merges: nothing new to read
    client.command("ALTER TABLE events DELETE WHERE Id % 10 = 0 SETTINGS mutations_sync = 2")  # a rewrite
    _insert(client, "2026-01-02", range(500, 550))
    ids, position, _ = _drain(tail, client, position, 1_000)
    assert sorted(ids) == list(range(500, 550))

    done, params = PartTail.done(position)
    read, unread_rows = client.query(f"SELECT countIf({done}), countIf(NOT {done}) FROM events",
                                     parameters=params).result_rows[0]
    assert (read, unread_rows) == (client.command("SELECT count() FROM events"), 0)
    assert PartTail.covers(position, tail.top(client))

    client.command("ALTER TABLE events DROP PARTITION '2026-01-03'")
    _insert(client, "2026-01-04", range(600, 610))
    assert not PartTail.covers(position, tail.top(client))
    ids, position, _ = _drain(tail, client, position, 1_000)
    assert sorted(ids) == list(range(600, 610)) and len(position) == 3  # the dropped partition left it
