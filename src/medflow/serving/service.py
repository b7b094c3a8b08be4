"""The BentoML service: POST /predict (one image) and /predict_batch (several) for a
classification model, POST /segment for a segmentation model; POST /feedback.

`MedflowClassifier` runs, in each worker: the guard (medflow.serving.guard), upload checks and
medflow.imaging.preprocess (medflow.serving.inputs), the network (medflow.serving.engine) and
the decision, or the masks (medflow.serving.segment; a DICOM SEG: medflow.serving.seg_dicom).
A classification is recorded in the prediction log (medflow.serving.prediction_log) and
counted on /metrics (medflow.serving.metrics); /feedback adds its ground truth
(medflow.serving.feedback). Client errors are 4xx with {"error", "detail"}; no file name,
identifying header value, image hash or prediction id is logged. Why one service:
docs/decisions/serving-network-in-worker.md.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path

import bentoml
import numpy as np
import torch
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from starlette.responses import Response

from medflow.config import PackageParams
from medflow.imaging.preprocess import PreprocessSummary
from medflow.models.artifact import load_model
from medflow.serving import MODEL_TAG_ARG, SERVE_ARG
from medflow.serving.batcher import Overloaded
from medflow.serving.engine import Engine
from medflow.serving.errors import ServeError
from medflow.serving.feedback import FeedbackAnswer, give_feedback
from medflow.serving.gradcam import GradCam, overlay, png_bytes
from medflow.serving.guard import Answer, Form, RequestGuard, Route
from medflow.serving.inputs import Checked, Prepared, check_upload, prepare_checked, sniff
from medflow.serving.metrics import ServiceMetrics
from medflow.serving.prediction_log import PredictionLog, PredictionRow, hash_message
from medflow.serving.seg_dicom import MEDIA_TYPE as DICOM_MEDIA_TYPE
from medflow.serving.seg_dicom import build_seg, wants_dicom
from medflow.serving.segment import (
    SegmentationResult,
    overlay_png,
    pixel_spacing,
    segments,
    source_image,
    source_masks,
)
from medflow.serving.settings import resolve_serve_params

logger = logging.getLogger(__name__)

MODEL_TAG_ENV = "MEDFLOW_MODEL_TAG"


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


# A lone request's single DICOM upload up to INLINE_MAX_BYTES is checked on the event loop, and
# decoded there too if its header claims at most INLINE_MAX_VALUES values; anything else goes
# to a thread. Why: docs/decisions/serving-fast-path.md.
INLINE_MAX_BYTES = 256 * 1024
INLINE_MAX_VALUES = 512 * 512

# Decorator-time values (workers, batching, timeout): resolved once, at import.
SERVE = resolve_serve_params(getattr(bentoml.use_arguments(), SERVE_ARG, None))

PREDICT_ROUTES = ("/predict", "/predict_batch", "/segment")
CLASSIFY_ROUTES = ("/predict", "/predict_batch")
SEGMENTATION = "segmentation"
# The prediction routes skip BentoML's tracing middleware unless package.serve.trace_predictions
# (a BENTOML_CONFIG setting tracing.excluded_urls wins). Why: docs/decisions/serving-request-path.md
TRACING = {} if SERVE.trace_predictions else {"excluded_urls": list(PREDICT_ROUTES)}


class Prediction(BaseModel):
    """The answer for one image: the decision, every class's probability, and provenance."""

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
    # The prediction log's keys (None when it is off): POST /feedback takes either.
    prediction_id: str | None = Field(None, description="this prediction in the log")
    image_hash: str | None = Field(
        None, description="keyed hash of the image's SOP Instance UID (else of the file)"
    )


