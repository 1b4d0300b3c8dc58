"""agentwatch: observability and anomaly detection for fleets of AI agents."""
