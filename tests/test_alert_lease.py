"""Every alert is sent once however many dispatchers run on one store; a dead one is replaced.

Three dispatchers (as in three `agentwatch detect` processes) run side by side
on one store, each in its own thread with its own connection; the lease in
ClickHouse lets one send. Then the sending one dies without a word (it stops
renewing, as a killed process does) and another takes over within the lease's
time to live, from the checkpoint the dead one saved.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

from agentwatch.detectors.alerts import AlertConfig, AlertDispatcher
from agentwatch.detectors.lease import Lease
from agentwatch.schemas import store
from tests.helpers import JsonWebhook, wait_for
from tests.test_alerts import write

TTL_S = 1.0


def test_two_claims_of_one_epoch_store_one_holder(client):
    client.command("TRUNCATE TABLE leases")
    first, second = Lease(client, "race", "first"), Lease(client, "race", "second")
    first._insert(1, "first", 5000)
    second._insert(1, "second", 5000)  # lost the race: dropped by insert deduplication
    assert client.query("SELECT Holder FROM leases WHERE Role = 'race'").result_rows == [("first",)]
    assert second.hold() is False
    assert first.hold() is True and first.epoch == 2


def test_one_dispatcher_sends_and_a_dead_one_is_replaced_within_the_lease(dsn, database, client):
    for table in ("anomalies", "detector_state", "alert_deliveries", "leases"):
        client.command(f"TRUNCATE TABLE {table}")
    webhook = JsonWebhook()
    config = AlertConfig(webhook_urls=[webhook.url], lease_ttl_s=TTL_S)
    dispatchers = [AlertDispatcher(lambda: store.connect(dsn, database), config, holder=f"d{i}") for i in range(3)]
    stops = [threading.Event() for _ in dispatchers]
    threads = [threading.Thread(target=d.run_forever, args=(stop, 0.05), daemon=True)
               for d, stop in zip(dispatchers, stops)]
    for thread in threads:
        thread.start()
    try:
        db = (database, client)
        for n in range(6):
            write(db, f"{n:032x}", tenant=f"tenant-{n}")
        wait_for(lambda: len(webhook.received) >= 6)
        [active] = [d for d in dispatchers if d.active]

        # The active one dies: it neither sends nor renews nor releases any more.
        dead = dispatchers.index(active)
        active._lease.release = lambda: None
        stops[dead].set()
        threads[dead].join(10)
        died = time.monotonic()
        for n in range(6, 9):
            write(db, f"{n:032x}", tenant=f"tenant-{n}")
        wait_for(lambda: len(webhook.received) >= 9, timeout_s=30)
        took_over_s = time.monotonic() - died
        [successor] = [d for i, d in enumerate(dispatchers) if i != dead and d.active]
        assert successor._lease.acquired == 1
    finally:
        for stop in stops:
            stop.set()
        for thread in threads:
            thread.join(10)
        webhook.server.shutdown()

    sent = Counter((body["anomaly_id"], body["event"]) for body in webhook.received)
    assert sent == {(f"{n:032x}", "new"): 1 for n in range(9)}
    # Within the lease's time to live (counted from the dead one's last renewal) and a poll or two.
    assert took_over_s < TTL_S + 1.0
