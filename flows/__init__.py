"""Prefect flows and deployments: compose the medflow stages; no domain logic here."""
