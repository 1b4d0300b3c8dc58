"""The `agentwatch` command."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

log = logging.getLogger("agentwatch")

# What `pip install 'agentwatch[server]'` adds to the SDK; the commands need them, an agent does not.
SERVER_MODULES = ("clickhouse_connect", "chdb", "grpc", "aiohttp",
                  "prometheus_client", "genai_prices", "river", "sklearn", "streamlit", "altair", "polars",
                  "pyarrow", "numpy", "detect_secrets", "re2")


def _server_dependency(error: ImportError) -> bool:
    name = getattr(error, "name", None) or ""
    return any(name == module or name.startswith(module + ".") for module in SERVER_MODULES)


try:
    from agentwatch import config
    from agentwatch.schemas import migrate, store
except ImportError as error:  # the SDK alone is installed: main() says what to install
    if not _server_dependency(error):
        raise
    _missing: ImportError | None = error
else:
    _missing = None


def _connect_factory(settings: config.Settings):
    return lambda: store.connect(settings.dsn, settings.database)


def _detector_connect(settings: config.Settings, index: int):
    """The detector worker's store: on a cluster, one node of its own shard (detectors/cluster_shard.py)."""
    from agentwatch.detectors.cluster_shard import shard_dsn

    if not (settings.clickhouse_cluster and settings.detector_clickhouse_dsn):
        return _connect_factory(settings)
    dsn = shard_dsn(settings.detector_clickhouse_dsn, index)
    return lambda: store.connect(dsn, settings.database)


def _prepare_store(settings: config.Settings):
    client = store.connect(settings.dsn, settings.database)
    applied = migrate.apply(client, cluster=settings.clickhouse_cluster)
    if applied:
        log.info("schema: applied %s", ", ".join(applied))
    _apply_retention(client, settings, settings.clickhouse_cluster)
    return client


def _apply_retention(client, settings: config.Settings, cluster: str):
    from agentwatch.schemas import retention

    return retention.apply(client, retention.periods_from(settings), cluster=cluster)


def _start_receiver(settings: config.Settings, http_port: int | None = None, grpc_port: int | None = None):
    from agentwatch.collector.receiver import Receiver, ReceiverConfig

    receiver_config = ReceiverConfig(
        host=settings.listen_host,
        http_port=settings.otlp_http_port if http_port is None else http_port,
        grpc_port=settings.otlp_grpc_port if grpc_port is None else grpc_port,
        max_request_bytes=settings.max_request_bytes,
        max_queue_bytes=settings.max_queue_bytes,
        max_converting_bytes=settings.max_converting_bytes,
        max_memory_bytes=settings.max_memory_bytes,
        max_memory_spike_bytes=settings.max_memory_spike_bytes,
        max_batch_bytes=store.insert_batch_bytes(settings.dsn),
        spool_dir=settings.spool_path,
        tls_cert=settings.tls_cert or None,
        tls_key=settings.tls_key or None,
        secrets=settings.secrets,
    )
    return Receiver(_connect_factory(settings), receiver_config).start()


def _wait_for_termination() -> None:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()


class Detection:
    """The detector worker and the alert dispatcher of this process, each in its own thread."""

    def __init__(self, settings: config.Settings, shard: tuple[int, int] = (0, 1), alerts: bool = True) -> None:
        from agentwatch.detectors.alerts import AlertConfig, AlertDispatcher
        from agentwatch.detectors.worker import DetectorConfig, DetectorWorker
        from agentwatch.schemas.prices import PriceRefresher

        connect = _connect_factory(settings)
        self.stop_event = threading.Event()
        self.worker = DetectorWorker(_detector_connect(settings, shard[0]), DetectorConfig.from_env(), shard=shard,
                                     cluster=settings.clickhouse_cluster)
        self.dispatcher = AlertDispatcher(connect, AlertConfig.from_env()) if alerts else None
        # Prices for spans that reach the store without the receiver (schemas/prices.py).
        self.prices = PriceRefresher(connect)
        loops = [self.worker.run_forever, self.prices.run_forever] + (
            [self.dispatcher.run_forever] if self.dispatcher else [])
        self.threads = [threading.Thread(target=loop, args=(self.stop_event,), daemon=True,
                                         name=f"agentwatch-{loop.__self__.__class__.__name__}") for loop in loops]
        for thread in self.threads:
            thread.start()

    def metrics(self, registry=None):
        """A Prometheus registry (`registry` if given) with the worker's and dispatcher's metrics."""
        from agentwatch.detectors.metrics import registry_for

        return registry_for(self.worker, self.dispatcher, registry)

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(60)


