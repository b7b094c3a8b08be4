"""Prediction logs and model store entries for the monitor's tests: real SQLite files written
through medflow.serving.prediction_log, real BentoML model store entries."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from medflow.registry.monitoring import MONITORING_FILE, MonitoringReference
from medflow.serving.prediction_store import (
    PredictionRow,
    engine_for,
    image_hash,
    insert_feedback,
    insert_predictions,
    row_params,
)
from medflow.validation import drift

CLASS_NAMES = ["normal", "lesion"]
KEY = b"monitor-test-key"
MODEL_NAME = "medflow-monitor-test"


@dataclass(frozen=True)
class Site:
    """Where production images come from: their manufacturer and intensity, and how the
    model's p(lesion) is distributed on them (a beta distribution)."""

    manufacturer: str = "medflow-synth"
    modality: str = "CR"
    pixel_mean: float = 1000.0
    pixel_mean_sd: float = 6.0
    pixel_std: float = 120.0
    beta: tuple[float, float] = (2.0, 2.0)


TRAINING = Site()
SHIFTED = Site(manufacturer="Other Vendor", pixel_mean=3000.0, pixel_std=400.0, beta=(6.0, 1.5))


def lesion_probabilities(n: int, site: Site, seed: int) -> np.ndarray:
    """(n, 2) probabilities [p(normal), p(lesion)] with p(lesion) ~ Beta(site.beta)."""
    p = np.random.default_rng(seed).beta(*site.beta, n)
    return np.column_stack([1 - p, p])


def training_profile(n: int = 200, site: Site = TRAINING, seed: int = 0) -> dict:
    """drift.profile of a training manifest of n images from `site`."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    manifest = pd.DataFrame(
        {
            "label": rng.integers(0, 2, n),
            "manufacturer": site.manufacturer,
            "modality": site.modality,
            "pixel_mean": rng.normal(site.pixel_mean, site.pixel_mean_sd, n),
            "pixel_std": rng.normal(site.pixel_std, 2.0, n),
        }
    )
    return drift.profile(manifest, CLASS_NAMES)


def reference(n_test: int = 200, auroc: float = 0.9, threshold: float = 0.5) -> MonitoringReference:
    """A monitoring reference of a model trained on TRAINING: n_test test-split predictions."""
    return MonitoringReference(
        class_names=CLASS_NAMES,
        threshold=threshold,
        profile=training_profile(),
        probabilities=lesion_probabilities(n_test, TRAINING, seed=1).round(6).tolist(),
        metrics={"auroc": auroc, "sensitivity": 0.85, "specificity": 0.8, "n_test": n_test},
    )


def store_model(ref: MonitoringReference | None, metrics: dict | None = None) -> str:
    """A model store entry (no weights: the monitor never loads them) holding `ref` as
    monitoring.json, or none; returns its tag."""
    import bentoml

    metadata = {"metrics": metrics or {"auroc": 0.9}}
    with bentoml.models.create(name=MODEL_NAME, metadata=metadata) as m:
        if ref is not None:
            ref.write(Path(m.path_of(MONITORING_FILE)))
    return str(m.tag)


@dataclass(frozen=True)
class Logged:
    """What a test wrote into the log: ids and hashes, to look for in the outputs."""

    prediction_ids: list[str]
    image_hashes: list[str]


def log_predictions(
    url: str,
    root: Path,
    model_tag: str,
    n: int,
    site: Site,
    *,
    at: datetime,
    seed: int,
    feedback: str | None = None,
    threshold: float = 0.5,
) -> Logged:
    """Write n predictions of model_tag on images from `site`, made in the minutes before `at`.

    feedback: None (no ground truth), "right" (the label that agrees with p(lesion) most of
    the time: drawn from it) or "wrong" (the opposite of that draw).
    """
    engine = engine_for(url, root)
    rng = np.random.default_rng(seed)
    probs = lesion_probabilities(n, site, seed)
    rows, ids, hashes = [], [], []
    for i in range(n):
        pid = uuid.uuid4().hex
        digest = image_hash(KEY, f"1.2.826.0.1.3680043.99.{seed}.{i}")
        label = int(probs[i, 1] >= threshold)
        rows.append(
            PredictionRow(
                prediction_id=pid,
                created_at=at - timedelta(minutes=1 + i % 50, seconds=i),
                model_tag=model_tag,
                image_hash=digest,
                input_format="dicom",
                modality=site.modality,
                manufacturer=site.manufacturer,
                rows=64,
                columns=64,
                pixel_mean=float(rng.normal(site.pixel_mean, site.pixel_mean_sd)),
                pixel_std=float(rng.normal(site.pixel_std, 2.0)),
                probabilities=probs[i].tolist(),
                class_names=CLASS_NAMES,
                label_index=label,
                label=CLASS_NAMES[label],
                threshold=threshold,
                latency_ms=3.0,
                route="/predict",
            )
        )
        ids.append(pid)
        hashes.append(digest)
    insert_predictions(engine, [row_params(r, KEY) for r in rows])
    if feedback is not None:
        truth = (rng.random(n) < probs[:, 1]).astype(int)
        if feedback == "wrong":
            truth = 1 - truth
        for pid, label in zip(ids, truth, strict=True):
            insert_feedback(engine, pid, int(label))
    engine.dispose()
    return Logged(ids, hashes)
