"""The agentwatch dashboard: `streamlit run dashboard/app.py`, or `agentwatch dashboard` / `agentwatch up`.

The store comes from AGENTWATCH_CLICKHOUSE_DSN / AGENTWATCH_DATABASE (the embedded one by default).
Links from alerts open `?anomaly=ID&trace=TRACE_ID`. The frame is dashboard/navigation.py, each page a
module of dashboard/views/, every query in dashboard/data/ (scoped to the signed-in viewer's tenants).
"""

from agentwatch.dashboard.navigation import main

main()
