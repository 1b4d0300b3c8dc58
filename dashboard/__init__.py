"""The Streamlit replay dashboard: overview, anomalies, trace replay, costs, credentials, GPUs."""