def cmd_serve(args, settings: config.Settings) -> int:
    """`up` (receiver, detectors, alerts, dashboard) and `collector` (receiver only), until SIGTERM."""
    if args.command == "up" and _dashboard_refused("up", settings):
        return 2
    _prepare_store(settings)
    receiver = _start_receiver(settings)
    detection = None
    if args.command == "up":
        detection = Detection(settings)
        detection.metrics(receiver.metrics.registry)  # served on the receiver's /metrics
    tls = " (TLS)" if settings.tls_cert else ""
    print(f"agentwatch {args.command}: OTLP/HTTP{tls} on {settings.listen_host}:{receiver.http_port}, "
          f"OTLP/gRPC{tls} on {settings.listen_host}:{receiver.grpc_port}, store {settings.dsn} "
          f"database {settings.database}" + (", detectors and alerts running" if detection else ""), flush=True)
    if args.command == "up":
        from agentwatch.dashboard.server import serve

        print(f"agentwatch up: dashboard on {_dashboard_scheme(settings)}://{settings.listen_host}:"
              f"{settings.dashboard_port}", flush=True)
        # Streamlit takes the main thread and returns on SIGTERM / SIGINT.
        serve(settings.dashboard_port, settings.listen_host, dsn=settings.dsn, database=settings.database,
              settings=settings)
    else:
        _wait_for_termination()
    log.info("stopping: writing everything accepted")
    receiver.stop()
    if detection:
        detection.stop()
    print(f"agentwatch {args.command}: stopped after writing {receiver.writer.written_rows} rows", flush=True)
    return 0


def _dashboard_refused(command: str, settings: config.Settings) -> bool:
    """Say why the dashboard may not serve as configured (beyond loopback without sign-in, say)."""
    from agentwatch.dashboard.server import refusal

    why = refusal(settings.listen_host, settings)
    if why:
        print(f"agentwatch {command}: {why}", file=sys.stderr)
    return bool(why)


def _dashboard_scheme(settings: config.Settings) -> str:
    return "https" if settings.tls_cert else "http"


def cmd_dashboard(args, settings: config.Settings) -> int:
    from agentwatch.dashboard.server import serve

    if _dashboard_refused("dashboard", settings):
        return 2
    _prepare_store(settings)
    print(f"agentwatch dashboard: {_dashboard_scheme(settings)}://{settings.listen_host}:{settings.dashboard_port}",
          flush=True)
    serve(settings.dashboard_port, settings.listen_host, dsn=settings.dsn, database=settings.database,
          settings=settings)
    return 0


def cmd_replay(args, settings: config.Settings) -> int:
    from agentwatch.dashboard.replay import replay

    client = store.connect(settings.dsn, settings.database, create=False)
    return replay(client, args.trace_id, show_payloads=args.payloads)


def cmd_detect(args, settings: config.Settings) -> int:
    """The detector worker (one shard of the tenants) and, unless --no-alerts, the dispatcher."""
    try:
        index, count = (int(part) for part in args.shard.split("/"))
        if not 0 <= index < count:
            raise ValueError
    except ValueError:
        print(f"--shard must be k/N with 0 <= k < N, not {args.shard!r}", file=sys.stderr)
        return 2
    _prepare_store(settings)
    if settings.clickhouse_cluster:  # a detector on the wrong node would read other tenants' rows, or none
        from agentwatch.detectors.cluster_shard import WrongShard, check_cluster_shard

        client = _detector_connect(settings, index)()
        try:
            host = check_cluster_shard(client, settings.clickhouse_cluster, (index, count))
        except WrongShard as exc:
            print(f"agentwatch detect: {exc}", file=sys.stderr)
            return 2
        finally:
            store.close_quietly(client)
        print(f"agentwatch detect: reading cluster shard {index + 1} on {host}", flush=True)
    detection = Detection(settings, (index, count), alerts=args.alerts)
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr=settings.listen_host, registry=detection.metrics())
    print(f"agentwatch detect: shard {index}/{count}" + (", alerts on" if args.alerts else "")
          + (f", metrics on http://{settings.listen_host}:{args.metrics_port}/metrics" if args.metrics_port else ""),
          flush=True)
    _wait_for_termination()
    detection.stop()
    return 0


