"""Tailing a ReplicatedMergeTree table: every row once, by the block ranges of the parts read.

`tailing.Tail` relies on block numbers becoming visible in increasing order,
which holds on a single server only. A Replicated table draws its block
numbers per partition from Keeper before the insert commits, and a replica sees
parts in the order it fetches them: block 7 can appear after block 9 has been
read. So the position here is not one number but the block ranges read, per
partition (`{partition id: [[first, last], ...]}`), and a poll reads the rows
of every part whose range is not inside them:

- an insert's part holds one block: it is new until its block has been read;
- a merged part holds every block of its range that exists (a replica merges
  only parts whose range has no block still being inserted), so once a part has
  been read, all of its range is read, the numbers no insert used included, and
  the ranges coalesce as merges do;
- a mutated part keeps its range, so it is not read again.

A batch reads, in the new parts, the rows whose block is not read yet, at least
`max_rows` of them when there are that many, in whole blocks (a cut on the block
number, as `Tail` does). As there, a part merged away between the listing and
the read would hide its rows, so the read is kept only if every listed part is
still active afterwards. Partitions that no longer have parts (dropped by a TTL
or by hand) leave the position: Keeper may number a re-created partition from 0.

    >>> ranges = {}
    >>> add(ranges, "202601", 1, 1); add(ranges, "202601", 3, 4); ranges
    {'202601': [[1, 1], [3, 4]]}
    >>> inside(ranges, "202601", 3, 4), inside(ranges, "202601", 1, 4)
    (True, False)
    >>> add(ranges, "202601", 1, 4); ranges        # a merged part read: the gap was a number no insert kept
    {'202601': [[1, 4]]}
"""

from __future__ import annotations

import logging

from clickhouse_connect.driver.client import Client

from agentwatch.detectors.tailing import RETRIES, SETTINGS, Batch, all_active

log = logging.getLogger(__name__)

Ranges = dict[str, list[list[int]]]  # partition id -> sorted, disjoint [first, last] block ranges read


def add(ranges: Ranges, partition: str, first: int, last: int) -> None:
    """Mark blocks first..last of `partition` read (coalescing with the ranges they touch)."""
    kept, lo, hi = [], first, last
    for a, b in ranges.get(partition, []):
        if b < lo - 1 or a > hi + 1:
            kept.append([a, b])
        else:
            lo, hi = min(lo, a), max(hi, b)
    ranges[partition] = sorted(kept + [[lo, hi]])


def inside(ranges: Ranges, partition: str, first: int, last: int) -> bool:
    """Have blocks first..last of `partition` all been read?"""
    return any(a <= first and last <= b for a, b in ranges.get(partition, []))


def unread(position: Ranges, parts: list[tuple[str, str, int, int]]) -> tuple[Ranges, list]:
    """`position` less the partitions gone, and the parts (name, partition, first, last) not read yet."""
    present = {part[1] for part in parts}
    kept = {p: rs for p, rs in position.items() if p in present}
    return kept, [part for part in parts if not inside(kept, part[1], part[2], part[3])]


def advance(position: Ranges, new: list[tuple[str, str, int, int]], cut: int | None) -> Ranges:
    """The position after reading the unread rows of `new` whose block is at most `cut` (None: all)."""
    after = dict(position)  # `add` replaces a partition's list, never changes one
    for _, partition, first, last in new:
        if cut is None or first <= cut:
            add(after, partition, first, last if cut is None else min(last, cut))
    return after


# Rows whose block has been read (parameter `done`: every range as (partition, first, last)).
READ = ("arrayExists(r -> r.1 = _partition_id AND _block_number >= r.2 AND _block_number <= r.3, "
        "{done:Array(Tuple(String, UInt64, UInt64))})")


def _flat(ranges: Ranges) -> list[tuple[str, int, int]]:
    return [(p, a, b) for p, rs in sorted(ranges.items()) for a, b in rs]


class PartTail:
    """New rows of one Replicated table after the ranges read: `read(client, ranges, ...)`."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.retries = 0  # reads retried because of a merge (a counter for /metrics)

    @staticmethod
    def start() -> Ranges:
        return {}

    def parts(self, client: Client) -> list[tuple[str, str, int, int]]:
        """The table's active parts on this replica: (name, partition id, first block, last block)."""
        return [(r[0], r[1], int(r[2]), int(r[3])) for r in client.query(
            "SELECT name, partition_id, min_block_number, max_block_number FROM system.parts "
            "WHERE database = currentDatabase() AND table = {t:String} AND active",
            parameters={"t": self.table}).result_rows]

    def top(self, client: Client) -> Ranges:
        """Every block committed so far (the position of a reader that has read them all)."""
        ranges: Ranges = {}
        for _, partition, first, last in self.parts(client):
            add(ranges, partition, first, last)
        return ranges

    @staticmethod
    def covers(position: Ranges, target: Ranges) -> bool:
        return all(inside(position, p, a, b) for p, rs in target.items() for a, b in rs)

    @staticmethod
    def done(position: Ranges) -> tuple[str, dict]:
        """SQL true for the rows read up to `position`, and its parameters."""
        return READ, {"done": _flat(position)}

    def read(self, client: Client, position: Ranges, columns: str, order: str, max_rows: int,
             shard: str = "") -> Batch:
        """The unread rows of the new parts, whole blocks, at least `max_rows` when there are that many.

        `columns` and `order` are SQL (after the block number); `shard` an extra ` AND ...` filter.
        """
        for _ in range(RETRIES + 1):
            kept, new = unread(position, self.parts(client))
            if not new:
                return Batch([], kept, [])
            names = [part[0] for part in new]
            where = f"_part IN {{p:Array(String)}} AND NOT {READ}{shard}"
            params = {"p": names, "done": _flat(kept), "n": max(1, int(max_rows))}
            count, cut = client.query(
                f"SELECT count(), max(b) FROM (SELECT _block_number AS b FROM {self.table} WHERE {where} "
                "ORDER BY b LIMIT {n:UInt64})", parameters=params, settings=SETTINGS).result_rows[0]
            # Fewer rows than asked: every unread row of these parts is in this batch.
            cut = None if int(count) < params["n"] else int(cut)
            rows = client.query(
                f"SELECT _block_number, {columns} FROM {self.table} WHERE {where}"
                + ("" if cut is None else f" AND _block_number <= {cut}")
                + f" ORDER BY _block_number, {order}", parameters=params, settings=SETTINGS).result_rows
            if all_active(client, self.table, names):
                return Batch(rows, advance(kept, new, cut), names)
            self.retries += 1
            log.info("%s: a part was merged during the read; reading again", self.table)
        raise RuntimeError(f"{self.table}: parts kept merging during {RETRIES + 1} reads; trying again next poll")
