"""Simulated agent fleets with labelled incidents, to exercise the pipeline and score the detectors.

Two independent scenario families, one module each:

* ``agentwatch.demo.fleet`` — the demo fleet, made with agentwatch's own SDK
  (``run_fleet``; what ``agentwatch demo`` runs). Its names are re-exported
  here, so ``from agentwatch import demo; demo.run_fleet(...)`` works.
* ``agentwatch.demo.stock`` — a fleet made with nothing but the stock
  OpenTelemetry SDK and OTLP exporter, its spans shaped the way the public
  GenAI, OpenInference and OpenLLMetry instrumentations emit them
  (``from agentwatch.demo import stock; stock.run_stock_fleet(...)``).

Both return the same ``Incident`` / ``DemoResult`` records.
"""

from agentwatch.demo.fleet import (
    KINDS,
    MAX_TENANTS,
    NS,
    _TENANTS,
    DemoResult,
    Incident,
    SimulatedClock,
    _Corpus,
    _Sim,
    incidents_to_json,
    make_clock,
    record_incidents,
    run_fleet,
)

__all__ = [
    "KINDS",
    "MAX_TENANTS",
    "DemoResult",
    "Incident",
    "SimulatedClock",
    "incidents_to_json",
    "make_clock",
    "record_incidents",
    "run_fleet",
]
