"""The BentoML services: POST /predict (one image) and /predict_batch (several).

Two services, so that parsing and preprocessing run beside inference, in other processes:

- `MedflowClassifier` (the Bento's entry, HTTP, async): auth and size guard
  (medflow.serving.guard), upload checks and preprocessing in a thread (medflow.serving.inputs
  -> medflow.preprocess, the code that prepared the training data), the decision and the
  response; the model calls of concurrent requests are merged into batches here
  (medflow.serving.batcher);
- `MedflowModel` (internal, a dependency): the network; `infer` takes a whole batch.

Which model is served is fixed when the Bento is built (`model_tag`, medflow.package); so
are limits, batching and workers (`serve`, package.serve), which BentoML reads from the
decorators at import. medflow.serving.settings says how to override them where it runs.
Client errors are 4xx with {"error", "detail"} (medflow.serving.errors), never a 500; no
file name or identifying header value is logged or returned.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from http import HTTPStatus
from pathlib import Path

import aiohttp
import bentoml
import numpy as np
import torch
from pydantic import BaseModel, Field

from medflow.config import PackageParams
from medflow.models.artifact import ModelSpec, load_model, load_spec
from medflow.preprocess import PreprocessSummary
from medflow.serving import MODEL_TAG_ARG, SERVE_ARG
from medflow.serving.batcher import Coalescer
from medflow.serving.errors import ServeError
from medflow.serving.gradcam import GradCam, overlay, png_bytes
from medflow.serving.guard import RequestGuard, Route
from medflow.serving.inputs import Prepared, prepare_upload
from medflow.serving.settings import resolve_serve_params

logger = logging.getLogger(__name__)

MODEL_TAG_ENV = "MEDFLOW_MODEL_TAG"
# tries of one call to the model service when it drops the connection before answering
MODEL_CALL_ATTEMPTS = 3


def model_tag() -> str:
    """The model store tag this service serves, first found of:

    1. the Bento argument `model_tag`: run_package passes the exact `name:version` it just
       saved, and BentoML stores it in the Bento, so a built Bento always serves the model it
       was built with, whatever is newer in the store;
    2. `$MEDFLOW_MODEL_TAG`, for serving from source (`bentoml serve medflow.serving.service`);
    3. `<package.model_name default>:latest`.
    """
    tag = getattr(bentoml.use_arguments(), MODEL_TAG_ARG, None) or os.environ.get(MODEL_TAG_ENV)
    return tag or f"{PackageParams().model_name}:latest"


def decide(probabilities: list[float], threshold: float) -> int:
    """Index of the predicted class.

    Two classes: the positive class (index 1) iff its probability reaches the threshold, as the
    evaluation stage scores it. More classes: the most probable one.
    """
    if len(probabilities) == 2:
        return int(probabilities[1] >= threshold)
    return max(range(len(probabilities)), key=probabilities.__getitem__)


# Decorator-time values (workers, batching, timeout): resolved once, at import.
SERVE = resolve_serve_params(getattr(bentoml.use_arguments(), SERVE_ARG, None))


class Prediction(BaseModel):
    label: str
    label_index: int
    probabilities: dict[str, float]
    # The decision threshold on p(positive class); None for more than two classes (argmax).
    threshold: float | None
    model_tag: str  # name:version in the BentoML model store
    model_name: str
    model_version: str
    input_format: str  # dicom | png | jpeg
    preprocessing: PreprocessSummary
    # Grad-CAM of the predicted class over the model input, PNG in base64; only on request.
    gradcam_png: str | None = Field(None, description="base64 PNG, with gradcam=true")


@bentoml.service(
    name="medflow-model",
    workers=SERVE.model_workers,
    resources={"cpu": "1"},
    traffic={"timeout": SERVE.timeout_s},
)
class MedflowModel:
    """The network: batched class probabilities, and Grad-CAM heatmaps."""

    model_ref = bentoml.models.BentoModel(model_tag())

    def __init__(self) -> None:
        logging.getLogger("medflow").setLevel(logging.INFO)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        net, spec = load_model(Path(self.model_ref.path))
        # channels_last, as in training: on CPU a forward pass costs 5.0 instead of 6.4 ms for
        # one image, 3.9 instead of 6.7 ms per image in batches of 16 (benchmarks/README.md)
        self.net = net.to(self.device, memory_format=torch.channels_last)
        self.gradcam = GradCam(net.cpu() if self.device.type != "cpu" else net)
        logger.info("model %s (%s) on %s", self.model_ref.tag, spec.architecture, self.device)

    # Not BentoML-batchable: the API worker already sends whole batches (medflow.serving.batcher),
    # and BentoML's dispatcher held even a lone request for company (/infer 16.4 against 12.5 ms
    # at concurrency 1, benchmarks/README.md).
    @bentoml.api
    def infer(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities (n, classes) of preprocessed images (n, channels, size, size)."""
        # arrays from the API worker arrive read-only (unpickled); torch wants writable memory
        images = np.require(images, dtype=np.float32, requirements="W")
        x = torch.as_tensor(images, device=self.device)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return torch.softmax(self.net(x).float(), dim=1).cpu().numpy()

    @bentoml.api
    def explain(self, image: np.ndarray, target: int) -> np.ndarray:
        """Grad-CAM heatmap (size, size) in [0, 1] of one preprocessed image for class `target`."""
        return self.gradcam(image, target)


