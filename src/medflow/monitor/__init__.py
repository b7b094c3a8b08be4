"""Production monitoring: the served model's logged predictions against its training data,
and its live performance from feedback (`medflow monitor`, docs/monitoring.md)."""