@bentoml.service(
    name="medflow",
    workers=SERVE.workers,
    resources={"cpu": "1"},
    traffic={"timeout": SERVE.timeout_s},
    tracing=TRACING,
)
class MedflowClassifier:
    """DICOM (or PNG/JPEG if allowed) in, label and class probabilities out."""

    model_ref = bentoml.models.BentoModel(model_tag())

    def __init__(self) -> None:
        # The worker process is our entrypoint; BentoML's server logging passes WARNING+ only.
        logging.getLogger("medflow").setLevel(logging.INFO)
        self.model_tag = str(self.model_ref.tag)
        net, self.spec = load_model(Path(self.model_ref.path))
        self.preprocess_params = self.spec.preprocess_params
        self.segments = self.spec.task == SEGMENTATION
        # a U-Net has an output per segment: every class name but the background's
        names = self.spec.class_names[1:] if self.segments else self.spec.class_names
        if len(names) != self.spec.num_classes:
            raise ValueError(
                f"model {self.model_tag} ({self.spec.task}) has {self.spec.num_classes} outputs"
                f" but {len(self.spec.class_names)} class names: re-run the train stage"
            )
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        # Grad-CAM on its own CPU copy of the network (hooks, gradients), made before the
        # engine moves the network; a classifier's only
        self.gradcam = None if self.segments else GradCam(net)
        self.engine = Engine(
            net,
            device,
            SERVE.max_batch_size,
            SERVE.max_latency_ms,
            activation="sigmoid" if self.segments else "softmax",
        )
        self._active = 0  # prediction requests in this worker (all on its event loop)
        self.metrics = ServiceMetrics(self.model_tag, names)
        self.log = None
        if SERVE.prediction_log and not self.segments:
            self.log = PredictionLog(
                SERVE.prediction_log_url,
                retention_days=SERVE.prediction_log_retention_days,
                on_scores=self.metrics.set_scores,
                on_dropped=self.metrics.dropped,
            )
        _WORKER["service"] = self  # the guard now hands requests to self.answer
        logger.info(
            "serving %s (%s %s, classes %s) on %s; png/jpeg %s, modalities %s; prediction log %s",
            self.model_tag,
            self.spec.task,
            self.spec.architecture,
            self.spec.class_names,
            device,
            "allowed" if SERVE.allow_png_jpeg else "refused",
            SERVE.allowed_modalities,
            "on" if self.log else "off",
        )

    @bentoml.on_shutdown
    def close_prediction_log(self) -> None:
        """Write the rows still queued before the worker exits."""
        if self.log is not None:
            self.log.close()

    # Over HTTP, both routes are answered by `answer` (from the guard); the API methods declare
    # them to BentoML (OpenAPI schema, clients) and serve calls made in Python.
    @bentoml.api
    async def predict(self, file: Path, gradcam: bool = False) -> Prediction:
        """Classify one image: the multipart field `file` (DICOM; PNG/JPEG if the server allows
        them). With gradcam=true the response carries a Grad-CAM heatmap (base64 PNG)."""
        return await self._classify([file.read_bytes()], gradcam, batch=False)  # type: ignore[return-value]

    @bentoml.api
    async def predict_batch(self, files: list[Path], gradcam: bool = False) -> list[Prediction]:
        """Classify several images (repeat the multipart field `files`); all or nothing: one
        bad file refuses the request, naming which one."""
        uploads = [f.read_bytes() for f in files]
        return await self._classify(uploads, gradcam, batch=True)  # type: ignore[return-value]

    @bentoml.api
    async def segment(self, file: Path, overlay: bool = False) -> SegmentationResult:
        """Segment one image: the multipart field `file` (DICOM; PNG/JPEG if the server allows
        them). Per segment: area, bounding box and mask (base64 PNG) in the upload's geometry;
        with overlay=true a picture of them over the image. Over HTTP, with `Accept:
        application/dicom` the answer is a DICOM SEG referencing the upload."""
        return await self._segment(file.read_bytes(), overlay, as_dicom=False)  # type: ignore[return-value]

    @bentoml.api
    async def feedback(
        self, label: str | int, prediction_id: str | None = None, image_hash: str | None = None
    ) -> FeedbackAnswer:
        """The ground truth of a past prediction (JSON): `label` (a class name or index) and
        the `prediction_id` of its answer, or the `image_hash` (then its latest prediction)."""
        values = {"label": label, "prediction_id": prediction_id, "image_hash": image_hash}
        return await self._feedback(values)  # type: ignore[return-value]

    async def answer(self, path: str, form: Form) -> Response:
        """A request to a guarded route that the guard has checked; any failure that is not
        the client's is a 500 with a generic JSON error (details in the server log)."""
        try:
            self._check_task(path)
            if path == "/feedback":
                return await self._feedback(form.values)
            if path == "/segment":
                overlay = _flag(form, "overlay")
                if len(form.files["file"]) != 1:
                    raise ServeError(
                        HTTPStatus.BAD_REQUEST, "bad_field", "form field 'file': send one file"
                    )
                return await self._segment(form.files["file"][0], overlay, wants_dicom(form.accept))
            gradcam = _flag(form, "gradcam")
            if path == "/predict_batch":
                return await self._classify(form.files["files"], gradcam, batch=True)
            if len(form.files["file"]) != 1:
                raise ServeError(
                    HTTPStatus.BAD_REQUEST,
                    "bad_field",
                    "form field 'file': send one file (/predict_batch takes several)",
                )
            return await self._classify(form.files["file"], gradcam, batch=False)
        except ServeError as exc:
            logger.info("refused a request: %s (%d)", exc.code, exc.status)
            return exc.response()
        except Exception:
            logger.exception("a prediction failed")
            return ServeError(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                "internal_error",
                "an unexpected error; see the server log",
            ).response()

    def _check_task(self, path: str) -> None:
        """A classifier answers /predict*, a segmentation model /segment; the other route is
        a 409 naming the one to use."""
        if self.segments and path in (*CLASSIFY_ROUTES, "/feedback"):
            raise ServeError(
                HTTPStatus.CONFLICT,
                "wrong_task",
                f"this Bento serves a segmentation model ({self.model_tag}): POST /segment",
            )
        if not self.segments and path == "/segment":
            raise ServeError(
                HTTPStatus.CONFLICT,
                "wrong_task",
                f"this Bento serves a classification model ({self.model_tag}): POST /predict",
            )

    async def _feedback(self, values: dict) -> Response:
        """The response of /feedback; a refusal is a 4xx (or 503) response, as in _classify."""
        try:
            self._check_task("/feedback")
            answer, recorded = await give_feedback(self.log, values, self.spec.class_names)
        except ServeError as exc:
            logger.info("refused a feedback: %s (%d)", exc.code, exc.status)
            return exc.response()
        if not recorded.duplicate:
            self.metrics.feedback(recorded.model_tag)
        return Response(answer.model_dump_json().encode(), media_type="application/json")

    async def _classify(self, uploads: list[bytes], gradcam: bool, *, batch: bool) -> Response:
        """The response of /predict (one upload) or /predict_batch; a refusal is a 4xx
        response, not raised: BentoML would log a traceback and answer its own error shape."""
        started = time.perf_counter()
        try:
            self._check_task("/predict_batch" if batch else "/predict")
            if batch and not 1 <= len(uploads) <= SERVE.max_batch_size:
                raise ServeError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE if uploads else HTTPStatus.BAD_REQUEST,
                    "batch_size",
                    f"send 1 to {SERVE.max_batch_size} files as the form field 'files', got"
                    f" {len(uploads)} (package.serve.max_batch_size)",
                )
            self._active += 1
            try:
                prepared, probs = await self._prepare(uploads)
                predictions = await self._predict(prepared, probs, gradcam, uploads)
            finally:
                self._active -= 1
            response = _json(predictions if batch else predictions[0])
            latency_ms = (time.perf_counter() - started) * 1000.0
            route = "/predict_batch" if batch else "/predict"
            try:
                self._record(prepared, uploads, predictions, latency_ms, route)
            except Exception as exc:  # a bug here must not cost the client its answer
                # the type only: a message could quote a value of the row
                logger.error("a prediction was not recorded (%s)", type(exc).__name__)
            return response
        except ServeError as exc:
            logger.info("refused a request: %s (%d)", exc.code, exc.status)
            return exc.response()

    async def _segment(self, upload: bytes, overlay: bool, as_dicom: bool) -> Response:
        """The response of /segment: JSON (SegmentationResult) or, with as_dicom, a DICOM SEG;
        a refusal is a 4xx response, as in _classify."""
        try:
            self._check_task("/segment")
            if as_dicom and sniff(upload[:132]) != "dicom":
                raise ServeError(
                    HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                    "png_jpeg_not_allowed",
                    "a DICOM SEG answer (Accept: application/dicom) references the uploaded"
                    " DICOM image: send a DICOM file, or ask for JSON",
                )
            self._active += 1
            try:
                prepared, probs = await self._prepare([upload])
                probs = await self._infer(prepared, probs)
            finally:
                self._active -= 1
            return await asyncio.to_thread(
                self._segment_response, prepared[0], probs[0], overlay, as_dicom
            )
        except ServeError as exc:
            logger.info("refused a request: %s (%d)", exc.code, exc.status)
            return exc.response()

    def _segment_response(
        self, p: Prepared, probs: np.ndarray, overlay: bool, as_dicom: bool
    ) -> Response:
        """Masks in the upload's geometry, then the JSON answer or the SEG (in a thread)."""
        shape = p.summary.original_shape
        masks = source_masks(probs, self.spec.threshold, shape)
        names = self.spec.class_names[1:]
        name, _, version = self.model_tag.partition(":")
        logger.debug(  # counts and shapes only
            "segmented a %dx%d %s image: %s pixels per segment",
            *shape,
            p.input_format,
            [int(m.sum()) for m in masks],
        )
        if as_dicom:
            seg = build_seg(p.ds, masks, p.summary.frame_used, names, name, version)
            return Response(seg, media_type=DICOM_MEDIA_TYPE)
        spacing = pixel_spacing(p.ds) if p.ds is not None else None
        picture = None
        if overlay:
            grey = source_image(p.ds, p.summary.frame_used, self.preprocess_params)
            picture = overlay_png(grey, masks)
        result = SegmentationResult(
            model_tag=self.model_tag,
            model_name=name,
            model_version=version,
            threshold=self.spec.threshold,
            input_format=p.input_format,
            shape=shape,
            pixel_spacing_mm=spacing,
            preprocessing=p.summary,
            segments=segments(masks, names, spacing),
            overlay_png=picture,
        )
        return Response(result.model_dump_json().encode(), media_type="application/json")

    async def _infer(self, prepared: list[Prepared], probs: np.ndarray | None) -> np.ndarray:
        """The network's output for `prepared`: `probs` when _prepare computed it, else from
        the batching queue (503 `overloaded` when it waited too long)."""
        if probs is not None:
            return probs
        try:  # concurrent requests share a forward pass
            return await self.engine(np.stack([p.image for p in prepared]))
        except Overloaded as exc:
            logger.warning("overloaded: %s", exc)
            raise ServeError(HTTPStatus.SERVICE_UNAVAILABLE, "overloaded", str(exc)) from None

    async def _prepare(self, uploads: list[bytes]) -> tuple[list[Prepared], np.ndarray | None]:
        """Checks, preprocessing and (if the network is free) the forward pass, in a thread; or,
        for a lone request with one small DICOM upload, right here on the event loop.

        "Lone" is decided after yielding twice to the loop, so that requests already received
        count themselves in `_active` first (why: docs/decisions/serving-fast-path.md)."""
        await asyncio.sleep(0)  # the loop runs what is ready, then polls the sockets
        await asyncio.sleep(0)  # and the requests that polling found get to start
        if (
            self._active == 1
            and len(uploads) == 1
            and len(uploads[0]) <= INLINE_MAX_BYTES
            and sniff(uploads[0]) == "dicom"
        ):
            checked = self._check_all(uploads)  # the header only: cheap
            if checked[0].values <= INLINE_MAX_VALUES:
                return self._finish(checked)
            return await asyncio.to_thread(self._finish, checked)
        return await asyncio.to_thread(lambda: self._finish(self._check_all(uploads)))

    def _check_all(self, uploads: list[bytes]) -> list[Checked]:
        return _each(uploads, lambda raw: check_upload(raw, SERVE, self.preprocess_params))

    def _finish(self, checked: list[Checked]) -> tuple[list[Prepared], np.ndarray | None]:
        """The preprocessed uploads, and their probabilities if the network was free to compute
        them right here (else None: they queue for it)."""
        prepared = _each(checked, lambda c: prepare_checked(c, self.preprocess_params))
        return prepared, self.engine.try_now(np.stack([p.image for p in prepared]))

    async def _predict(
        self,
        prepared: list[Prepared],
        probs: np.ndarray | None,
        gradcam: bool,
        uploads: list[bytes],
    ) -> list[Prediction]:
        probs = np.asarray(await self._infer(prepared, probs), dtype=np.float64)
        names, threshold = self.spec.class_names, self.spec.threshold
        loop = asyncio.get_running_loop()
        name, _, version = self.model_tag.partition(":")
        out = []
        for p, row, raw in zip(prepared, probs.tolist(), uploads, strict=True):
            index = decide(row, threshold)
            heatmap = None
            if gradcam:
                cam = await loop.run_in_executor(self.engine.executor, self.gradcam, p.image, index)
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
                    **self._log_keys(p, raw),
                )
            )
            logger.debug(  # BentoML's access log has a line per request already
                "predicted %s for a %dx%d %s %s image",
                names[index],
                *p.summary.original_shape,
                p.summary.photometric,
                p.input_format,
            )
        return out

    def _log_keys(self, p: Prepared, raw: bytes) -> dict[str, str | None]:
        """prediction_id and image_hash of a new prediction (None without a prediction log)."""
        if self.log is None:
            return {"prediction_id": None, "image_hash": None}
        digest = self.log.image_hash(_hash_message(p, raw))
        return {"prediction_id": uuid.uuid4().hex, "image_hash": digest}

    def _record(
        self,
        prepared: list[Prepared],
        uploads: list[bytes],
        predictions: list[Prediction],
        latency_ms: float,
        route: str,
    ) -> None:
        """Count the predictions; queue their rows for the prediction log (no I/O here)."""
        for prediction in predictions:
            self.metrics.predicted(prediction.label)
        if self.log is None:
            return
        now = datetime.now(UTC)
        names = self.spec.class_names
        for p, raw, prediction in zip(prepared, uploads, predictions, strict=True):
            ds = p.ds
            # the hash key is unknown while the database is down: the row keeps the message
            # (in memory only) for the writer to hash
            source = None if prediction.image_hash is not None else _hash_message(p, raw)
            self.log.record(
                PredictionRow(
                    prediction_id=prediction.prediction_id,
                    created_at=now,
                    model_tag=self.model_tag,
                    image_hash=prediction.image_hash,
                    input_format=p.input_format,
                    modality=str(ds.get("Modality", "") or "") if ds is not None else "",
                    manufacturer=str(ds.get("Manufacturer", "") or "") if ds is not None else "",
                    rows=p.summary.original_shape[0],
                    columns=p.summary.original_shape[1],
                    pixel_mean=p.summary.pixel_mean,
                    pixel_std=p.summary.pixel_std,
                    probabilities=list(prediction.probabilities.values()),
                    class_names=names,
                    label_index=prediction.label_index,
                    label=prediction.label,
                    threshold=prediction.threshold,
                    latency_ms=latency_ms,
                    route=route,
                    hash_source=source,
                )
            )