@bentoml.service(
    name="medflow",
    workers=SERVE.workers,
    resources={"cpu": "1"},
    traffic={"timeout": SERVE.timeout_s},
)
class MedflowClassifier:
    """DICOM (or PNG/JPEG if allowed) in, label and class probabilities out."""

    # The same model as MedflowModel's: read for its spec (classes, threshold, preprocessing).
    model_ref = bentoml.models.BentoModel(model_tag())
    model = bentoml.depends(MedflowModel)

    def __init__(self) -> None:
        # The worker process is our entrypoint; BentoML's server logging passes WARNING+ only.
        logging.getLogger("medflow").setLevel(logging.INFO)
        self.model_tag = str(self.model_ref.tag)
        self.spec: ModelSpec = load_spec(Path(self.model_ref.path))
        self.preprocess_params = self.spec.preprocess_params
        if len(self.spec.class_names) != self.spec.num_classes:
            raise ValueError(
                f"model {self.model_tag} has {self.spec.num_classes} outputs but"
                f" {len(self.spec.class_names)} class names: re-run the train stage"
            )
        logger.info(
            "serving %s (%s, classes %s); png/jpeg %s, modalities %s",
            self.model_tag,
            self.spec.architecture,
            self.spec.class_names,
            "allowed" if SERVE.allow_png_jpeg else "refused",
            SERVE.allowed_modalities,
        )
        self._infer = Coalescer(self._remote_infer, SERVE.max_batch_size)

    async def _remote_infer(self, batch: np.ndarray) -> np.ndarray:
        # Under load the model service's socket now and then drops a kept-alive connection
        # before answering ("Server disconnected": 4 of 1,752 calls in a 25 s soak). infer is
        # a pure function, so the call is sent again on a fresh connection.
        for attempt in range(1, MODEL_CALL_ATTEMPTS + 1):
            try:
                return np.asarray(await self.model.to_async.infer(batch))
            except aiohttp.ServerDisconnectedError:
                if attempt == MODEL_CALL_ATTEMPTS:
                    raise
                logger.warning(
                    "model service dropped the connection (attempt %d of %d); sending the"
                    " batch of %d again",
                    attempt,
                    MODEL_CALL_ATTEMPTS,
                    len(batch),
                )
        raise AssertionError("unreachable")

    # async: BentoML runs a sync API one call at a time per worker (threads=1), so concurrent
    # requests would queue here and reach MedflowModel.infer one by one. Awaiting lets them
    # overlap; the CPU-bound parsing and preprocessing run in threads, off the event loop.
    @bentoml.api
    async def predict(self, file: Path, gradcam: bool = False) -> Prediction:
        """Classify one image: the multipart field `file` (DICOM; PNG/JPEG if the server allows
        them). With gradcam=true the response carries a Grad-CAM heatmap (base64 PNG)."""
        try:
            prepared = await asyncio.to_thread(prepare_upload, file, SERVE, self.preprocess_params)
        except ServeError as exc:
            # Not raised: BentoML would log a traceback and answer its own error shape.
            logger.info("refused an upload: %s (%d)", exc.code, exc.status)
            return exc.response()  # type: ignore[return-value]
        return (await self._predict([prepared], gradcam))[0]

    @bentoml.api
    async def predict_batch(self, files: list[Path], gradcam: bool = False) -> list[Prediction]:
        """Classify several images (repeat the multipart field `files`); all or nothing: one
        bad file refuses the request, naming which one."""
        if not 1 <= len(files) <= SERVE.max_batch_size:
            return ServeError(  # type: ignore[return-value]
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE if files else HTTPStatus.BAD_REQUEST,
                "batch_size",
                f"send 1 to {SERVE.max_batch_size} files as the form field 'files', got"
                f" {len(files)} (package.serve.max_batch_size)",
            ).response()
        try:
            prepared = await asyncio.to_thread(self._prepare_all, files)
        except ServeError as exc:
            return exc.response()  # type: ignore[return-value]
        return await self._predict(prepared, gradcam)

    def _prepare_all(self, files: list[Path]) -> list[Prepared]:
        prepared = []
        for i, file in enumerate(files, 1):
            try:
                prepared.append(prepare_upload(file, SERVE, self.preprocess_params))
            except ServeError as exc:
                logger.info("refused a batch: file %d: %s (%d)", i, exc.code, exc.status)
                exc.detail = f"file {i} of {len(files)}: {exc.detail}"
                raise
        return prepared

    async def _predict(self, prepared: list[Prepared], gradcam: bool) -> list[Prediction]:
        batch = np.stack([p.image for p in prepared])
        # Concurrent requests share a round trip to MedflowModel (and a forward pass).
        probs = np.asarray(await self._infer(batch), dtype=np.float64)
        names, threshold = self.spec.class_names, self.spec.threshold
        name, _, version = self.model_tag.partition(":")
        out = []
        for p, row in zip(prepared, probs.tolist(), strict=True):
            index = decide(row, threshold)
            heatmap = None
            if gradcam:
                cam = np.asarray(await self.model.to_async.explain(image=p.image, target=index))
                png = await asyncio.to_thread(lambda p=p, cam=cam: png_bytes(overlay(p.image, cam)))
                heatmap = base64.b64encode(png).decode("ascii")
            out.append(
                Prediction(
                    label=names[index],
                    label_index=index,
                    probabilities=dict(zip(names, row, strict=True)),
                    threshold=threshold if len(row) == 2 else None,
                    model_tag=self.model_tag,
                    model_name=name,
                    model_version=version,
                    input_format=p.input_format,
                    preprocessing=p.summary,
                    gradcam_png=heatmap,
                )
            )
            logger.info(
                "predicted %s for a %dx%d %s %s image",
                names[index],
                *p.summary.original_shape,
                p.summary.photometric,
                p.input_format,
            )
        return out


# Auth, size limit and form shape in front of the prediction routes (health and metrics open).
MedflowClassifier.add_asgi_middleware(
    RequestGuard,
    routes={
        api.route: Route(
            fields=frozenset(api.input_spec.model_fields),
            files=frozenset(api.input_spec.multipart_fields),
            required=frozenset(
                k for k, f in api.input_spec.model_fields.items() if f.is_required()
            ),
        )
        for api in MedflowClassifier.apis.values()
    },
    token_env=SERVE.api_token_env,
    max_body=SERVE.max_upload_bytes,
)
