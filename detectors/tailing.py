"""Tailing a MergeTree table: every committed row once, in commit order, whatever the wall clocks say.

A cursor on a time stamp (`IngestedAt`) skips rows: the stamp is taken when an
insert starts, and an insert that commits after a later one (a slow store, a
big batch split into several parts, another receiver) lands behind a cursor
that already moved on. The cursor here is ClickHouse's own: every part an
insert commits gets a block number, and on a (non-replicated) MergeTree the
number is drawn from one table-wide counter under the same lock that makes the
part visible. So block numbers become visible in increasing order, a reader
that sees block b sees every block before it, and "every row whose block is
above the position" is exactly the rows not yet read. Merges keep each row's
number (`enable_block_number_column`, set by migration 0005).

Reading only the parts that can hold new rows (`_part IN ...`, which prunes
parts before reading, unlike a filter on `_block_number` alone) keeps a poll
cheap on a large table. The part list comes from `system.parts`; a part merged
away between that list and the read would hide its rows, so the read is
trusted only if every listed part is still active afterwards (a part never
becomes active again, so it was active during the read too), and is retried
otherwise.

    >>> Tail("agent_spans").where(1, 0) is None
    True
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from clickhouse_connect.driver.client import Client

log = logging.getLogger(__name__)

RETRIES = 3  # reads thrown away because a listed part was merged meanwhile, before reading without pruning
# Every read by block number must come from the table's own parts: a projection's parts (agent_spans has
# one ordered by trace) do not keep each row's block number, so a query the optimizer answers from one
# sees other numbers and reads rows twice or not at all.
SETTINGS = {"optimize_use_projections": 0}


def all_active(client: Client, table: str, parts: list[str]) -> bool:
    """Are all these parts of `table` still active (not merged away)?"""
    if not parts:
        return True
    n = client.query("SELECT count() FROM system.parts WHERE database = currentDatabase() "
                     "AND table = {t:String} AND active AND name IN {p:Array(String)}",
                     parameters={"t": table, "p": parts}).result_rows[0][0]
    return int(n) == len(parts)


@dataclass
class Batch:
    rows: list[tuple]  # as selected, the block number first
    position: int | dict  # where to resume: the last block read (part_tail: the block ranges read)
    parts: list[str] | None  # the parts read (None: read without part pruning)


class Tail:
    """New rows of one table after a block position: `read(client, position, ...)`."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.retries = 0  # reads retried because of a merge (a counter for /metrics)

    @staticmethod
    def start() -> int:
        return 0

    @staticmethod
    def covers(position: int, target: int) -> bool:
        return position >= target

    @staticmethod
    def done(position: int) -> tuple[str, dict]:
        """SQL true for the rows read up to `position`, and its parameters."""
        return "_block_number <= {done:UInt64}", {"done": position}

    def candidate_parts(self, client: Client, position: int) -> tuple[list[str], int]:
        """Active parts that may hold a block after `position`, and the highest block number committed."""
        rows = client.query(
            "SELECT name, max_block_number FROM system.parts WHERE database = currentDatabase() "
            "AND table = {t:String} AND active", parameters={"t": self.table}).result_rows
        top = max((int(r[1]) for r in rows), default=0)
        return [r[0] for r in rows if int(r[1]) > position], top

    def top(self, client: Client) -> int:
        """The highest block number committed so far."""
        return int(client.query("SELECT max(max_block_number) FROM system.parts WHERE database = currentDatabase() "
                                "AND table = {t:String} AND active", parameters={"t": self.table}).result_rows[0][0]
                   or 0)

    def still_active(self, client: Client, parts: list[str]) -> bool:
        return all_active(client, self.table, parts)

    @staticmethod
    def where(position: int, top: int, pruned: bool = True) -> str | None:
        """The batch's condition (parameters p, pos, top, n); None when nothing can be there."""
        if top <= position:
            return None
        return ("_block_number > {pos:UInt64} AND _block_number <= {top:UInt64}"
                + (" AND _part IN {p:Array(String)}" if pruned else ""))

    def read(self, client: Client, position: int, columns: str, order: str, max_rows: int,
             shard: str = "") -> Batch:
        """Whole blocks after `position`, at least `max_rows` rows when there are that many.

        `columns` and `order` are SQL (after the block number); `shard` an extra ` AND ...` filter.
        """
        for attempt in range(RETRIES + 1):
            pruned = attempt < RETRIES
            parts, top = self.candidate_parts(client, position)
            where = self.where(position, top, pruned)
            if where is None or (pruned and not parts):
                return Batch([], position, [])
            params = {"p": parts, "pos": position, "top": top, "n": max(1, int(max_rows))}
            cut = (f"_block_number <= (SELECT max(b) FROM (SELECT _block_number AS b FROM {self.table} "
                   f"WHERE {where}{shard} ORDER BY b LIMIT {{n:UInt64}}))")
            rows = client.query(
                f"SELECT _block_number, {columns} FROM {self.table} WHERE {where} AND {cut}{shard} "
                f"ORDER BY _block_number, {order}", parameters=params, settings=SETTINGS).result_rows
            if not pruned or self.still_active(client, parts):
                # no row: nothing of this shard up to `top`, so the position may move there
                return Batch(rows, int(rows[-1][0]) if rows else top, parts if pruned else None)
            self.retries += 1
            log.info("%s: a part was merged during the read; reading again", self.table)
        raise AssertionError("unreachable")
