"""Streaming detectors over ClickHouse, their evaluation, and the alert dispatcher."""
