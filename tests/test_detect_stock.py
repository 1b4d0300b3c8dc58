"""The detectors on the fleet they were not written against, every hard guard rail off.

For each seed, an hour of the stock-instrumented fleet (`agentwatch.demo.stock`: stock OpenTelemetry SDK
spans shaped as openai-v2, OpenInference and OpenLLMetry emit them; only agent spans name an agent; trees
arrive leaves first) goes over OTLP into a real receiver, with its five labelled incidents at 3-10x a
normal the generator measured, and once more with the normal traffic alone. A fresh worker with
`without_hard_limits()` replays each store: the learned baselines must find every incident by its kind,
tenant and trace or credential, and raise nothing on the normal hour. The labels are the expectations;
no generator constant is.
"""

from __future__ import annotations

import pytest

from agentwatch.demo import fleet, stock
from agentwatch.detectors import evaluation
from agentwatch.detectors.config import DetectorConfig
from agentwatch.detectors.worker import DetectorWorker
from agentwatch.schemas import store
from tests.helpers import fresh_database, start_receiver

NS = 1_000_000_000
START_NS = 1_750_075_200 * NS  # Monday 2025-06-16 12:00 UTC
SEEDS = (7, 23)


def _fleet(dsn: str, database: str, seed: int, incidents: bool) -> None:
    fresh_database(dsn, database)
    receiver = start_receiver(dsn, database)
    try:
        result = stock.run_stock_fleet(endpoint=f"http://127.0.0.1:{receiver.http_port}", duration_s=3600,
                                       start_ns=START_NS, seed=seed, incidents=incidents)
        assert receiver.flush(timeout_s=300)
    finally:
        receiver.stop()
    client = store.connect(dsn, database)
    fleet.record_incidents(client, result.run_id, result.incidents)
    client.close()


def _detect(dsn: str, database: str):
    worker = DetectorWorker(lambda: store.connect(dsn, database), DetectorConfig().without_hard_limits())
    worker.catch_up()
    audit = worker.audit()
    worker.close()
    client = store.connect(dsn, database)
    try:
        return evaluation.load_anomalies(client), evaluation.load_labels(client), audit
    finally:
        client.close()


@pytest.fixture(scope="module", params=SEEDS)
def seed_run(request, dsn):
    seed = request.param
    incidents, normal = f"t_stock_detect_{seed}", f"t_stock_detect_normal_{seed}"
    _fleet(dsn, incidents, seed, True)
    _fleet(dsn, normal, seed, False)
    return seed, _detect(dsn, incidents), _detect(dsn, normal)


def test_every_incident_is_found_by_the_learned_baselines_alone(seed_run):
    seed, (anomalies, labels, audit), _ = seed_run
    assert sorted(x.kind for x in labels) == sorted(stock.KINDS)
    report = evaluation.score(anomalies, labels)
    assert not report.missed, (seed, [(m.kind, m.tenant) for m in report.missed])
    assert not report.false_positives, (seed, [(a.kind, a.summary) for a in report.false_positives])
    for table, counts in audit.items():
        assert counts["stored"] == counts["processed"] and counts["pending"] == 0, table


def test_a_normal_hour_raises_nothing(seed_run):
    seed, _, (anomalies, _, _) = seed_run
    assert [(a.kind, a.tenant, a.summary) for a in anomalies] == []
