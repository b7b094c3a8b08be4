"""What the Prefect flows and the CLI share: the pipeline, deployments, watcher, artifacts."""
