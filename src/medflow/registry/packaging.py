"""The package stage: a model that passed the gate -> BentoML model store -> a Bento.

The store entry carries the model, its metrics, spec and gate decision, reference samples
for infra-validation and a classifier's monitoring reference (monitoring.json, for `medflow
monitor`); the Bento is built for exactly that model tag
(docs/decisions/champion-records.md). Either task: a classifier's Bento answers /predict, a
segmentation model's /segment (the same service, medflow.serving.service).
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from medflow.config import PackageParams
from medflow.data.dataset import Dataset
from medflow.errors import GateFailed
from medflow.handoffs import GateReport, Metrics, SegmentationMetrics, read_metrics
from medflow.io import write_bytes_atomic, write_json_atomic
from medflow.models.artifact import CARD_FILE, WEIGHTS_FILE, ModelSpec, load_model, load_spec

# The champion's file names are re-exported here for callers that knew them from package.
from medflow.registry.champion import (  # noqa: F401
    CHAMPION_METRICS,
    CHAMPION_MODEL,
    record_champion,
    replaced_by_hand,
)
from medflow.registry.infra_validation import REFERENCE_DIR, REFERENCE_FILE, SEGMENTATION
from medflow.registry.monitoring import MONITORING_FILE, build_reference
from medflow.serving import MODEL_TAG_ARG, SERVE_ARG

logger = logging.getLogger(__name__)

BENTOFILE = Path("deploy") / "bentofile.yaml"
# test-split images stored with the model for infra-validation (medflow.registry.infra_validation)
N_REFERENCE = 4
BUILD_CONTEXT = Path("src")


@dataclass(frozen=True)
class PackageResult:
    """What package made: the model store entry and the Bento serving it (both `name:version`)."""

    model_tag: str
    bento_tag: str
    # recorded as the champion (with a champion folder, unless replaced_by_hand said no)
    champion: bool = False


def read_gate(gate_file: Path) -> GateReport:
    """The gate stage's decision; raises GateFailed with its reasons unless it passed."""
    gate = GateReport.read(gate_file)
    if not gate.passed:
        reasons = "\n".join(f"  - {f}" for f in gate.failures or ["(the gate gave no reasons)"])
        raise GateFailed(f"not packaging: the model failed the evaluation gate:\n{reasons}")
    return gate


def served_spec(spec: ModelSpec, metrics: Metrics | SegmentationMetrics) -> ModelSpec:
    """The spec to serve, with the decision threshold the evaluation (and so the gate) used.

    evaluate scores at `evaluate.threshold` and writes it into metrics.json; serving decides
    with `spec.threshold`. Packaging makes them one value, so the Bento answers as the
    gated model was judged.
    """
    threshold = metrics.threshold
    if threshold == spec.threshold:
        return spec
    if not 0 < threshold < 1:
        raise ValueError(f"metrics threshold must be in (0, 1), got {threshold}")
    logger.warning(
        "serving with the evaluated threshold %g instead of model.json's %g",
        threshold,
        spec.threshold,
    )
    return replace(spec, threshold=threshold)


def store_safe(value: Any) -> Any:
    """`value` in the types BentoML accepts as model metadata: no None, no NaN surprises."""
    if isinstance(value, dict):
        return {str(k): store_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [store_safe(v) for v in value if v is not None]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str | bool | int | float):
        return value
    return str(value)