def cmd_schema(args, settings: config.Settings) -> int:
    """`apply` the migrations to the store, or `render` them as SQL (no store needed)."""
    cluster = settings.clickhouse_cluster if args.cluster is None else args.cluster
    if args.action == "render":
        print(migrate.render(store.database_name(settings.dsn, settings.database), cluster), end="")
        return 0
    client = store.connect(settings.dsn, settings.database)
    applied = migrate.apply(client, cluster=cluster)
    print("applied: " + (", ".join(applied) if applied else "nothing (schema is up to date)"))
    changed = _apply_retention(client, settings, cluster)
    print("retention: " + ("; ".join(map(str, changed)) if changed else "up to date"))
    from agentwatch.schemas import prices

    priced = prices.sync(client, cluster)
    print(f"model prices: {priced} rows written" if priced else "model prices: up to date")
    return 0


def cmd_keys(args, settings: config.Settings) -> int:
    from agentwatch.collector.receiver import api_keys
    from agentwatch.schemas import audit
    from agentwatch.schemas.vocabulary import AUDIT_KEY_CREATED, AUDIT_KEY_REVOKED

    client = _prepare_store(settings)
    if args.action == "create":
        key = api_keys.create_key(client, args.tenant, args.name or "")
        audit.record(client, _decider(args), AUDIT_KEY_CREATED, tenant=args.tenant, target=api_keys.digest(key),
                     detail={"name": args.name or ""})
        print(key)
        print(f"(API key for tenant {args.tenant!r}; shown once, only its hash is stored)", file=sys.stderr)
    elif args.action == "revoke":
        api_keys.revoke_key(client, args.key)
        for key_hash, tenant, name in client.query(  # the key as given, or its digest
                "SELECT KeyHash, Tenant, Name FROM api_keys FINAL WHERE KeyHash IN %(h)s AND Revoked",
                {"h": [args.key, api_keys.digest(args.key)]}).result_rows:
            audit.record(client, _decider(args), AUDIT_KEY_REVOKED, tenant=tenant, target=key_hash,
                         detail={"name": name})
        print("revoked")
    else:
        for key_hash, tenant, name, created, revoked in client.query(
                "SELECT KeyHash, Tenant, Name, CreatedAt, Revoked FROM api_keys FINAL ORDER BY CreatedAt").result_rows:
            print(f"{key_hash[:16]}…  {tenant:<20} {name:<20} {created:%Y-%m-%d %H:%M}  "
                  f"{'revoked' if revoked else 'active'}")
    return 0


def _decider(args) -> str:
    import getpass

    try:
        user = getattr(args, "by", None) or getpass.getuser()  # `keys` has no --by
    except Exception:  # noqa: BLE001 - no login name in some containers
        user = "unknown"
    return f"cli:{user}"


def cmd_tenant(args, settings: config.Settings) -> int:
    """`tenant delete TENANT`: every row of the tenant, from every table; the counts are printed."""
    from agentwatch.schemas import tenant_delete

    client = _prepare_store(settings)
    if not args.yes:
        stored = tenant_delete.count(client, args.tenant, cluster=settings.clickhouse_cluster)
        for row in stored:
            print(f"{row.table:<28} {row.rows:>12} rows")
        print(f"tenant {args.tenant!r}: {sum(r.rows for r in stored)} rows in {len(stored)} tables; nothing deleted")
        if not sys.stdin.isatty() or input("type the tenant name to delete them for good: ") != args.tenant:
            print("not confirmed (run with --yes to delete without asking)", file=sys.stderr)
            return 1
    deleted = tenant_delete.delete(client, args.tenant, _decider(args), cluster=settings.clickhouse_cluster)
    for row in deleted:
        print(f"{row.table:<28} {row.rows:>12} rows deleted")
    print(f"tenant {args.tenant!r}: {sum(r.rows for r in deleted)} rows deleted from {len(deleted)} tables "
          "(the audit log keeps its entries and records this deletion)")
    return 0


