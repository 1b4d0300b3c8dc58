"""The OTLP receiver: OTLP/HTTP (protobuf and JSON, gzip) and OTLP/gRPC into ClickHouse.

One asyncio loop in a background thread serves both transports; decoding runs
in a small thread pool so /healthz answers while a large request is parsed.
Answers follow the OTLP specification: partial success for refused records,
400/401/413/415 with a google.rpc.Status body, 503 + Retry-After when the
write queue is full (exporters retry those).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import io
import logging
import threading
import zlib
from collections.abc import Callable
import multiprocessing
import os
import sys
import types
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import grpc
import orjson
from aiohttp import web
from clickhouse_connect.driver.client import Client
from google.protobuf import any_pb2, duration_pb2, json_format
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from agentwatch.collector.receiver import otlp
from agentwatch.collector.receiver.actions import Actions
from agentwatch.collector.receiver.api_keys import KeyStore, KeysUnavailable
from agentwatch.collector.receiver.memory_limit import MemoryLimit
from agentwatch.collector.receiver.metrics import ReceiverMetrics
from agentwatch.collector.receiver.secrets import SecretPolicy, store_key
from agentwatch.collector.receiver.spool import Spool, SpoolError
from agentwatch.collector.receiver.tls import ServerTLS
from agentwatch.collector.receiver.verdicts import Verdicts
from agentwatch.collector.receiver.writer import BatchWriter, QueueFull

log = logging.getLogger(__name__)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"

RESPONSES = {
    "traces": (trace_service_pb2.ExportTraceServiceResponse, "rejected_spans"),
    "metrics": (metrics_service_pb2.ExportMetricsServiceResponse, "rejected_data_points"),
    "logs": (logs_service_pb2.ExportLogsServiceResponse, "rejected_log_records"),
}
GRPC_SERVICES = {
    "traces": "opentelemetry.proto.collector.trace.v1.TraceService",
    "metrics": "opentelemetry.proto.collector.metrics.v1.MetricsService",
    "logs": "opentelemetry.proto.collector.logs.v1.LogsService",
}


@dataclass
class ReceiverConfig:
    host: str = "127.0.0.1"
    http_port: int = 4318  # 0 picks a free port
    grpc_port: int | None = 4317  # None turns gRPC off
    max_request_bytes: int = 64 << 20  # per request, after decompression; larger gets 413
    max_queue_bytes: int = 512 << 20  # accepted but unwritten; beyond it requests get 503
    max_converting_bytes: int = 128 << 20  # bodies being read and converted; beyond it requests get 503
    max_memory_bytes: int = 0  # the process's resident anonymous memory may reach this (0: no limit) ...
    max_memory_spike_bytes: int = 0  # ... requests get 503 beyond it less this headroom (0: memory_limit.py's)
    max_batch_bytes: int = 64 << 20  # the most one insert carries (requests joined in spool order)
    retry_after_s: int = 1
    flush_interval_s: float = 0.2
    # Converting OTLP to rows is CPU-bound Python: worker processes spread it
    # over the cores (0 converts in threads of this process).
    decode_processes: int = min(4, os.cpu_count() or 1)
    # Requests of few large spans convert in a thread here: their conversion is
    # mostly copying, which shipping them to a worker would only double.
    convert_here_above_bytes: int = 1 << 20
    # Write-ahead spool: requests are answered once fsynced here, and retried
    # requests are recognised for dedup_window_s. None answers once queued in
    # memory (a crash then loses what was answered and not yet written).
    spool_dir: str | None = None
    dedup_window_s: float = 900
    # Key verifying the signed halt/release links of alerts (actions.py); None: AGENTWATCH_ACTIONS_KEY.
    actions_key: str | None = None
    # PEM certificate chain and private key: both set serves HTTP and gRPC over TLS (tls.py).
    tls_cert: str | None = None
    tls_key: str | None = None
    # Credential material found in payloads: "redact" stores a marker in its place, "keep" stores it as
    # sent; either way it is flagged (secrets.py, AGENTWATCH_SECRETS).
    secrets: str = "redact"


class Rejected(Exception):
    def __init__(self, http_status: int, grpc_code: grpc.StatusCode, reason: str, message: str):
        super().__init__(message)
        self.http_status = http_status
        self.grpc_code = grpc_code
        self.reason = reason


class Receiver:
    def __init__(self, connect: Callable[[], Client], config: ReceiverConfig | None = None):
        self.config = config or ReceiverConfig()
        self.metrics = ReceiverMetrics()
        self.spool = Spool(self.config.spool_dir, dedup_window_s=self.config.dedup_window_s,
                           metrics=self.metrics) if self.config.spool_dir else None
        self.writer = BatchWriter(connect, max_queue_bytes=self.config.max_queue_bytes,
                                  max_batch_bytes=self.config.max_batch_bytes,
                                  flush_interval_s=self.config.flush_interval_s, metrics=self.metrics,
                                  spool=self.spool)
        self._connect = connect
        self.keys: KeyStore | None = None
        self.secrets: SecretPolicy | None = None  # read from the store at start
        self._pool: Executor | None = None
        self._pool_lock = threading.Lock()
        self._threads = ThreadPoolExecutor(2, thread_name_prefix="agentwatch-convert")
        self.memory = MemoryLimit(self.config.max_memory_bytes, spike_bytes=self.config.max_memory_spike_bytes)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._startup_error: BaseException | None = None
        self.http_port: int | None = None
        self.grpc_port: int | None = None
        self._converting_bytes = 0  # bodies being read or converted (touched on the event loop only)

    # --- lifecycle ------------------------------------------------------------

    def start(self) -> Receiver:
        client = self._connect()
        self.keys = KeyStore(client)
        self.secrets = SecretPolicy.from_mode(store_key(client), self.config.secrets)
        self._pool = self._start_workers() if self.config.decode_processes > 0 else self._threads
        if self.spool:
            recovered = self.spool.open()
            if recovered.records:
                log.info("spool: %d requests accepted before a stop are written now", len(recovered.records))
            self.spool.on_durable = self.writer.enqueue
            self.writer.start(recovered.records, recovered.begun)
        else:
            self.writer.start()
        self._thread = threading.Thread(target=self._serve_forever, name="agentwatch-receiver", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._startup_error:
            self.writer.close()
            raise self._startup_error
        log.info("OTLP receiver on http://%s:%s%s", self.config.host, self.http_port,
                 f" and grpc {self.config.host}:{self.grpc_port}" if self.grpc_port else "")
        return self

    def _start_workers(self) -> ProcessPoolExecutor:
        # spawn, not fork: this process holds the embedded engine and threads.
        # A spawned child re-imports the parent's __main__ by path; these
        # workers need nothing from it, and a main that does work on import (a
        # script without a __main__ guard, a Streamlit page) must not run in
        # them, so a blank __main__ stands in while they start (all start here).
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            pool = ProcessPoolExecutor(self.config.decode_processes, mp_context=multiprocessing.get_context("spawn"))
            for warm in [pool.submit(otlp.warm_up) for _ in range(self.config.decode_processes)]:
                warm.result()
        finally:
            sys.modules["__main__"] = main
        return pool

    def _replace_broken_workers(self, broken: Executor) -> None:
        """A worker died (killed, out of memory): start a fresh pool, once per breakage."""
        with self._pool_lock:
            if self._pool is broken:
                log.error("a conversion worker process died; starting new workers")
                broken.shutdown(wait=False, cancel_futures=True)
                self._pool = self._start_workers()

    def stop(self) -> None:
        """Stop listening, then write everything accepted before returning."""
        if self._loop and self._stopped:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread:
            self._thread.join(60)
        if self._pool:
            self._pool.shutdown(wait=True)
        self._threads.shutdown(wait=True)
        if self.spool:
            self.spool.close()
        self.writer.close()

    def flush(self, timeout_s: float = 60) -> bool:
        return self.writer.flush(timeout_s)

    def _serve_forever(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:  # surfaced to start() instead of dying silently
            self._startup_error = error
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        app = web.Application(client_max_size=self.config.max_request_bytes + 1)
        for signal in RESPONSES:
            app.router.add_post(f"/v1/{signal}", self._http_handler(signal))
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics_page)
        Verdicts(self._connect, self.keys, self.metrics.registry).register(app)  # GET /v1/verdicts (guards)
        Actions(self._connect, self.config.actions_key, self.metrics.registry).register(app)  # alerts' links
        # Bodies are inflated here, under the size limit, not by aiohttp.
        runner = web.AppRunner(app, access_log=None, auto_decompress=False)
        await runner.setup()
        tls = ServerTLS.from_files(self.config.tls_cert, self.config.tls_key)
        site = web.TCPSite(runner, self.config.host, self.config.http_port,
                           ssl_context=tls.http_context() if tls else None)
        await site.start()
        self.http_port = runner.addresses[0][1]
        server = None
        if self.config.grpc_port is not None:
            limit = self.config.max_request_bytes
            server = grpc.aio.server(maximum_concurrent_rpcs=256, options=[("grpc.max_receive_message_length", limit),
                                              ("grpc.max_send_message_length", 16 << 20)])
            # Raw-bytes handlers: requests go to the conversion workers undecoded.
            server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service, {
                "Export": grpc.unary_unary_rpc_method_handler(
                    self._grpc_handler(signal),
                    request_deserializer=None,
                    response_serializer=lambda message: message.SerializeToString()),
            }) for signal, service in GRPC_SERVICES.items()])
            address = f"{self.config.host}:{self.config.grpc_port}"
            self.grpc_port = (server.add_secure_port(address, tls.grpc_credentials()) if tls
                              else server.add_insecure_port(address))
            await server.start()
        self._ready.set()
        await self._stopped.wait()
        if server is not None:
            await server.stop(grace=5)
        await runner.cleanup()

    # --- shared ingest path -----------------------------------------------------

    def _authorize(self, header: str | None) -> str | None:
        try:
            allowed, tenant = self.keys.tenant_for(header)
        except KeysUnavailable as error:
            raise Rejected(503, grpc.StatusCode.UNAVAILABLE, "store_unavailable",
                           f"cannot check API keys yet ({error}); retry later") from None
        if not allowed:
            raise Rejected(401, grpc.StatusCode.UNAUTHENTICATED, "unauthorized",
                           "missing or invalid API key (Authorization: Bearer <key>)")
        return tenant

    async def _ingest(self, signal: str, transport: str, body: bytes, is_json: bool,
                      tenant: str | None) -> otlp.Converted:
        """Request body -> rows queued for the writer, or Rejected."""
        try:
            executor = self._threads if len(body) > self.config.convert_here_above_bytes else self._pool
            try:
                converted = await self._loop.run_in_executor(executor, otlp.convert, signal, body, is_json, tenant,
                                                             None, self.secrets)
            except BrokenProcessPool:
                await self._loop.run_in_executor(self._threads, self._replace_broken_workers, executor)
                raise Rejected(503, grpc.StatusCode.UNAVAILABLE, "workers_restarting",
                               "conversion workers are restarting; retry") from None
        except otlp.BadRequest as error:
            raise Rejected(400, grpc.StatusCode.INVALID_ARGUMENT, "bad_body", str(error)) from None
        duplicate = False
        if converted.blocks:
            duplicate = await self._store(signal, body, tenant, converted.blocks)
        if duplicate:
            self.metrics.duplicates.labels(signal).inc(converted.accepted)
        else:
            self.metrics.received.labels(signal).inc(converted.accepted)
        if converted.rejected:
            self.metrics.rejected.labels(signal, "invalid").inc(converted.rejected)
        for model in converted.unknown_models:
            self.metrics.unknown_model.labels(model).inc()
        self.metrics.requests.labels(signal, transport, "partial" if converted.rejected else "ok").inc()
        return converted

    async def _store(self, signal: str, body: bytes, tenant: str | None, blocks) -> bool:
        """Queue one request's rows; with a spool, return once they are on disk.
        True when the request is a retry of one already accepted."""
        try:
            if self.spool is None:
                self.writer.submit(blocks)
                return False
            size = sum(len(block) for _, block, _ in blocks)
            self.writer.reserve(size)
        except QueueFull as error:
            raise Rejected(503, grpc.StatusCode.RESOURCE_EXHAUSTED, "queue_full",
                           f"receiver is busy ({error}); retry later") from None
        # The same request body from the same tenant is the same spans: an
        # exporter's retry, whose first copy may already be stored.
        digest = hashlib.blake2b(f"{signal}\0{tenant or ''}\0".encode(), digest_size=16)
        digest.update(body)
        duplicate = False
        try:
            durable, duplicate = self.spool.append(digest.digest(), blocks)
            if duplicate:
                self.writer.release(size)
            await asyncio.wrap_future(durable)
        except SpoolError as error:
            if not duplicate:
                self.writer.release(size)
            raise Rejected(503, grpc.StatusCode.UNAVAILABLE, "spool_unavailable",
                           f"cannot persist the request ({error}); retry later") from None
        return duplicate

    def _response(self, signal: str, converted: otlp.Converted):
        response_type, rejected_field = RESPONSES[signal]
        response = response_type()
        if converted.rejected:
            setattr(response.partial_success, rejected_field, converted.rejected)
            response.partial_success.error_message = converted.error_message
        return response

    # --- HTTP -------------------------------------------------------------------

    def _http_handler(self, signal: str):
        async def handle(request: web.Request) -> web.StreamResponse:
            is_json = request.content_type == JSON
            try:
                if request.content_type not in (PROTOBUF, JSON):
                    raise Rejected(415, grpc.StatusCode.INVALID_ARGUMENT, "unsupported_media_type",
                                   f"Content-Type must be {PROTOBUF} or {JSON}, not {request.content_type!r}")
                tenant = self._authorize(request.headers.get("Authorization")
                                         or request.headers.get("x-agentwatch-api-key"))
                # Refused before its body is read when the receiver is busy:
                # memory stays bounded however many exporters connect.
                async with self._reading(request.content_length or 0):
                    body = await self._read_body(request)
                    converted = await self._ingest(signal, "http", body, is_json, tenant)
            except Rejected as rejected:
                self.metrics.bad_requests.labels(rejected.reason).inc()
                self.metrics.requests.labels(signal, "http", rejected.reason).inc()
                headers = {"Retry-After": str(self.config.retry_after_s)} if rejected.http_status == 503 else {}
                return _status_response(rejected.http_status, rejected.grpc_code, str(rejected), is_json, headers)
            response = self._response(signal, converted)
            if is_json:
                return web.Response(body=json_format.MessageToJson(response, indent=None).encode(),
                                    content_type=JSON)
            return web.Response(body=response.SerializeToString(), content_type=PROTOBUF)

        return handle

    @contextlib.asynccontextmanager
    async def _reading(self, size: int):
        """Count a request's body against max_converting_bytes while it is read and converted."""
        if self.memory.over():
            raise Rejected(503, grpc.StatusCode.RESOURCE_EXHAUSTED, "memory",
                           f"receiver holds {self.memory.used_bytes} bytes, near its limit of "
                           f"{self.memory.limit_bytes} (AGENTWATCH_MAX_MEMORY_BYTES); retry later")
        if self._converting_bytes and self._converting_bytes + size > self.config.max_converting_bytes:
            raise Rejected(503, grpc.StatusCode.RESOURCE_EXHAUSTED, "busy",
                           f"receiver is busy ({self._converting_bytes} bytes being converted); retry later")
        self._converting_bytes += size
        try:
            yield
        finally:
            self._converting_bytes -= size

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self.config.max_request_bytes
        too_large = Rejected(413, grpc.StatusCode.RESOURCE_EXHAUSTED, "too_large",
                             f"request body exceeds the limit of {limit} bytes (AGENTWATCH_MAX_REQUEST_BYTES)")
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None
        encoding = request.headers.get("Content-Encoding", "").lower()
        if encoding in ("", "identity"):
            return body
        if encoding != "gzip":
            raise Rejected(415, grpc.StatusCode.INVALID_ARGUMENT, "unsupported_media_type",
                           f"Content-Encoding {encoding!r} is not supported (use gzip)")
        def inflate() -> bytes:
            # Every member: a body may be several gzip members end to end (RFC 1952),
            # and reading only the first would drop the rest. At most limit + 1 bytes
            # come out, however far the body would inflate.
            with gzip.GzipFile(fileobj=io.BytesIO(body)) as stream:
                return stream.read(limit + 1)

        if not body:
            raise Rejected(400, grpc.StatusCode.INVALID_ARGUMENT, "bad_body", "gzip body is empty")
        try:
            # Off the event loop: a large body takes a while to inflate.
            data = await asyncio.to_thread(inflate)
        except EOFError:
            raise Rejected(400, grpc.StatusCode.INVALID_ARGUMENT, "bad_body", "gzip body is truncated") from None
        except (OSError, zlib.error) as error:
            raise Rejected(400, grpc.StatusCode.INVALID_ARGUMENT, "bad_body", f"gzip body is corrupt: {error}") \
                from None
        if len(data) > limit:
            raise too_large
        return data

    def _grpc_handler(self, signal: str):
        async def export(body: bytes, context: grpc.aio.ServicerContext):
            metadata = dict(context.invocation_metadata() or ())
            try:
                tenant = self._authorize(metadata.get("authorization") or metadata.get("x-agentwatch-api-key"))
                async with self._reading(len(body)):
                    converted = await self._ingest(signal, "grpc", body, False, tenant)
            except Rejected as rejected:
                self.metrics.bad_requests.labels(rejected.reason).inc()
                self.metrics.requests.labels(signal, "grpc", rejected.reason).inc()
                trailer = ()
                if rejected.http_status == 503:
                    # OTLP/gRPC throttling: RetryInfo tells exporters to retry, and when.
                    trailer = (("grpc-status-details-bin", _retry_status(rejected, self.config.retry_after_s)),)
                await context.abort(rejected.grpc_code, str(rejected), trailing_metadata=trailer)
            return self._response(signal, converted)

        return export

    async def _healthz(self, request: web.Request) -> web.Response:
        healthy = self.writer.alive
        return web.json_response({
            "status": "ok" if healthy else "writer stopped",
            "queue_bytes": self.writer.queued_bytes,
            "queue_rows": self.writer.queued_rows,
            "written_rows": self.writer.written_rows,
            "memory_bytes": self.memory.used_bytes,
            "memory_limit_bytes": self.memory.limit_bytes,
        }, status=200 if healthy else 503)

    async def _metrics_page(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"})


def _retry_status(rejected: Rejected, retry_after_s: int) -> bytes:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=retry_after_s)))
    return status_pb2.Status(code=rejected.grpc_code.value[0], message=str(rejected),
                             details=[detail]).SerializeToString()


def _status_response(http_status: int, code: grpc.StatusCode, message: str, is_json: bool,
                     headers: dict[str, str]) -> web.Response:
    status = status_pb2.Status(code=code.value[0], message=message)
    if is_json:
        return web.Response(status=http_status, body=orjson.dumps({"code": status.code, "message": message}),
                            content_type=JSON, headers=headers)
    return web.Response(status=http_status, body=status.SerializeToString(), content_type=PROTOBUF,
                        headers=headers)
