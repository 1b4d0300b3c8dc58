"""The `model_prices` table: what the receiver's pricing charges, as rows the typed view can read.

Spans that reach the store without passing the receiver (an OpenTelemetry Collector's
clickhouseexporter writing `otel_traces` directly) are priced by `agent_spans_mv` from this
table through the `model_prices_dict` dictionary (schemas/sql/0014). The rows come from the
same genai-prices data and rules as the receiver's `Pricer` (collector/receiver/pricing.py),
so a span costs the same whichever way it arrived.

The view looks a span's model up by its exact name, so the table holds every name genai-prices
lists (model ids and the exact names its matching accepts), under the provider names spans carry
(the library's ids and OpenTelemetry's, `PROVIDER_IDS`) and under '' for any provider.
genai-prices also matches by prefix and pattern ("gpt-4o-2099-01-01"); such a name is added
once it is seen: `price_seen_models` resolves the unpriced names of recent spans and adds the ones
the library knows, so the spans that follow are priced. Spans stored before that stay unpriced
and are counted as such (`UnpricedCalls`), never priced at 0.
"""

from __future__ import annotations

import logging
import os
import threading
from importlib import metadata
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

from clickhouse_connect.driver.client import Client
from genai_prices import data_snapshot, types

from agentwatch.collector.receiver.pricing import PROVIDER_IDS, RateCard, rate_card
from agentwatch.schemas.migrate import CLUSTER_ENV

log = logging.getLogger(__name__)

COLUMNS = ["Provider", "Model", "ValidFrom", "ValidTo", "InputPerMTok", "CachedInputPerMTok", "OutputPerMTok",
           "InputTierStarts", "InputTierRates", "CachedTierStarts", "CachedTierRates", "OutputTierStarts",
           "OutputTierRates", "Source"]
FIRST_DAY = date(1970, 1, 1)
LAST_DAY = date(2149, 6, 6)  # the last day ClickHouse's Date holds
SEEN_SOURCE = "seen"


def snapshot_source() -> str:
    """`Source` of the rows built from the installed genai-prices data: the package's version."""
    return "genai-prices " + metadata.version("genai-prices")


def _exact_names(match) -> Iterator[str]:
    if isinstance(match, types.ClauseEquals):
        yield match.equals
    for clause in getattr(match, "or_", None) or ():
        yield from _exact_names(clause)


def _aliases() -> dict[str, list[str]]:
    """genai-prices provider id -> the provider names spans may carry for it."""
    names: dict[str, list[str]] = {}
    for otel_name, library_id in PROVIDER_IDS.items():
        names.setdefault(library_id, []).append(otel_name)
    return names


def _price_days(provider: str | None, model: str) -> list[date]:
    """The first day of each period in which the model's price may differ (its start-date constraints)."""
    try:
        _, found = data_snapshot.get_snapshot().find_provider_model(model, None, provider, None)
    except LookupError:
        if provider is None:
            return []
        return _price_days(None, model)
    starts = {FIRST_DAY}
    if isinstance(found.prices, list):
        starts |= {p.constraint.start_date for p in found.prices
                   if isinstance(p.constraint, types.StartDateConstraint)}
    return sorted(starts)


def _row(provider: str, model: str, start: date, end: date, card: RateCard, source: str) -> list:
    def tiers(pairs):
        return [start for start, _ in pairs], [rate for _, rate in pairs]

    return [provider, model, start, end, card.input, card.cached, card.output, *tiers(card.input_tiers),
            *tiers(card.cached_tiers), *tiers(card.output_tiers), source]


def rows_for(provider: str, model: str, source: str) -> list[list]:
    """The rows pricing `model` under the provider name `provider` ('' for any), one per price period."""
    library_provider = PROVIDER_IDS.get(provider, provider) or None
    days = _price_days(library_provider, model)
    if not days:
        return []
    rows = []
    for start, following in zip(days, days[1:] + [LAST_DAY + timedelta(days=1)], strict=True):
        card = rate_card(library_provider, model, (start - FIRST_DAY).days)
        if card is not None:
            rows.append(_row(provider, model, start, following - timedelta(days=1), card, source))
    return rows


def snapshot_rows() -> list[list]:
    """Rows for every exact model name genai-prices knows, under each provider name and under ''."""
    aliases, source, rows, seen = _aliases(), snapshot_source(), [], set()
    for provider in data_snapshot.get_snapshot().providers:
        for model in provider.models:
            for name in {model.id, *_exact_names(model.match)}:
                for provider_name in (provider.id, *aliases.get(provider.id, ()), ""):
                    if (provider_name, name) not in seen:
                        seen.add((provider_name, name))
                        rows += rows_for(provider_name, name, source)
    return rows


def reload(client: Client, cluster: str | None = None) -> None:
    """Load new rows into the dictionary now rather than at its next refresh (every node on a cluster;
    `cluster` None reads AGENTWATCH_CLICKHOUSE_CLUSTER)."""
    cluster = os.environ.get(CLUSTER_ENV, "") if cluster is None else cluster
    client.command("SYSTEM RELOAD DICTIONARY model_prices_dict" + (f" ON CLUSTER '{cluster}'" if cluster else ""))


def sync(client: Client, cluster: str | None = None) -> int:
    """Write the installed genai-prices data into `model_prices` unless it is there already; rows written."""
    source = snapshot_source()
    held = client.query("SELECT count() FROM model_prices WHERE Source = {s:String}", parameters={"s": source})
    if held.result_rows[0][0]:
        return 0
    rows = snapshot_rows()
    client.insert("model_prices", rows, column_names=COLUMNS)
    reload(client, cluster)
    log.info("model prices: %d rows from %s", len(rows), source)
    return len(rows)


def price_seen_models(client: Client, since: timedelta = timedelta(hours=1)) -> list[tuple[str, str]]:
    """Add the models that recent unpriced spans name and genai-prices knows; returns the (provider, model)
    pairs added. A name the library does not know stays unpriced (and counted as such)."""
    unpriced = client.query(
        "SELECT DISTINCT lower(Provider), Model FROM agent_spans "
        "WHERE Timestamp >= {since:DateTime64(6)} AND CostUSD IS NULL AND Model != '' "
        "AND InputTokens + OutputTokens > 0 AND (lower(Provider), Model) NOT IN "
        "(SELECT Provider, Model FROM model_prices)",
        parameters={"since": datetime.now(UTC) - since}).result_rows
    added, rows = [], []
    for provider, model in unpriced:
        found = rows_for(provider, model, SEEN_SOURCE)
        if found:
            added.append((provider, model))
            rows += found
    if rows:
        client.insert("model_prices", rows, column_names=COLUMNS)
        reload(client)
        log.info("model prices: added %s", ", ".join(f"{p or '*'}/{m}" for p, m in added))
    return added


class PriceRefresher:
    """Keeps `model_prices` current in a detector process: the snapshot at start, seen names each interval."""

    def __init__(self, connect, interval_s: float = 30.0) -> None:
        self.connect = connect
        self.interval_s = interval_s

    def run_forever(self, stop: threading.Event) -> None:
        client = self.connect()
        synced = False  # the installed genai-prices data cannot change while the process runs: write it once
        while not stop.is_set():
            try:
                if not synced:
                    sync(client)
                    synced = True
                price_seen_models(client)
            except Exception:  # the store may be briefly away; pricing resumes on the next pass
                log.exception("model prices: refresh failed")
            stop.wait(self.interval_s)
