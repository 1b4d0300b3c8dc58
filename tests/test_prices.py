"""Spans written straight into otel_traces (an OpenTelemetry Collector's clickhouseexporter, no receiver)
are priced by the typed view exactly as the receiver prices the same span."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from genai_prices import data_snapshot, types

from agentwatch.collector.receiver.pricing import Pricer, reference_cost
from agentwatch.schemas import migrate, prices
from agentwatch.schemas.attributes import COST_USD

# What stock instrumentations put on a model-call span, by convention: OpenTelemetry GenAI (openai-v2),
# OpenLLMetry's older gen_ai.usage.prompt/completion names, and OpenInference's llm.* names.
GENAI = ("gen_ai.provider.name", "gen_ai.request.model", "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens")
OPENLLMETRY = ("gen_ai.system", "gen_ai.request.model", "gen_ai.usage.prompt_tokens", "gen_ai.usage.completion_tokens")
OPENINFERENCE = ("llm.provider", "llm.model_name", "llm.token_count.prompt", "llm.token_count.completion")

CASES = [
    # convention, provider, model, input tokens, cached input tokens, output tokens, day
    (GENAI, "openai", "gpt-4o-mini", 1_200, 0, 300, "2026-11-30"),
    (OPENLLMETRY, "openai", "gpt-4o", 52_000, 40_000, 900, "2026-11-30"),
    (OPENINFERENCE, "anthropic", "claude-sonnet-4-5", 240_000, 0, 2_000, "2026-11-30"),  # past its 200k tier
    (GENAI, "anthropic", "claude-opus-4-6", 250_000, 0, 1_000, "2026-03-01"),  # before its price change
    (GENAI, "anthropic", "claude-opus-4-6", 250_000, 0, 1_000, "2026-03-20"),  # after it
    (GENAI, "gcp.gemini", "gemini-2.0-flash", 10_000, 2_000, 500, "2026-11-30"),  # OpenTelemetry's provider name
    (GENAI, "some-gateway", "gpt-4o-mini", 1_000, 0, 100, "2026-11-30"),  # provider unknown: priced by model
]
CACHED_KEY = "gen_ai.usage.cache_read.input_tokens"


def span_attributes(convention, provider, model, input_tokens, cached, output_tokens) -> dict[str, str]:
    provider_key, model_key, input_key, output_key = convention
    attributes = {provider_key: provider, model_key: model, input_key: str(input_tokens),
                  output_key: str(output_tokens), "gen_ai.operation.name": "chat", "agentwatch.tenant.id": "acme"}
    if cached:
        attributes[CACHED_KEY] = str(cached)
    return attributes


def write_as_collector(client, spans: list[tuple[str, datetime, dict]]) -> None:
    """Insert spans the way the clickhouseexporter does: its columns, nothing priced."""
    client.insert("otel_traces", [
        [start, uuid.uuid4().hex, span_id, "", "chat", "Client", "svc", {}, "opentelemetry.instrumentation.openai_v2",
         attributes, 1_000_000, "Ok"]
        for span_id, start, attributes in spans
    ], column_names=["Timestamp", "TraceId", "SpanId", "ParentSpanId", "SpanName", "SpanKind", "ServiceName",
                     "ResourceAttributes", "ScopeName", "SpanAttributes", "Duration", "StatusCode"])


def stored_costs(client, span_ids) -> dict[str, float | None]:
    rows = client.query("SELECT SpanId, CostUSD FROM agent_spans WHERE SpanId IN {ids:Array(String)}",
                        parameters={"ids": list(span_ids)}).result_rows
    return dict(rows)


def prefix_matched_name(provider_id: str) -> str:
    """A name no exact clause lists that genai-prices still prices: one of its prefixes, extended."""
    exact = {name for _, name, *_ in prices.snapshot_rows()}
    provider = data_snapshot.get_snapshot().find_provider(None, provider_id, None)
    for model in provider.models:
        clauses = getattr(model.match, "or_", None) or [model.match]
        for clause in clauses:
            if isinstance(clause, types.ClauseStartsWith):
                name = clause.starts_with + "-2099-01-01"
                if name not in exact and provider.find_model(name) is model:
                    return name
    raise AssertionError(f"genai-prices lists no prefix match for {provider_id}")


@pytest.fixture(scope="module")
def priced(client):
    assert prices.sync(client) > 0
    assert prices.sync(client) == 0  # the same genai-prices data is not written twice
    return client


def test_collector_spans_cost_what_the_receiver_charges(priced):
    spans, expected = [], {}
    for i, (convention, provider, model, input_tokens, cached, output_tokens, day) in enumerate(CASES):
        start = datetime.fromisoformat(day).replace(hour=9, tzinfo=UTC)
        attributes = span_attributes(convention, provider, model, input_tokens, cached, output_tokens)
        span_id = f"{i:016x}"
        spans.append((span_id, start, attributes))
        expected[span_id] = Pricer()(dict(attributes), int(start.timestamp() * 1e9))
        assert expected[span_id] is not None, (provider, model)
    write_as_collector(priced, spans)
    stored = stored_costs(priced, expected)
    assert stored.keys() == expected.keys()
    for span_id, cost in expected.items():
        assert stored[span_id] == pytest.approx(cost, rel=1e-9), CASES[int(span_id, 16)]
    # The tiers and the dated price change are the library's own, not only the receiver's fast path.
    _, _, model, input_tokens, cached, output_tokens, _ = CASES[2]
    assert stored[f"{2:016x}"] == pytest.approx(float(reference_cost(model, "anthropic", input_tokens, cached,
                                                                       output_tokens)), rel=1e-9)
    assert stored[f"{3:016x}"] != stored[f"{4:016x}"]


def test_a_cost_the_span_carries_is_kept(priced):
    attributes = span_attributes(GENAI, "openai", "gpt-4o-mini", 1_000, 0, 100) | {COST_USD: "0.125"}
    write_as_collector(priced, [("c0ffee0000000001", datetime(2026, 11, 30, 9, tzinfo=UTC), attributes)])
    assert stored_costs(priced, ["c0ffee0000000001"]) == {"c0ffee0000000001": 0.125}


def test_unknown_model_stays_unpriced_and_counted(priced):
    attributes = span_attributes(GENAI, "acme-internal", "acme-llm-7b", 1_000, 0, 100)
    write_as_collector(priced, [("c0ffee0000000002", datetime.now(UTC), attributes)])
    assert stored_costs(priced, ["c0ffee0000000002"]) == {"c0ffee0000000002": None}
    assert prices.price_seen_models(priced) == []  # the library does not know it either: still unpriced
    unpriced = priced.query("SELECT sum(UnpricedCalls) FROM agent_minutes WHERE Tenant = 'acme'").result_rows[0][0]
    assert unpriced >= 1


def test_a_name_matched_by_pattern_is_priced_once_seen(priced):
    """genai-prices prices dated snapshots of a model by prefix; the table learns such a name from
    the unpriced spans that carry it, and the spans that follow are priced."""
    name = prefix_matched_name("openai")
    attributes = span_attributes(GENAI, "openai", name, 2_000, 0, 200)
    now = datetime.now(UTC)
    assert Pricer()(dict(attributes), int(now.timestamp() * 1e9)) is not None  # the receiver prices it
    assert priced.query("SELECT count() FROM model_prices WHERE Model = {m:String}",
                        parameters={"m": name}).result_rows[0][0] == 0
    write_as_collector(priced, [("c0ffee0000000003", now, attributes)])
    assert stored_costs(priced, ["c0ffee0000000003"]) == {"c0ffee0000000003": None}
    assert prices.price_seen_models(priced) == [("openai", name)]
    write_as_collector(priced, [("c0ffee0000000004", now, attributes)])
    expected = Pricer()(dict(attributes), int(now.timestamp() * 1e9))
    assert stored_costs(priced, ["c0ffee0000000004"])["c0ffee0000000004"] == pytest.approx(expected, rel=1e-9)


def test_cluster_rendering_prices_from_every_shard():
    statements = [m.statements("agentwatch", "prod") for m in migrate.migrations() if m.name == "model_prices"][0]
    dictionary = next(s for s in statements if s.startswith("CREATE DICTIONARY"))
    assert "ON CLUSTER 'prod'" in dictionary
    assert "FROM `agentwatch`.model_prices FINAL" in dictionary  # the Distributed table: all shards
    view = next(s for s in statements if "MODIFY QUERY" in s)
    assert view.startswith("ALTER TABLE `agentwatch`.agent_spans_mv ON CLUSTER 'prod' MODIFY QUERY")
    assert "'agentwatch.model_prices_dict'" in view and "FROM `agentwatch`.otel_traces_local" in view
