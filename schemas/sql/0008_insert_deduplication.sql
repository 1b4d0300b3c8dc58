-- The receiver repeats a batch after a crash with the same insert_deduplication_token; ClickHouse
-- skips the blocks it already stored, in each table below (materialized views pass the token on,
-- derived per view). Replicated tables deduplicate by default; a plain MergeTree needs a window.
-- Blocks inserted without a token are deduplicated by content: identical rows, identical spans.
ALTER TABLE {db}.otel_traces MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE {db}.otel_traces_trace_id_ts MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE {db}.otel_metrics_gauge MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE {db}.otel_metrics_sum MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE {db}.otel_metrics_histogram MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE {db}.otel_logs MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE {db}.agent_spans MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE {db}.credential_events MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE {db}.agent_minutes MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE {db}.agent_hours MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE {db}.trace_summaries MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE {db}.trace_span_index MODIFY SETTING non_replicated_deduplication_window = 1000
