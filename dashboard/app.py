"""The agentwatch dashboard: `streamlit run dashboard/app.py`, or `agentwatch dashboard` / `agentwatch up`.

The store comes from AGENTWATCH_CLICKHOUSE_DSN / AGENTWATCH_DATABASE (the embedded one by default).
Links from alerts open `?anomaly=ID&trace=TRACE_ID`.
"""

from agentwatch.dashboard.views import main

main()
