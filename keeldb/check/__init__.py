"""History checkers: linearizability and transactional anomalies (pure Python)."""