def cmd_halt(args, settings: config.Settings) -> int:
    """`halt` / `release` a trace, an agent or a whole tenant (the `halts` table; guards poll it)."""
    from agentwatch.schemas import audit, halts
    from agentwatch.schemas.vocabulary import AUDIT_HALT, AUDIT_RELEASE

    scope, target = ("trace", args.trace.lower()) if args.trace else ("agent", args.agent) if args.agent \
        else ("tenant", args.tenant)
    if scope == "trace" and (len(target) != 32 or any(c not in "0123456789abcdef" for c in target)):
        print(f"--trace must be a trace id of 32 hex digits, not {args.trace!r}", file=sys.stderr)
        return 2
    what = f"tenant {target}" if scope == "tenant" else f"{scope} {target} of tenant {args.tenant}"
    client = _prepare_store(settings)
    if args.command == "halt":
        calls = "model" if args.model_calls else "all"
        made = halts.decision(args.tenant, scope, target, "halt", calls=calls, reason=args.reason,
                              decided_by=_decider(args))
        halts.record(client, [made])
        audit.record(client, made.decided_by, AUDIT_HALT, tenant=args.tenant, target=target,
                     detail={"scope": scope, "calls": calls, "halt_id": made.halt_id, "reason": made.reason})
        print(f"halted {'the model calls of ' if calls == 'model' else ''}{what}: "
              "agents with the guard on stop at their next call")
        return 0
    in_force = [d for d in halts.current(client, targets=[(args.tenant, scope, target)]) if d.action == "halt"]
    if not in_force:
        print(f"{what} is not halted", file=sys.stderr)
        return 1
    made = halts.released(in_force[0], reason=args.reason or "released by a person", decided_by=_decider(args))
    halts.record(client, [made])
    audit.record(client, made.decided_by, AUDIT_RELEASE, tenant=args.tenant, target=target,
                 detail={"scope": scope, "halt_id": made.halt_id, "reason": made.reason})
    print(f"released {what}: its agents carry on")
    return 0


def cmd_halts(args, settings: config.Settings) -> int:
    """The halts in force (or, with --history, the latest decisions)."""
    from agentwatch.schemas import halts

    client = _prepare_store(settings)
    rows = halts.history(client, args.tenant) if args.history else halts.open_halts(client, args.tenant)
    if not rows:
        print("no decisions" if args.history else "nothing is halted")
    for d in rows:
        why = f"{d.kind} {d.anomaly_id}" if d.anomaly_id else d.reason
        print(f"{d.decided_at}  {d.action:<7} {d.tenant:<16} {d.scope:<6} {d.target:<34} {d.calls:<5} "
              f"{d.decided_by:<16} {why}")
    return 0


