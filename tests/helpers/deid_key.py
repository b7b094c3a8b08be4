"""The pseudonymisation key of the de-identification and ingest unit tests."""

KEY = b"unit-test-key-0123456789"
