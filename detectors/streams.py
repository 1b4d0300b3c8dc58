"""The two streams and the detectors each one feeds.

`SpanStream` reads agent_spans: it keeps the traces (partial trees, each span
attributed to its nearest agent: `traces`) and hands every row, with its trace,
to fanout, loop, cost_spike (at two scales), novel_trace and budget_forecast. `CredentialStream` reads
credential_events, gives each use its agent (the use's own, else its span's
nearest agent from the span stream, else the span's parent as a stand-in) and
hands it to cross_tenant and credential_fanout. Both keep event time
(`stream.EventTimeStream`) and dispatch through the `Detector` protocol only.
"""

from __future__ import annotations

from agentwatch.detectors.anomalies import Anomaly, AnomalyBook
from agentwatch.detectors.budget_forecast import BudgetForecast
from agentwatch.detectors.config import DetectorConfig
from agentwatch.detectors.cost_spike import CostSpike
from agentwatch.detectors.credential_fanout import CredentialFanout
from agentwatch.detectors.cross_tenant import CrossTenant
from agentwatch.detectors.detector import Detector
from agentwatch.detectors.fanout import Fanout
from agentwatch.detectors.loop import Loop
from agentwatch.detectors.novel_trace import NovelTrace
from agentwatch.detectors.stream import MINUTE_NS, NS, CredentialRow, EventTimeStream, SpanRow
from agentwatch.detectors.traces import OPEN, TraceBook


class DetectorStream(EventTimeStream):
    """Event time, the detectors of one stream, and rendering by kind."""

    def __init__(self, config: DetectorConfig, detectors: list[Detector]) -> None:
        super().__init__()
        self.detectors = detectors
        self.by_kind = {d.kind: d for d in detectors}
        self.config = config

    @property
    def late_rows(self) -> int:
        """Rows later than the allowed lateness, left out of windows already closed (by any detector)."""
        return max((getattr(d, "late_rows", 0) for d in self.detectors), default=0)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.by_kind)

    def configure(self, config: DetectorConfig) -> None:
        self.config = config
        for d in self.detectors:
            d.configure(config)

    def render(self, a: Anomaly) -> tuple[str, dict]:
        return self.by_kind[a.kind].render(a)

    def tick(self, book: AnomalyBook) -> None:
        wm = self.watermark
        for d in self.detectors:
            d.tick(wm, book)
        self.finish(wm, book)
        book.resolve_quiet(self.kinds, wm, int(self.config.quiet_period_s * NS))
        self.next_tick = (wm // MINUTE_NS + 1) * MINUTE_NS

    def finish(self, watermark: int, book: AnomalyBook) -> None:
        pass


class SpanStream(DetectorStream):
    """fanout, loop, cost_spike (and novel_trace, budget_forecast) over the agent_spans of one shard."""

    def __init__(self, config: DetectorConfig) -> None:
        detectors = [Fanout(config), Loop(config), CostSpike(config)]
        if config.cost_long_window_s:
            detectors.append(CostSpike(config, long=True))
        if config.novel_min_traces:
            detectors.append(NovelTrace(config))
        detectors += self._added_since_checkpoints(config, detectors)
        super().__init__(config, detectors)
        self.traces = TraceBook()

    @staticmethod
    def _added_since_checkpoints(config: DetectorConfig, detectors: list[Detector]) -> list[Detector]:
        """Detectors a checkpoint of an older release may lack; they start learning when it is restored."""
        have = {d.kind for d in detectors}
        wanted = []
        if (config.budget_period_share or config.tenant_period_budgets) and BudgetForecast.kind not in have:
            wanted.append(BudgetForecast(config))
        return wanted

    def configure(self, config: DetectorConfig) -> None:
        for detector in self._added_since_checkpoints(config, self.detectors):
            self.detectors.append(detector)
            self.by_kind[detector.kind] = detector
        super().configure(config)

    def process(self, rows: list[SpanRow], book: AnomalyBook) -> None:
        lateness = int(self.config.allowed_lateness_s * NS)
        for row in rows:
            self.advance(row, book, lateness)
            t = self.traces.observe(row)
            for d in self.detectors:
                d.observe(row, t, book)
            if t.explain_pending:
                t.explain_pending = False
                for d in self.detectors:
                    d.explain(t)

    def finish(self, watermark: int, book: AnomalyBook) -> None:
        for t in self.traces.finished(watermark, self.max_ts, self.config):
            for d in self.detectors:
                d.finish(t, book)

    def agent_of_use(self, row: CredentialRow) -> str:
        """The agent of a credential use that names none: its span's nearest agent so far."""
        t = self.traces.get(row.trace)
        if t is not None:
            return t.agent_of(row.span, row.parent)[0]
        return OPEN + (row.parent or row.span)


class CredentialStream(DetectorStream):
    """cross_tenant and credential_fanout over the credential_events of one shard."""

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__(config, [CrossTenant(config), CredentialFanout(config)])

    def process(self, rows: list[CredentialRow], book: AnomalyBook, spans: SpanStream | None = None) -> None:
        lateness = int(self.config.allowed_lateness_s * NS)
        for row in rows:
            self.advance(row, book, lateness)
            if not row.agent_id and row.event == "use":
                agent = spans.agent_of_use(row) if spans is not None else OPEN + (row.parent or row.span)
                row = row._replace(agent_id=agent)
            for d in self.detectors:
                d.observe(row, None, book)