_PREDICTIONS = TypeAdapter(list[Prediction])


def _hash_message(p: Prepared, raw: bytes) -> str:
    """What the image hash is computed over: a DICOM's SOP Instance UID, else the upload's
    sha256 (a PNG/JPEG, a DICOM without UID; in memory, never stored)."""
    uid = str(p.ds.get("SOPInstanceUID", "") or "").strip() if p.input_format == "dicom" else ""
    return hash_message(uid or None, raw)


def _each(items: list, step: Callable) -> list:
    """step(item) for each item; a refusal of one of several names which file it was."""
    out = []
    for i, item in enumerate(items, 1):
        try:
            out.append(step(item))
        except ServeError as exc:
            if len(items) > 1:  # /predict_batch
                exc.detail = f"file {i} of {len(items)}: {exc.detail}"
            raise
    return out


_FLAG = TypeAdapter(bool)  # form values as BentoML reads them: true/false, 1/0, yes/no, on/off


def _flag(form: Form, name: str) -> bool:
    """The boolean form field `name` (false when absent); 400 `bad_field` when not a boolean."""
    try:
        return _FLAG.validate_python(form.values.get(name, False))
    except ValidationError:
        raise ServeError(
            HTTPStatus.BAD_REQUEST, "bad_field", f"form field {name!r}: want true or false"
        ) from None


