"""One inference pass: new PACS images to the served champion Bento, results back by STOW-RS.

QIDO-RS finds the images of the studies in the window (StudyDate within pacs.infer.lookback_days
of today) that match the filters; images the ledger already holds for the served model are
skipped. Each other image is retrieved (WADO-RS), posted to the Bento, and its result stored:
a classifier's answer as a TID 1500 SR (medflow.pacs.sr), a segmentation model's DICOM SEG as
the Bento built it. The ledger records an image once the PACS accepted its result. UIDs stay
in memory: logs, errors and the returned counts name none.
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pydicom
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset

from medflow.config import PacsParams
from medflow.errors import PacsError, StageFailed
from medflow.pacs.client import call, connect, server_name
from medflow.pacs.infer_bento import SEGMENTATION, Bento, BentoError, Refusal, Served
from medflow.pacs.ledger import REFUSED, STORED, Ledger
from medflow.pacs.query import find_instance_classes, find_series, find_studies, split_filters
from medflow.pacs.sr import ModelAnswer, build_sr, derived_uid

logger = logging.getLogger(__name__)

# series that hold no image to infer on (results, annotations, documents, RT objects)
NOT_IMAGE_MODALITIES = frozenset(
    {"SR", "SEG", "PR", "KO", "DOC", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "REG", "RWV"}
)


@dataclass(frozen=True)
class ImageRef:
    """An image on the PACS (its UIDs: never logged, never persisted)."""

    study: str
    series: str
    sop: str


@dataclass(frozen=True)
class InferResult:
    """Counts of one pass (no identifiers): safe to log and to publish."""

    server: str
    bento: str
    task: str
    model_tag: str
    studies: int
    images: int  # images matched in the window
    already_done: int  # skipped: the ledger has this model's result for them
    stored: int  # results stored in the PACS in this pass
    refused: dict[str, int] = field(default_factory=dict)  # by the model, per error code
    failed: dict[str, int] = field(default_factory=dict)  # not stored, per error type
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "bento": self.bento,
            "task": self.task,
            "model": self.model_tag,
            "studies": self.studies,
            "images": self.images,
            "already done": self.already_done,
            "stored": self.stored,
            "refused": sum(self.refused.values()),
            "failed": sum(self.failed.values()),
            "seconds": round(self.seconds, 1),
        }


def infer_filters(pacs: PacsParams, today: date) -> tuple[dict[str, str], dict[str, str]]:
    """The QIDO-RS filters of a pass, split into study-level and series-level ones.

    pacs.infer.filters (or pacs.filters when empty); with lookback_days > 0 the StudyDate is
    the window [today - lookback_days, today], replacing any StudyDate of the filters (those
    of pacs.filters describe the training data)."""
    filters = dict(pacs.infer.filters or pacs.filters)
    days = pacs.infer.lookback_days
    if days > 0:
        start = today - timedelta(days=days)
        filters["StudyDate"] = f"{start:%Y%m%d}-{today:%Y%m%d}"
    return split_filters(filters)


def _is_image(sop_class: str) -> bool:
    """An image storage SOP class (not SR, SEG, presentation state, document...)."""
    name = pydicom.uid.UID(sop_class).name if sop_class else ""
    return "Image Storage" in name and "Presentation State" not in name


def query_images(
    client: DICOMwebClient, pacs: PacsParams, study_filters: dict, series_filters: dict
) -> tuple[int, list[ImageRef]]:
    """(number of studies, their matching images), by hierarchical QIDO-RS (the pull's)."""
    studies = find_studies(client, pacs, study_filters)
    images = []
    for study in studies:
        for series in find_series(client, pacs, study.uid, series_filters):
            if series.modality.upper() in NOT_IMAGE_MODALITIES:
                continue
            classes = find_instance_classes(client, pacs, study.uid, series.uid)
            images += [
                ImageRef(study.uid, series.uid, sop)
                for sop, sop_class in classes.items()
                if _is_image(sop_class)
            ]
    return len(studies), images


def _as_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _own_seg(seg: Dataset, image: ImageRef, model_tag: str) -> Dataset:
    """The SEG with UIDs derived from the image's and the model's (stored again: replaced)."""
    seg.SOPInstanceUID = derived_uid("seg", image.sop, model_tag)
    seg.file_meta.MediaStorageSOPInstanceUID = seg.SOPInstanceUID
    seg.SeriesInstanceUID = derived_uid("seg-series", image.study, model_tag)
    return seg


def _store(client: DICOMwebClient, pacs: PacsParams, result: Dataset) -> None:
    if not getattr(result, "preamble", None):
        result.preamble = b"\0" * 128  # Orthanc keeps the bytes as sent: a Part-10 file
    reply = call(pacs, "STOW-RS of a result", lambda: client.store_instances([result]))
    if "FailedSOPSequence" in reply and len(reply.FailedSOPSequence):
        reasons = sorted({str(item.get("FailureReason", "?")) for item in reply.FailedSOPSequence})
        raise PacsError(
            f"PACS {server_name(pacs.url)}: STOW-RS of a result was refused (failure reason"
            f" {', '.join(reasons)})"
        )


def _one(
    image: ImageRef,
    served: Served,
    client: DICOMwebClient,
    pacs: PacsParams,
    bento: Bento,
    ledger: Ledger,
) -> str:
    """Infer on one image and store its result; returns the outcome ("stored" or the
    refusal's code). PacsError/BentoError stop the pass; anything else fails this image."""
    ds = call(
        pacs,
        "WADO-RS retrieval of an image",
        lambda: client.retrieve_instance(
            image.study, image.series, image.sop, media_types=(("application/dicom", "*"),)
        ),
    )
    data = _as_bytes(ds)
    if served.task == SEGMENTATION:
        answer: Dataset | ModelAnswer | Refusal = bento.segment(data)
    else:
        answer = bento.classify(data)
    if isinstance(answer, Refusal):
        ledger.record(image.sop, served.model_tag, REFUSED, answer.code)
        return answer.code
    if isinstance(answer, ModelAnswer):
        tag, kind, result = answer.model_tag, "SR", build_sr(ds, answer)
    else:
        tag = f"{answer.ManufacturerModelName}:{answer.SoftwareVersions}"
        kind, result = "SEG", _own_seg(answer, image, tag)
    _store(client, pacs, result)
    ledger.record(image.sop, tag, STORED, kind)
    return STORED


def run_infer(
    pacs: PacsParams,
    ledger_path: Path,
    key: bytes,
    *,
    env: Mapping[str, str] = os.environ,
    today: date | None = None,
) -> InferResult:
    """One pass over the PACS's new images (module docstring).

    Args:
        pacs: params `pacs` (url, credentials' variable names, infer section).
        ledger_path: the ledger's SQLite file (.medflow/pacs_infer.sqlite).
        key: the keyed-HMAC key of the ledger's image tokens (the de-identification key).
        env: where credentials and $MEDFLOW_API_TOKEN are read.
        today: the window's last day (default: today).

    Raises:
        PacsError: the PACS cannot be reached or refuses a request (names the server).
        BentoError: the Bento cannot be reached or refuses the token.
        StageFailed: some images failed for another reason (counted by type); every other
            image's result was stored.
    """
    started = time.monotonic()
    client = connect(pacs, env)  # first: an empty pacs.url fails before any request
    bento = Bento(pacs.infer.bento_url, pacs, env)
    served = bento.probe()
    study_filters, series_filters = infer_filters(pacs, today or date.today())
    n_studies, images = query_images(client, pacs, study_filters, series_filters)
    with Ledger(ledger_path, key) as ledger:
        done = ledger.done(served.model_tag)
        todo = [i for i in images if ledger.token(i.sop) not in done]
        logger.info(
            "PACS inference with %s (%s): %d studies, %d images in the window, %d new",
            served.model_tag,
            served.task,
            n_studies,
            len(images),
            len(todo),
        )
        outcomes, failed = _run_all(todo, served, client, pacs, bento, ledger)
    refused = {code: n for code, n in outcomes.items() if code != STORED}
    result = InferResult(
        server=server_name(pacs.url),
        bento=bento.name,
        task=served.task,
        model_tag=served.model_tag,
        studies=n_studies,
        images=len(images),
        already_done=len(images) - len(todo),
        stored=outcomes.get(STORED, 0),
        refused=refused,
        failed=dict(failed),
        seconds=time.monotonic() - started,
    )
    logger.info(
        "PACS inference: %d stored, %d already done, %d refused by the model %s, %d failed"
        " in %.1f s",
        result.stored,
        result.already_done,
        sum(refused.values()),
        refused or "",
        sum(failed.values()),
        result.seconds,
    )
    if failed:
        raise StageFailed(
            f"PACS inference: {sum(failed.values())} of {len(todo)} new images failed"
            f" ({dict(failed)}); the other results were stored. Run again to retry them."
        )
    return result


def _run_all(
    todo: list[ImageRef],
    served: Served,
    client: DICOMwebClient,
    pacs: PacsParams,
    bento: Bento,
    ledger: Ledger,
) -> tuple[Counter[str], Counter[str]]:
    """Every image in pacs.workers threads: (outcomes, failures by error type). A PacsError
    or BentoError stops the pass (what was stored stays recorded) and is raised."""
    outcomes: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    stop: BaseException | None = None
    with ThreadPoolExecutor(max_workers=pacs.workers) as pool:
        futures = [pool.submit(_one, i, served, client, pacs, bento, ledger) for i in todo]
        for f in as_completed(futures):
            if f.cancelled():
                continue
            exc = f.exception()
            if exc is None:
                outcomes[f.result()] += 1
            elif isinstance(exc, PacsError | BentoError):
                stop = stop or exc
                for other in futures:
                    other.cancel()
            else:  # its message may quote the image's UIDs (highdicom, pydicom): the type only
                failed[type(exc).__name__] += 1
                logger.warning("an image failed: %s", type(exc).__name__)
    if stop is not None:
        logger.info("stopped after %d results stored", outcomes.get(STORED, 0))
        raise stop
    return outcomes, failed