def model_labels(spec: ModelSpec, dataset: Dataset | None = None) -> dict[str, str]:
    """Short, filterable labels (`bentoml models list -l ...`); details go in the metadata."""
    labels = {
        "project": "medflow",
        "task": spec.task,
        "architecture": spec.architecture,
        "classes": ",".join(spec.class_names),
        "gate": "passed",
    }
    if dataset is not None:
        labels["dataset"] = dataset.key
    data_hash = spec.provenance.get("data_hash")
    if data_hash:
        labels["data_hash"] = str(data_hash)
    return labels


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_reference(
    folder: Path,
    manifest: Path,
    predictions: Path,
    class_names: list[str],
    n: int = N_REFERENCE,
) -> int:
    """Copy `n` test-split images (de-identified DICOM files of the ingested manifest, one
    frame each, classes taken in turn) into folder/reference/ with the probabilities evaluate
    wrote for them in predictions.csv (matched by image_id); returns how many.

    Raises ValueError when the test split has no single-frame image with a prediction.
    """
    import pandas as pd

    manifest = Path(manifest)
    preds = pd.read_csv(predictions, dtype={"image_id": str}).set_index("image_id")
    columns = [f"p_{c}" for c in class_names]
    missing = [c for c in columns if c not in preds.columns]
    if missing:
        raise ValueError(f"{predictions} has no columns {missing}: re-run the evaluate stage")
    picked = _test_rows(manifest, preds.index, f"has a prediction in {predictions}")
    out = Path(folder) / REFERENCE_DIR
    out.mkdir(parents=True, exist_ok=True)
    samples = []
    for i, row in enumerate(picked.head(n).itertuples()):
        name = f"sample{i}.dcm"  # not the source's name
        shutil.copyfile(manifest.parent / row.file, out / name)
        probs = [float(preds.at[row.image_id, c]) for c in columns]
        samples.append({"file": name, "probabilities": probs})
    write_json_atomic(out / REFERENCE_FILE, {"samples": samples})
    return len(samples)


def _test_rows(manifest: Path, ids: Any = None, why: str = "") -> Any:
    """The manifest's single-frame test-split rows (with an image_id in `ids`, when given),
    classes in turn (0, 1, 0, 1, ...: both sides of a threshold are checked); ValueError when
    there is none."""
    import pandas as pd

    rows = pd.read_csv(manifest, dtype={"image_id": str, "file": str})
    # one row per file: the Bento reads the frame preprocess.frames names, the row holds it
    single = rows[~rows["file"].duplicated(keep=False)]
    test = single[single["split"] == "test"]
    if ids is not None:
        test = test[test["image_id"].isin(ids)]
    if test.empty:
        raise ValueError(
            f"no single-frame test-split image of {manifest} {why or 'exists'}:"
            " re-run the evaluate stage"
        )
    test = test.sort_values("image_id")
    return test.assign(turn=test.groupby("label").cumcount()).sort_values(["turn", "label"])


def write_seg_reference(
    folder: Path, manifest: Path, model_dir: Path, spec: ModelSpec, n: int = N_REFERENCE
) -> int:
    """Copy `n` test-split images (de-identified DICOM files of the ingested manifest, one
    frame each, with and without lesions in turn) into folder/reference/ with the masks the
    packaged network gives them (K, rows, columns) as reference/sample<i>_mask.npy; returns
    how many.

    The masks are computed here, from model_dir's weights through medflow.imaging.preprocess,
    at the served threshold: infra-validation then shows that the Bento, its copy of the code
    and its weights, answers /segment with them (Dice >= REFERENCE_MIN_DICE).
    """
    import io

    import numpy as np
    import torch

    from medflow.imaging.masks import to_source_mask
    from medflow.imaging.preprocess import preprocess_dataset, read_dicom

    manifest = Path(manifest)
    picked = _test_rows(manifest)
    net, _ = load_model(Path(model_dir))
    params = spec.preprocess_params
    out = Path(folder) / REFERENCE_DIR
    out.mkdir(parents=True, exist_ok=True)
    samples = []
    for i, row in enumerate(picked.head(n).itertuples()):
        name, mask_name = f"sample{i}.dcm", f"sample{i}_mask.npy"  # not the source's name
        shutil.copyfile(manifest.parent / row.file, out / name)
        image, summary = preprocess_dataset(read_dicom(out / name), params)
        with torch.inference_mode():
            probs = torch.sigmoid(net(torch.from_numpy(image)[None]).float())[0].numpy()
        mask = to_source_mask((probs >= spec.threshold).astype(np.uint8), summary.original_shape)
        buffer = io.BytesIO()
        np.save(buffer, mask)
        write_bytes_atomic(out / mask_name, buffer.getvalue())
        samples.append({"file": name, "mask": mask_name})
    write_json_atomic(out / REFERENCE_FILE, {"task": SEGMENTATION, "samples": samples})
    return len(samples)


