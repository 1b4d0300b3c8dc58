"""The alert path, one concern per module; `agentwatch.detectors.alerts.AlertDispatcher` runs it.

- `config`: where alerts go and how (AlertConfig, from AGENTWATCH_* variables);
- `state`: the checkpoint (what every anomaly's versions say and what was notified);
- `grouping`: storm grouping per (tenant, kind, event), pure bookkeeping over the state;
- `recovery`: after a crash, what `alert_deliveries` says already went out;
- `incidents`: PagerDuty dedup keys, per lone anomaly or per storm;
- `records`: the anomalies as sinks render them, with the halts made for them and signed action links;
- `links`: the signed halt/release links (also verified by the receiver);
- `notification`: what an alert says (`Anomaly`, `Notification`, the JSON contract, the `Sink` base);
- `webhook`, `slack`, `pagerduty`: one sink each;
- `delivery`: HTTP POSTs with retries, every attempt logged.

`agentwatch.detectors.sinks` gathers the sinks under their historical names.
"""
