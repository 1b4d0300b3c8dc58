"""Cost at ingest: `agentwatch.cost.usd` from model and token counts, via genai-prices.

Token semantics follow the OTel GenAI conventions, which genai-prices shares:
input tokens include cached reads (priced at the cache-read rate), output
tokens include reasoning tokens (priced at the output rate, the way every
provider bills them). An unknown model yields no cost (NULL in agent_spans)
and a counted warning, never a silent 0. A cost the span carries is kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache

from genai_prices import Usage, calc_price, data_snapshot, types

from agentwatch.schemas.attributes import (
    CACHED_INPUT_TOKENS_KEYS,
    COST_USD,
    INPUT_TOKENS_KEYS,
    MODEL_KEYS,
    OUTPUT_TOKENS_KEYS,
    PROVIDER_KEYS,
    first,
)

log = logging.getLogger(__name__)

# OTel `gen_ai.provider.name` values whose genai-prices provider id differs.
PROVIDER_IDS = {
    "gcp.gemini": "google",
    "gcp.vertex_ai": "google",
    "gcp.gen_ai": "google",
    "aws.bedrock": "aws",
    "azure.ai.openai": "azure",
    "azure.ai.inference": "azure",
    "x_ai": "x-ai",
    "mistral_ai": "mistral",
}
_MTOK = 1_000_000


def _int(text: str) -> int:
    try:
        return int(float(text)) if text else 0
    except (ValueError, OverflowError):  # not a number, or "1e400": no count to price
        return 0


class Pricer:
    """Prices spans in place. `on_unknown(model)` is called once per span priced at NULL."""

    def __init__(self, on_unknown: Callable[[str], None] | None = None):
        self.on_unknown = on_unknown
        self._warned: set[str] = set()

    def __call__(self, attrs: dict[str, str], start_ns: int) -> float | None:
        if attrs.get(COST_USD):
            return None
        model = first(attrs, MODEL_KEYS)
        if not model:
            return None
        input_tokens = _int(first(attrs, INPUT_TOKENS_KEYS))
        output_tokens = _int(first(attrs, OUTPUT_TOKENS_KEYS))
        if not input_tokens and not output_tokens:
            return None
        cached = min(_int(first(attrs, CACHED_INPUT_TOKENS_KEYS)), input_tokens)
        provider = first(attrs, PROVIDER_KEYS).lower()
        provider = PROVIDER_IDS.get(provider, provider) or None
        day = start_ns // 86_400_000_000_000
        cost = self.cost(provider, model, day, input_tokens, cached, output_tokens)
        if cost is None:
            if self.on_unknown:
                self.on_unknown(model)
            if model not in self._warned:
                self._warned.add(model)
                log.warning("no price known for model %r (provider %r): its spans get no cost", model, provider)
            return None
        attrs[COST_USD] = repr(cost)
        return cost

    def cost(self, provider: str | None, model: str, day: int, input_tokens: int, cached: int,
             output_tokens: int) -> float | None:
        rates = _rates(provider, model, day)
        if rates is None:
            return None
        if rates == "tiered":
            # Tiered prices depend on the context length: ask the library per span.
            return _library_cost(provider, model, day, input_tokens, cached, output_tokens)
        per_input, per_cached, per_output = rates
        return ((input_tokens - cached) * per_input + cached * per_cached + output_tokens * per_output) / _MTOK


def _request_time(day: int) -> datetime:
    return datetime.fromtimestamp(day * 86_400 + 43_200, tz=UTC)


@lru_cache(maxsize=4096)
def _rates(provider: str | None, model: str, day: int):
    """USD per million input, cache-read and output tokens on that day, or
    "tiered", or None when the model is unknown. The library is slow per call
    (~100 us), so linear prices are read once per model and day."""
    try:
        found_provider, found_model = data_snapshot.get_snapshot().find_provider_model(model, None, provider, None)
        prices = found_model.get_prices(_request_time(day))
    except LookupError:
        if provider is None:
            return None
        return _rates(None, model, day)  # the provider name may be unknown to the library; try by model
    values = [prices.input_mtok, prices.cache_read_mtok, prices.output_mtok]
    if any(isinstance(value, types.TieredPrices) for value in values):
        return "tiered"
    per_input = float(values[0] or 0)
    return per_input, float(values[1] if values[1] is not None else per_input), float(values[2] or 0)


@lru_cache(maxsize=65536)
def _library_cost(provider, model, day, input_tokens, cached, output_tokens) -> float | None:
    try:
        result = calc_price(
            Usage(input_tokens=input_tokens, cache_read_tokens=cached, output_tokens=output_tokens),
            model_ref=model, provider_id=provider, genai_request_timestamp=_request_time(day),
        )
    except LookupError:
        if provider is None:
            return None
        return _library_cost(None, model, day, input_tokens, cached, output_tokens)
    return float(result.total_price)


@dataclass(frozen=True)
class RateCard:
    """USD per million input, cache-read and output tokens, each with its tiers: (start, rate) pairs where
    a request whose input tokens exceed `start` pays `rate` for all its tokens of that kind (genai-prices'
    threshold model). The same rules as `Pricer`, written out for a price table (schemas/prices.py)."""

    input: float
    cached: float
    output: float
    input_tiers: tuple[tuple[int, float], ...] = ()
    cached_tiers: tuple[tuple[int, float], ...] = ()
    output_tiers: tuple[tuple[int, float], ...] = ()


def rate_card(provider: str | None, model: str, day: int) -> RateCard | None:
    """What `Pricer` charges for `model` (genai-prices matching included) on that day; None if unknown.

    >>> card = rate_card("openai", "gpt-4o-2024-08-06", 20_000)
    >>> card.input > 0 and card.output > card.input and card.cached <= card.input
    True
    """
    try:
        _, found_model = data_snapshot.get_snapshot().find_provider_model(model, None, provider, None)
        prices = found_model.get_prices(_request_time(day))
    except LookupError:
        return None if provider is None else rate_card(None, model, day)

    def split(value) -> tuple[float, tuple[tuple[int, float], ...]]:
        if isinstance(value, types.TieredPrices):
            return float(value.base), tuple((int(t.start), float(t.price)) for t in value.tiers)
        return float(value or 0), ()

    per_input, input_tiers = split(prices.input_mtok)
    per_output, output_tiers = split(prices.output_mtok)
    if prices.cache_read_mtok is None:  # no cache price: cached tokens cost what input does (as in Pricer)
        per_cached, cached_tiers = per_input, input_tiers
    else:
        per_cached, cached_tiers = split(prices.cache_read_mtok)
    return RateCard(per_input, per_cached, per_output, input_tiers, cached_tiers, output_tiers)


def reference_cost(model: str, provider: str | None, input_tokens: int, cached: int, output_tokens: int) -> Decimal:
    """The library's own answer, for tests that check the fast path against it."""
    return calc_price(Usage(input_tokens=input_tokens, cache_read_tokens=cached, output_tokens=output_tokens),
                      model_ref=model, provider_id=provider).total_price