_WORKER: dict[str, MedflowClassifier] = {}  # this worker's service instance, once created


def _answerer() -> Answer | None:
    """The guard's way to the service: its `answer` once it exists (None: BentoML's routes)."""
    service = _WORKER.get("service")
    return None if service is None else service.answer


def _json(result: Prediction | list[Prediction]) -> Response:
    """The response body, serialised here in one piece: BentoML sends a Response as is (why:
    docs/decisions/serving-request-path.md). The declared return types give the OpenAPI schema."""
    if isinstance(result, list):
        body = _PREDICTIONS.dump_json(result)
    else:
        body = result.model_dump_json().encode()
    return Response(body, media_type="application/json")


# Auth, size limit and form shape in front of the service's routes (health and metrics open).
MedflowClassifier.add_asgi_middleware(
    RequestGuard,
    routes={
        api.route: Route(
            fields=frozenset(api.input_spec.model_fields),
            files=frozenset(api.input_spec.multipart_fields),
            required=frozenset(
                k for k, f in api.input_spec.model_fields.items() if f.is_required()
            ),
            json=not api.input_spec.multipart_fields,  # /feedback
        )
        for api in MedflowClassifier.apis.values()
    },
    token_env=SERVE.api_token_env,
    max_body=SERVE.max_upload_bytes,
    answerer=_answerer,
)