def save_to_store(
    name: str,
    model_dir: Path,
    spec: ModelSpec,
    metrics: Metrics | SegmentationMetrics,
    gate: GateReport,
    weights_sha256: str | None = None,
    dataset: Dataset | None = None,
    reference: tuple[Path, Path | None] | None = None,
) -> str:
    """A new model store entry holding model.pt and `spec` as model.json, and with
    `reference` (manifest, predictions) its reference samples (write_reference; for a
    segmentation model write_seg_reference, which needs the manifest only) and, for a
    classifier, monitoring.json (medflow.registry.monitoring: what `medflow monitor` compares
    production with); returns `name:version`."""
    import bentoml

    metadata = store_safe(
        {
            "metrics": metrics.values(),
            "spec": asdict(spec),
            "data_hash": spec.provenance.get("data_hash"),
            "dataset": dataset.as_dict() if dataset is not None else None,
            "gate": gate.model_dump(),
            "weights_sha256": weights_sha256 or _sha256(model_dir / WEIGHTS_FILE),
        }
    )
    labels = model_labels(spec, dataset)
    with bentoml.models.create(name=name, labels=labels, metadata=metadata) as m:
        shutil.copy2(model_dir / WEIGHTS_FILE, m.path_of(WEIGHTS_FILE))
        # save_model's format, so that load_model reads it; differs from model_dir's copy
        # only when served_spec changed the threshold.
        write_json_atomic(Path(m.path_of(CARD_FILE)), asdict(spec))
        if reference is not None and spec.task == SEGMENTATION:
            n = write_seg_reference(Path(m.path), reference[0], model_dir, spec)
            logger.info("stored %d test-split reference samples and masks", n)
        elif reference is not None:
            if reference[1] is None:
                raise ValueError("a classifier's reference samples need predictions.csv")
            n = write_reference(Path(m.path), reference[0], reference[1], spec.class_names)
            logger.info("stored %d test-split reference samples for infra-validation", n)
            monitoring = build_reference(
                reference[0], reference[1], spec.class_names, spec.threshold, metrics.values()
            )
            monitoring.write(Path(m.path_of(MONITORING_FILE)))
            logger.info(
                "stored the monitoring reference: the training data's profile (%d images) and"
                " %d test-split predictions",
                monitoring.profile["images"],
                len(monitoring.probabilities),
            )
    return str(m.tag)


def build_bento(
    bentofile: Path, build_ctx: Path, model_tag: str, serve: dict[str, Any] | None = None
) -> str:
    """Build the Bento for exactly `model_tag`, with `serve` (package.serve) as its service
    settings; returns the bento tag."""
    import bentoml
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.utils.args import set_arguments

    # Bento arguments are process-global in BentoML: restore them so that a later
    # import of the service in this process does not inherit this build's model.
    previous = dict(BentoMLContainer.bento_arguments.get())
    try:
        bento = bentoml.bentos.build_bentofile(
            str(bentofile),
            build_ctx=str(build_ctx),
            args={MODEL_TAG_ARG: model_tag, SERVE_ARG: serve or {}},
            labels={"model_tag": model_tag},
            # The service module reads the model tag at import: re-import it if this process
            # imported it before (a second package run, tests).
            reload=True,
        )
    finally:
        set_arguments(previous)
    packed = sorted(str(m.tag) for m in bento.info.all_models)
    if packed != [model_tag]:
        raise RuntimeError(
            f"bento {bento.tag} references models {packed}, expected only {model_tag}:"
            f" check the model reference in {bentofile} and medflow/serving/service.py"
        )
    return str(bento.tag)


