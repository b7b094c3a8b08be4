"""The BentoML service: imports medflow.preprocess, never copies it."""