def cmd_demo(args, settings: config.Settings) -> int:
    from agentwatch import demo_command

    return demo_command.run(args, settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentwatch", description=__doc__)
    parser.add_argument("--config", help="path to agentwatch.toml")
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("up", help="run every component in one process on the embedded store")
    commands.add_parser("collector", help="run the OTLP receiver")
    detect = commands.add_parser("detect", help="run the streaming detectors and the alert dispatcher")
    detect.add_argument("--shard", default="0/1", help="k/N: take the tenants whose hash falls to shard k of N")
    detect.add_argument("--no-alerts", dest="alerts", action="store_false",
                        help="detect only; run the dispatcher elsewhere (once per fleet)")
    detect.add_argument("--metrics-port", type=int, default=9464,
                        help="serve the detectors' Prometheus metrics on this port (0: off; one port per process)")

    commands.add_parser("dashboard", help="run the Streamlit replay dashboard")
    replay = commands.add_parser("replay", help="replay a trace step by step in the terminal")
    replay.add_argument("trace_id")
    replay.add_argument("--no-payloads", dest="payloads", action="store_false",
                        help="show the steps without prompts, reasoning and tool results")

    schema = commands.add_parser("schema", help="manage the ClickHouse schema")
    schema.add_argument("action", choices=["apply", "render"],
                        help="apply: migrate the store; render: print every statement as SQL for review")
    schema.add_argument("--cluster", help="render for this ClickHouse cluster: ON CLUSTER, Replicated and "
                                          "Distributed tables ('' for a single server; default "
                                          "AGENTWATCH_CLICKHOUSE_CLUSTER)")

    keys = commands.add_parser("keys", help="manage receiver API keys (tenant per key)")
    keys_actions = keys.add_subparsers(dest="action", required=True)
    create = keys_actions.add_parser("create")
    create.add_argument("--tenant", required=True)
    create.add_argument("--name")
    revoke = keys_actions.add_parser("revoke")
    revoke.add_argument("key", help="the key, or its SHA-256 hex digest")
    keys_actions.add_parser("list")

    tenant = commands.add_parser("tenant", help="tenant administration")
    tenant_actions = tenant.add_subparsers(dest="action", required=True)
    delete = tenant_actions.add_parser("delete", help="delete every row of a tenant from every table")
    delete.add_argument("tenant")
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    delete.add_argument("--by", help="who deletes, for the audit log (default: the login name)")

    for name, text in (("halt", "halt a trace, an agent or a whole tenant: agents with the guard on stop"),
                       ("release", "release a halt: the agents carry on, without a restart")):
        command = commands.add_parser(name, help=text)
        command.add_argument("--tenant", required=True)
        which = command.add_mutually_exclusive_group(required=True)
        which.add_argument("--trace", metavar="TRACE_ID", help="one trace (32 hex digits)")
        which.add_argument("--agent", metavar="AGENT_ID", help="one agent id, wherever it runs")
        which.add_argument("--all", action="store_true", help="every agent of the tenant")
        command.add_argument("--reason", required=name == "halt", help="why (kept in the halts table)")
        command.add_argument("--by", help="who decides (default: the login name)")
        if name == "halt":
            command.add_argument("--model-calls", action="store_true",
                                 help="stop model calls only (tools and agents carry on)")
    listing = commands.add_parser("halts", help="list the halts in force")
    listing.add_argument("--tenant")
    listing.add_argument("--history", action="store_true", help="the latest decisions, releases included")

    demo = commands.add_parser("demo", help="simulate a multi-tenant agent fleet with labelled incidents")
    pace = demo.add_mutually_exclusive_group()
    pace.add_argument("--fast-forward", dest="fast_forward", action="store_true", default=True,
                      help="simulate the span timestamps of --duration seconds in a few seconds (default)")
    pace.add_argument("--real-time", dest="fast_forward", action="store_false",
                      help="run in real time for --duration seconds")
    demo.add_argument("--family", choices=("demo", "stock"), default="demo",
                      help="demo: agents instrumented with agentwatch's SDK (default); stock: spans from the stock "
                           "OpenTelemetry SDK shaped as openai-v2, OpenInference and OpenLLMetry emit them, "
                           "incidents a few times normal (fast-forward only)")
    demo.add_argument("--duration", type=float, default=3600.0, help="seconds of fleet activity (default 3600)")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--tenants", type=int, default=6)
    demo.add_argument("--no-incidents", dest="incidents", action="store_false",
                      help="normal traffic only")
    demo.add_argument("--endpoint", help="send to a running receiver (e.g. http://127.0.0.1:4318) instead of "
                                         "starting one in this process")
    demo.add_argument("--labels", help="also write the incident labels to this JSON file")
    demo.add_argument("--no-detect", dest="detect", action="store_false",
                      help="do not run the detectors over what was sent (only without --endpoint)")
    return parser


COMMANDS = {"up": cmd_serve, "collector": cmd_serve, "detect": cmd_detect, "dashboard": cmd_dashboard,
            "replay": cmd_replay, "schema": cmd_schema, "keys": cmd_keys, "demo": cmd_demo,
            "halt": cmd_halt, "release": cmd_halt, "halts": cmd_halts, "tenant": cmd_tenant}


def main(argv: list[str] | None = None) -> int:
    try:
        if _missing is not None:
            raise _missing
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        settings = config.load(args.config)
        return COMMANDS[args.command](args, settings)
    except ImportError as error:
        if not _server_dependency(error):
            raise
        print(f"agentwatch: the agentwatch command needs the server's dependencies (missing: {error.name});"
              " install them with: pip install 'agentwatch[server]'", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
