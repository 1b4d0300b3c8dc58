"""A lease in ClickHouse: one holder at a time of a named role, however many processes compete.

ClickHouse has no compare-and-set, but its insert deduplication is one: every
claim of the lease is the insert of one row for the next epoch, with the
deduplication token `<role>:<epoch>`. Of two processes claiming the same epoch,
ClickHouse stores the first row and silently drops the second (atomically, on a
MergeTree with a deduplication window as on a Replicated one); each reads the
epoch back and holds the lease only if the stored row names it.

The holder renews by claiming the next epoch every `ttl_s / 3`. Expiry is
judged by the store's clock (`now64()`), never a local one; the holder itself
stops acting `ttl_s * 2 / 3` after its last successful claim by its own
monotonic clock, before anyone else may take over, so two holders never act at
once while clocks run at the same rate. A holder that dies is replaced within
`ttl_s` plus one poll of its successor.

Written by hand: the usual tools for this (etcd, ZooKeeper, a Kubernetes Lease)
are one more service to run; the store is already shared by every process.

    `client` is a connection to a migrated store:

    >>> first, second = Lease(client, "alerts", "a"), Lease(client, "alerts", "b")
    >>> first.hold(), second.hold()
    (True, False)
    >>> first.release(); second.hold()
    True
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable

from clickhouse_connect.driver.client import Client

log = logging.getLogger(__name__)


def default_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Lease:
    def __init__(self, client: Client, role: str, holder: str | None = None, ttl_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.role = role
        self.holder = holder or default_holder()
        self.ttl_s = ttl_s
        self._clock = clock
        self._valid_until = 0.0  # local monotonic time up to which this process may act
        self._renew_at = 0.0
        self.epoch = 0  # the epoch this process holds (0: none)
        self.acquired = 0  # times this process took the lease over (not renewals)

    def hold(self) -> bool:
        """Whether this process holds the lease now; claims or renews it when due."""
        now = self._clock()
        if now < self._renew_at:
            return True
        try:
            holding = self._claim_if_free(now)
        except Exception as error:  # the store is unreachable: act only while the last claim is valid
            log.warning("lease %s: cannot reach the store (%s)", self.role, error)
            holding = now < self._valid_until
        if not holding:
            self.epoch = 0
        return holding

    def release(self) -> None:
        """Give the lease up (a clean stop): the next claimant need not wait for it to expire."""
        if self.epoch:
            self._insert(self.epoch + 1, "", 0)
            self.epoch = 0
        self._valid_until = self._renew_at = 0.0

    def _claim_if_free(self, now: float) -> bool:
        rows = self.client.query(
            "SELECT Epoch, Holder, toUnixTimestamp64Milli(ExpiresAt) - toUnixTimestamp64Milli(now64(3)) "
            "FROM leases WHERE Role = {r:String} ORDER BY Epoch DESC LIMIT 1",
            parameters={"r": self.role}).result_rows
        epoch, holder, remaining_ms = rows[0] if rows else (0, "", 0)
        if holder and holder != self.holder and remaining_ms > 0:
            return False  # held by another, still valid
        claimed = epoch + 1
        self._insert(claimed, self.holder, int(self.ttl_s * 1000))
        stored = self.client.query("SELECT Holder FROM leases WHERE Role = {r:String} AND Epoch = {e:UInt64}",
                                   parameters={"r": self.role, "e": claimed}).result_rows
        if not stored or stored[0][0] != self.holder:
            return False
        if not self.epoch:
            self.acquired += 1
            log.info("lease %s: held by %s from epoch %d", self.role, self.holder, claimed)
        self.epoch = claimed
        self._valid_until = now + self.ttl_s * 2 / 3
        self._renew_at = now + self.ttl_s / 3
        return True

    def _insert(self, epoch: int, holder: str, ttl_ms: int) -> None:
        self.client.command(
            "INSERT INTO leases (Role, Epoch, Holder, ExpiresAt) "
            "SETTINGS insert_deduplication_token = {token:String} "
            "SELECT {r:String}, {e:UInt64}, {h:String}, now64(3) + toIntervalMillisecond({ttl:UInt32})",
            parameters={"token": f"{self.role}:{epoch}", "r": self.role, "e": epoch, "h": holder, "ttl": ttl_ms})
