"""`GET /v1/verdicts`: the halts in force, served to the SDKs' guards (collector/sdk/guard.py).

An SDK with `guard=` on polls this every second; before each model or tool call
it checks the answer, and a call under a halt raises `agentwatch.AgentHalted`.

- Authenticated as OTLP exports are: once API keys exist, a request must carry
  one (`Authorization: Bearer <key>` or `x-agentwatch-api-key`) and gets its
  key's tenant's halts only. With no keys configured, `?tenant=T` narrows the
  answer to one tenant, and without it every tenant's halts are served (the
  receiver then trusts the tenant spans claim; verdicts are no more secret).
- Cheap to poll: one query of all the halts in force (schemas/halts.py) per
  `ttl_s` (250 ms) per receiver, however many SDKs poll; requests arriving while
  it runs wait for that one query. Each tenant's answer is then filtered from it.
- Conditional: the `ETag` is a hash of the verdicts as served (ordered), so every
  receiver on the same store (several behind a load balancer on a server DSN)
  gives the same tag for the same halts, and `If-None-Match` with it gets a 304
  without a body, whichever receiver the poll lands on. A long poll would cut the
  wait further but hold a connection per SDK; a conditional poll each second keeps
  receivers stateless and costs a few hundred bytes.
- The store down: the last halts read are served (their age in
  `X-Agentwatch-Verdicts-Age`); before any were read, 503 + Retry-After, which
  the guard treats as the receiver unreachable (it runs on: fail-open).

Answer (snake_case, like the alert payloads):

    {"tenant": "acme", "version": "<etag>", "verdicts": [{"halt_id": ..., "tenant": "acme", "scope": "trace",
      "target": "<trace id>", "action": "halt", "calls": "all", "anomaly_id": ..., "kind": "fanout",
      "severity": "critical", "agent": ..., "trace_id": ..., "summary": ..., "reason": ..., "decided_by": "policy",
      "decided_at": "2025-03-04T12:00:00.123456Z"}]}
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable

import orjson
from aiohttp import web
from clickhouse_connect.driver.client import Client
from prometheus_client import CollectorRegistry, Counter, Gauge

from agentwatch.collector.receiver.api_keys import KeyStore, KeysUnavailable
from agentwatch.schemas import halts, store

log = logging.getLogger(__name__)

PATH = "/v1/verdicts"
JSON = "application/json"


def etag_of(verdicts: list[dict]) -> str:
    return '"' + hashlib.blake2b(orjson.dumps(verdicts), digest_size=12).hexdigest() + '"'


def _matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in header.split(",")]
    return "*" in tags or etag in tags


class Verdicts:
    """The endpoint: `register(app)` adds the route; state is one cached snapshot of all halts in force."""

    def __init__(self, connect: Callable[[], Client], keys: KeyStore | None, registry: CollectorRegistry | None = None,
                 ttl_s: float = 0.25, retry_after_s: int = 1) -> None:
        self._connect = connect
        self._client: Client | None = None
        self._keys = keys
        self.ttl_s = ttl_s
        self.retry_after_s = retry_after_s
        self._by_tenant: dict[str, list[dict]] | None = None  # None: never read
        self._everyone: list[dict] = []
        self._answers: dict[str | None, tuple[str, bytes]] = {}  # per tenant, for the current snapshot
        self._loaded_at = -float("inf")  # monotonic time of the last read (or failed read)
        self._read_ok_at = -float("inf")
        self._loading: asyncio.Task | None = None
        registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter("agentwatch_verdict_requests", "Verdict polls answered, by outcome: ok (200), "
                                "not_modified (304), unauthorized (401), unavailable (503)", ["outcome"],
                                registry=registry)
        self.reads = Counter("agentwatch_verdict_reads", "Reads of the halts in force from the store (one per "
                             "ttl at most, however many guards poll)", registry=registry)
        self.open_halts = Gauge("agentwatch_verdicts_open_halts", "Halts in force, as last read from the store",
                                registry=registry)

    def register(self, app: web.Application) -> None:
        app.router.add_get(PATH, self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        try:
            allowed, tenant = self._keys.tenant_for(request.headers.get("Authorization")
                                                    or request.headers.get("x-agentwatch-api-key")) \
                if self._keys is not None else (True, None)
        except KeysUnavailable as error:
            return self._refuse(503, f"cannot check API keys yet ({error}); retry later", "unavailable")
        if not allowed:
            return self._refuse(401, "missing or invalid API key (Authorization: Bearer <key>)", "unauthorized")
        if tenant is None:
            tenant = request.query.get("tenant") or None
        await self._fresh()
        if self._by_tenant is None:
            return self._refuse(503, "verdicts cannot be read from the store yet; retry later", "unavailable")
        etag, body = self._answer(tenant)
        headers = {"ETag": etag, "Cache-Control": "no-cache",
                   "X-Agentwatch-Verdicts-Age": f"{max(0.0, time.monotonic() - self._read_ok_at):.3f}"}
        if _matches(request.headers.get("If-None-Match"), etag):
            self.requests.labels("not_modified").inc()
            return web.Response(status=304, headers=headers)
        self.requests.labels("ok").inc()
        return web.Response(body=body, content_type=JSON, headers=headers)

    def _refuse(self, status: int, message: str, outcome: str) -> web.Response:
        self.requests.labels(outcome).inc()
        headers = {"Retry-After": str(self.retry_after_s)} if status == 503 else {}
        return web.Response(status=status, body=orjson.dumps({"message": message}), content_type=JSON,
                            headers=headers)

    def _answer(self, tenant: str | None) -> tuple[str, bytes]:
        answer = self._answers.get(tenant)
        if answer is None:
            verdicts = self._everyone if tenant is None else self._by_tenant.get(tenant, [])
            etag = etag_of(verdicts)
            answer = self._answers[tenant] = (etag, orjson.dumps({"tenant": tenant, "version": etag.strip('"'),
                                                                 "verdicts": verdicts}))
        return answer

    # --- the snapshot ---------------------------------------------------------------------------------

    async def _fresh(self) -> None:
        """Read the halts in force if the snapshot is older than ttl_s: one read at a time, shared."""
        if time.monotonic() - self._loaded_at < self.ttl_s:
            return
        if self._loading is None:
            self._loading = asyncio.ensure_future(self._load())
        await asyncio.shield(self._loading)

    async def _load(self) -> None:
        try:
            decisions = await asyncio.get_running_loop().run_in_executor(None, self._read)
        except Exception as error:  # noqa: BLE001 - serve what was read last
            log.warning("verdicts: cannot read halts (%s); serving the last read", error)
            store.close_quietly(self._client)
            self._client = None
        else:
            everyone = [d.verdict() for d in decisions]  # ordered by tenant, scope, target
            by_tenant: dict[str, list[dict]] = {}
            for verdict in everyone:
                by_tenant.setdefault(verdict["tenant"], []).append(verdict)
            self._everyone, self._by_tenant, self._answers = everyone, by_tenant, {}
            self._read_ok_at = time.monotonic()
            self.open_halts.set(len(everyone))
        finally:
            self._loaded_at = time.monotonic()
            self._loading = None

    def _read(self) -> list[halts.Decision]:
        if self._client is None:
            self._client = self._connect()
        self.reads.inc()
        return halts.open_halts(self._client)
