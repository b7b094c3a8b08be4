"""The BentoML service: imports medflow.imaging.preprocess, never copies it."""

# The Bento argument naming the model a Bento serves: set by medflow.registry.packaging at build
# time, read by medflow.serving.service at import. Here so packaging need not import the service.
MODEL_TAG_ARG = "model_tag"
# The Bento argument holding package.serve (limits, batching, workers, auth), as a dict.
SERVE_ARG = "serve"
