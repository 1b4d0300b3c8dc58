"""GET /v1/verdicts on the real receiver: the halts in force, scoped to the caller's tenant, cheap to poll."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from agentwatch.collector.receiver import api_keys
from agentwatch.schemas import halts, store
from tests.helpers import fresh_database, prometheus_value, start_receiver, wait_for


def get(url: str, headers: dict | None = None) -> tuple[int, dict, dict | None]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as answer:
            return answer.status, dict(answer.headers), json.loads(answer.read())
    except urllib.error.HTTPError as error:
        body = error.read()
        return error.code, dict(error.headers), json.loads(body) if body else None


def halt(client, tenant: str, scope: str, target: str, **fields) -> halts.Decision:
    return halts.record(client, [halts.decision(tenant, scope, target, "halt", decided_by="cli:oncall",
                                                reason="test", **fields)])[0]


@pytest.fixture(scope="module")
def url(receiver) -> str:
    return f"http://127.0.0.1:{receiver.http_port}/v1/verdicts"


def test_a_poll_gets_the_tenants_halts_and_a_304_until_they_change(client, url):
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    halt(client, "acme", "trace", trace, anomaly_id="a" * 32, kind="fanout", severity="critical",
         agent_id="planner-1", trace_id=trace, summary="Runaway fan-out: 12,000 model calls")
    halt(client, "globex", "agent", "bot-9")

    status, headers, body = wait_for(lambda: (r := get(url + "?tenant=acme"))[2] and r[2]["verdicts"] and r)
    assert status == 200 and headers["Cache-Control"] == "no-cache"
    (verdict,) = body["verdicts"]
    assert verdict == {**verdict, "tenant": "acme", "scope": "trace", "target": trace, "action": "halt",
                       "calls": "all", "anomaly_id": "a" * 32, "kind": "fanout", "severity": "critical",
                       "agent": "planner-1", "trace_id": trace, "summary": "Runaway fan-out: 12,000 model calls",
                       "decided_by": "cli:oncall"}
    etag = headers["ETag"]
    assert body["version"] == etag.strip('"')

    status, headers, body = get(url + "?tenant=acme", {"If-None-Match": etag})
    assert (status, body, headers["ETag"]) == (304, None, etag)

    # Another tenant's halt leaves acme's version alone; acme's own new halt changes it.
    halt(client, "globex", "tenant", "globex", calls="model")
    halt(client, "acme", "agent", "crawler-7")
    status, headers, body = wait_for(lambda: (r := get(url + "?tenant=acme", {"If-None-Match": etag}))[0] == 200
                                     and r)
    assert sorted((v["scope"], v["target"]) for v in body["verdicts"]) == [("agent", "crawler-7"), ("trace", trace)]

    # A release takes the halt out of the answer.
    (in_force,) = halts.current(client, targets=[("acme", "agent", "crawler-7")])
    halts.record(client, [halts.released(in_force, reason="false alarm", decided_by="cli:oncall")])
    wait_for(lambda: [v["target"] for v in get(url + "?tenant=acme")[2]["verdicts"]] == [trace])

    # Without keys configured and without ?tenant, every tenant's halts are served.
    everyone = get(url)[2]["verdicts"]
    assert {(v["tenant"], v["scope"]) for v in everyone} >= {("acme", "trace"), ("globex", "agent"),
                                                             ("globex", "tenant")}


def test_every_receiver_on_the_store_answers_the_same_version(dsn, database, client, url):
    halt(client, "initech", "trace", "0af7651916cd43dd8448eb211c80319c")
    other = start_receiver(dsn, database, grpc_port=None)
    try:
        other_url = f"http://127.0.0.1:{other.http_port}/v1/verdicts?tenant=initech"
        _, headers, body = wait_for(lambda: (r := get(url + "?tenant=initech"))[2]["verdicts"] and r)
        # a guard behind a load balancer: its next poll lands on the other receiver, with the tag of the first
        status, other_headers, _ = wait_for(lambda: (r := get(other_url, {"If-None-Match": headers["ETag"]}))[0]
                                            == 304 and r)
        assert other_headers["ETag"] == headers["ETag"]
    finally:
        other.stop()


def test_many_guards_polling_cost_one_store_read_per_interval(receiver, url):
    metrics_url = f"http://127.0.0.1:{receiver.http_port}/metrics"

    def reads() -> float:
        with urllib.request.urlopen(metrics_url) as page:
            return prometheus_value(page.read().decode(), "agentwatch_verdict_reads_total")

    before = reads()
    began = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: get(url + "?tenant=acme")[0], range(400)))
    elapsed = time.monotonic() - began
    assert answers == [200] * 400
    # at most one read per 250 ms (and one in flight at a bound), however many polls
    assert reads() - before <= elapsed / 0.25 + 2


def test_with_api_keys_a_guard_gets_its_keys_tenant_only(dsn):
    database = fresh_database(dsn, "t_verdicts_keyed")
    client = store.connect(dsn, database)
    acme_key = api_keys.create_key(client, "acme")
    api_keys.create_key(client, "globex")
    halt(client, "acme", "agent", "planner-1")
    halt(client, "globex", "agent", "spy-2")
    keyed = start_receiver(dsn, database, grpc_port=None)
    try:
        url = f"http://127.0.0.1:{keyed.http_port}/v1/verdicts"
        for query in ("", "?tenant=globex"):  # the key's tenant wins over what the caller asks for
            status, _, body = get(url + query, {"Authorization": f"Bearer {acme_key}"})
            assert status == 200 and body["tenant"] == "acme"
            assert [(v["tenant"], v["target"]) for v in body["verdicts"]] == [("acme", "planner-1")]
        status, _, body = get(url + "?tenant=globex", {"x-agentwatch-api-key": acme_key})
        assert [v["tenant"] for v in body["verdicts"]] == ["acme"]
        assert get(url + "?tenant=globex")[0] == 401
        assert get(url, {"Authorization": "Bearer aw_not-a-key"})[0] == 401
    finally:
        keyed.stop()
        client.close()