def run_package(
    params: PackageParams,
    model_dir: Path,
    metrics_file: Path,
    gate_file: Path,
    project_root: Path,
    out_file: Path,
    champion_dir: Path | None = None,
    dataset: Dataset | None = None,
    manifest: Path | None = None,
    predictions: Path | None = None,
) -> PackageResult:
    """Save a gated model to the model store, build its Bento and record both tags in out_file.

    With manifest (the ingested one) and predictions (evaluate's predictions.csv), the model
    store entry gets its reference samples, which infra-validation (promote, rollback) needs;
    a segmentation model's need the manifest only (write_seg_reference).
    Raises GateFailed (and builds nothing) unless gate_file says the model passed. With
    champion_dir (the dataset's champion folder, medflow.data.dataset.champion_folder), the packaged
    model becomes the champion the next gate on `dataset` compares against.
    """
    model_dir, project_root = Path(model_dir), Path(project_root)
    gate = read_gate(gate_file)
    metrics = read_metrics(metrics_file)
    spec = served_spec(load_spec(model_dir), metrics)
    task = getattr(metrics, "task", "classification")
    if task != spec.task:
        raise ValueError(
            f"{metrics_file} holds {task} metrics but {model_dir / CARD_FILE} a {spec.task}"
            " model: re-run the evaluate stage"
        )
    if not (model_dir / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"no weights at {model_dir / WEIGHTS_FILE}: run the train stage")
    bentofile, build_ctx = project_root / BENTOFILE, project_root / BUILD_CONTEXT
    if not bentofile.is_file():
        raise FileNotFoundError(f"no bentofile at {bentofile}: is {project_root} the project root?")

    weights = _sha256(model_dir / WEIGHTS_FILE)
    if spec.task != SEGMENTATION and (manifest is None) != (predictions is None):
        raise ValueError("the reference samples need both the manifest and predictions.csv")
    model_tag = save_to_store(
        params.model_name,
        model_dir,
        spec,
        metrics,
        gate,
        weights,
        dataset=dataset,
        reference=None
        if manifest is None
        else (Path(manifest), None if predictions is None else Path(predictions)),
    )
    logger.info("saved model %s to the BentoML model store", model_tag)
    try:
        bento_tag = build_bento(bentofile, build_ctx, model_tag, params.serve.model_dump())
    except BaseException:
        # No model without its Bento: it would become "latest" for anyone serving from source.
        import bentoml

        bentoml.models.delete(model_tag)
        raise
    logger.info(
        "built bento %s serving %s; run it with: bentoml serve %s", bento_tag, model_tag, bento_tag
    )

    demoted_by = replaced_by_hand(Path(champion_dir), weights) if champion_dir else None
    result = PackageResult(
        model_tag, bento_tag, champion=champion_dir is not None and demoted_by is None
    )
    if demoted_by is not None:
        logger.warning(
            "%s is not made the champion: the same network (weights sha256 %s...) was"
            " replaced by hand (medflow models %s, %s), and this run only rebuilt its Bento."
            " The champion stays as it is; to serve this Bento anyway: medflow models promote"
            " %s",
            model_tag,
            weights[:12],
            demoted_by["action"],
            demoted_by["promoted_at"],
            model_tag,
        )
    write_json_atomic(
        out_file,
        {
            **asdict(result),
            "serve": f"bentoml serve {bento_tag}",
            "predict": "curl -F file=@image.dcm http://127.0.0.1:3000/"
            + ("segment" if spec.task == SEGMENTATION else "predict"),
            "containerize": f"bentoml containerize {bento_tag}",
            "metrics": metrics.values(),
        },
    )
    if result.champion:
        write_champion(Path(champion_dir), result, metrics, spec, weights, dataset)
    return result


def write_champion(
    folder: Path,
    result: PackageResult,
    metrics: Metrics | SegmentationMetrics,
    spec: ModelSpec,
    weights_sha256: str | None = None,
    dataset: Dataset | None = None,
) -> None:
    """Record the packaged model as the champion of its dataset: which model and Bento it is
    (the next evaluate scores that model on its own test split) and its metrics. Written
    last, once the Bento exists."""
    record_champion(
        folder,
        model_tag=result.model_tag,
        bento_tag=result.bento_tag,
        metrics=metrics.values(),
        data_hash=spec.provenance.get("data_hash"),
        git_revision=spec.provenance.get("git_revision"),
        promoted_by="package",
        weights_sha256=weights_sha256,
        dataset=dataset.as_dict() if dataset is not None else None,
    )
