"""Results back to the PACS, for real: images STOW'd into a real Orthanc, a real served Bento
(`bentoml serve` of a Bento run_package built from a tiny untrained network), and the
`medflow-pacs-infer` Prefect flow run against the session's test Prefect server. One SR per
new image, read back with highdicom from Orthanc (WADO-RS), referencing its image and carrying
the served probability, threshold and model; a second run stores nothing; nothing
identifying reaches the flow's parameters, result, artifact or logs. Bento or PACS down: an
error naming it. A segmentation Bento: one SEG per image.

BENTOML_HOME is a per-session temp folder (tests/conftest.py).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import highdicom as hd
import httpx
import numpy as np
import pydicom
import pytest
import torch
import yaml
from pydicom.sr.codedict import codes
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    PositronEmissionTomographyImageStorage,
    generate_uid,
)

from medflow.config import GateParams, PackageParams, PacsParams, PreprocessParams, ServeParams
from medflow.errors import PacsError
from medflow.handoffs import NO_CHAMPION, ChampionComparison, GateReport, SegmentationMetrics
from medflow.models.artifact import ModelSpec, save_model
from medflow.models.net import SmallCNN, build_unet
from medflow.pacs.infer import run_infer
from medflow.pacs.infer_bento import BentoError
from medflow.registry.infra_validation import RunningBento, free_port, serve_bento
from medflow.registry.packaging import run_package
from tests.helpers.dicom_files import image_dataset
from tests.helpers.handoffs import write_evaluated

ROOT = Path(__file__).resolve().parents[2]
KEY = b"pacs-infer-test-key-0123456789"
THRESHOLD = 0.3  # evaluated: what the Bento serves
TODAY = date.today()
PATIENT_NAME, PATIENT_ID, ACCESSION = "Quorvex^Tildana", "MRN55501234", "ACC-7781-SECRET"


SOP_CLASSES = {
    "CR": ComputedRadiographyImageStorage,
    "CT": CTImageStorage,
    "PT": PositronEmissionTomographyImageStorage,  # a modality the Bento refuses
}


@dataclass(frozen=True)
class Study:
    uid: str
    images: list[pydicom.Dataset]


def _study(n: int, study_date: str, modality: str = "CR") -> Study:
    """A study of n small images (one series), with identifiers a log must never show."""
    rng = np.random.default_rng(len(study_date) + n)
    study, series = generate_uid(), generate_uid()
    images = []
    for i in range(n):
        ds = image_dataset(
            rng.integers(0, 4000, (48, 48), dtype=np.uint16),
            sop_class=SOP_CLASSES[modality],
            Modality=modality,
            StudyDate=study_date,
            AccessionNumber=ACCESSION,
            StudyID="1",
            InstanceNumber=i + 1,
        )
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
        if modality == "CT":  # what a SEG of a CT image needs (STACK_NOTES part 2 §1)
            ds.FrameOfReferenceUID = generate_uid()
            ds.PixelSpacing, ds.SliceThickness = [0.5, 0.5], 1.0
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.ImagePositionPatient = [0, 0, float(i)]
        images.append(ds)
    return Study(study, images)


def _serve(bento_tag: str, workdir: Path) -> Iterator[RunningBento]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MEDFLOW_SERVE_")}
    environ.pop("MEDFLOW_API_TOKEN", None)
    with serve_bento(bento_tag, workdir=workdir, timeout=120, env=environ) as running:
        yield running


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningBento, str]]:
    """A served classifier Bento (untrained SmallCNN, threshold THRESHOLD) and its model tag."""
    tmp = tmp_path_factory.mktemp("pacs_infer_pkg")
    spec = ModelSpec(
        architecture="SmallCNN",
        in_channels=1,
        num_classes=2,
        width=8,
        dropout=0.1,
        class_names=["normal", "lesion"],
        preprocess=PreprocessParams(image_size=32).model_dump(),
        provenance={"data_hash": "d" * 64, "git_rev": None},
    )
    save_model(tmp / "model", SmallCNN(1, 2, width=8), spec)
    write_evaluated(tmp, auroc=0.91, sensitivity=0.8, threshold=THRESHOLD, n_test=40)
    packaged = run_package(
        PackageParams(),
        model_dir=tmp / "model",
        metrics_file=tmp / "metrics.json",
        gate_file=tmp / "gate.json",
        project_root=ROOT,
        out_file=tmp / "package.json",
    )
    yield from (
        (running, packaged.model_tag)
        for running in _serve(packaged.bento_tag, tmp_path_factory.mktemp("serve_cls"))
    )


def _project(tmp: Path, pacs_url: str, bento_url: str, **infer: object) -> Path:
    """A project root holding only the params the pass reads."""
    root = tmp / "project"
    root.mkdir(exist_ok=True)
    params = {"pacs": {"url": pacs_url, "retries": 1, "backoff_seconds": 0.1, "workers": 2}}
    params["pacs"]["infer"] = {"bento_url": bento_url, "lookback_days": 2, **infer}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def _stored(orthanc, modality: str) -> list[pydicom.Dataset]:
    """Every instance of one modality in Orthanc, retrieved by WADO-RS."""
    client = orthanc.client()
    found = client.search_for_instances(search_filters={"Modality": modality}, get_remaining=True)
    out = []
    for item in found:
        h = pydicom.Dataset.from_json(item)
        out.append(
            client.retrieve_instance(h.StudyInstanceUID, h.SeriesInstanceUID, h.SOPInstanceUID)
        )
    return out


def _identifiers(studies: list[Study]) -> set[str]:
    ids = {PATIENT_NAME, PATIENT_ID, ACCESSION}
    for s in studies:
        ids.add(s.uid)
        for ds in s.images:
            ids |= {ds.SeriesInstanceUID, ds.SOPInstanceUID}
    return ids


def _text(group, concept) -> str:
    """The TEXT item `concept` of a measurement group (TID 4019 algorithm identification)."""
    container = group[0]
    return next(
        item.TextValue
        for item in container.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == concept.value
    )


def _flow_logs_and_artifacts(flow_run_id, expect: str = "stored") -> tuple[str, dict[str, str]]:
    """The run's logs and artifacts as the server holds them. Logs reach the server in batches
    in the background: read until `expect` is there (or 30 s)."""
    import time

    from prefect import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )

    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
            )
            if any(expect in log.message for log in logs) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return "\n".join(log.message for log in logs), {a.key: str(a.data) for a in artifacts}


def test_flow_stores_one_sr_per_new_image_once(
    orthanc, classifier, prefect_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect import get_client

    from medflow.orchestration.pacs_infer import ARTIFACT, pacs_infer

    server, model_tag = classifier
    new = [_study(2, f"{TODAY:%Y%m%d}"), _study(1, f"{TODAY:%Y%m%d}")]
    old = _study(2, "20200101")  # outside the 2-day window: not inferred on
    refused = _study(1, f"{TODAY:%Y%m%d}", modality="PT")  # the Bento refuses PT: counted
    orthanc.store([ds for s in [*new, old, refused] for ds in s.images])
    for name, value in orthanc.env.items():
        monkeypatch.setenv(name, value)
    root = _project(tmp_path, orthanc.dicomweb, server.url)

    state = pacs_infer(root=str(root), return_state=True)
    assert state.is_completed(), state.message
    first = state.result()
    assert first["images"] == 4 and first["studies"] == 3
    assert (first["stored"], first["already done"], first["refused"], first["failed"]) == (
        3,
        0,
        1,
        0,
    )
    assert first["model"] == model_tag

    inputs = {ds.SOPInstanceUID: ds for s in new for ds in s.images}
    srs = _stored(orthanc, "SR")
    assert len(srs) == 3
    referenced = set()
    name, version = model_tag.split(":")
    for sr_ds in srs:
        buffer = io.BytesIO()
        sr_ds.save_as(buffer, enforce_file_format=True)
        buffer.seek(0)
        sr = hd.sr.srread(buffer)
        assert isinstance(sr, hd.sr.Comprehensive3DSR)
        groups = sr.content.get_image_measurement_groups()
        assert len(groups) == 1
        group = groups[0]
        sop = group.source_images[0].referenced_sop_instance_uid
        referenced.add(sop)
        assert sr.StudyInstanceUID == inputs[sop].StudyInstanceUID
        # what the Bento answers for that very image, now, over HTTP
        raw = io.BytesIO()
        inputs[sop].save_as(raw, enforce_file_format=True)
        answer = httpx.post(
            f"{server.url}/predict", files={"file": ("x.dcm", raw.getvalue())}, timeout=60
        ).json()
        measured = {m.name.meaning: m.value for m in group.get_measurements()}
        assert measured["Probability"] == pytest.approx(answer["probabilities"]["lesion"], abs=1e-6)
        assert measured["Threshold Value"] == pytest.approx(THRESHOLD)
        evaluation = group.get_qualitative_evaluations()[0]
        assert evaluation.name.meaning == "lesion"
        present = answer["label"] == "lesion"
        assert evaluation.value == (codes.SCT.Present if present else codes.SCT.Absent)
        assert _text(group, codes.DCM.AlgorithmName) == name
        assert _text(group, codes.DCM.AlgorithmVersion) == version
    assert referenced == set(inputs)

    again = pacs_infer(root=str(root), return_state=True).result()
    assert (again["images"], again["stored"], again["already done"]) == (4, 0, 4)
    assert again["refused"] == 0  # neither the stored SRs nor the refused image are sent again
    assert len(orthanc.sop_uids("SR")) == 3

    # nothing identifying in the flow run's parameters, result, artifact or logs
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
    assert run.parameters == {"root": str(root)}
    logs, artifacts = _flow_logs_and_artifacts(run.id)
    artifact = artifacts[ARTIFACT]
    assert "stored" in logs and "| stored | 3 |" in artifact
    text = f"{logs}\n{artifact}\n{first}\n{again}"
    leaked = [i for i in _identifiers([*new, old, refused]) if i in text]
    assert not leaked, f"identifiers in the flow's outputs: {leaked}"


def test_bento_down_and_pacs_down_are_named(
    orthanc, classifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _ = classifier
    orthanc.store(_study(1, f"{TODAY:%Y%m%d}").images)
    env = {**os.environ, **orthanc.env}
    pacs = PacsParams(url=orthanc.dicomweb, retries=1, backoff_seconds=0.05)
    down = f"http://127.0.0.1:{free_port()}"
    nowhere = pacs.model_copy(update={"infer": pacs.infer.model_copy(update={"bento_url": down})})
    with pytest.raises(BentoError, match=rf"Bento {down}: .*connection refused.*served"):
        run_infer(nowhere, tmp_path / "ledger.sqlite", KEY, env=env)

    served = pacs.model_copy(
        update={"infer": pacs.infer.model_copy(update={"bento_url": server.url})}
    )
    orthanc.stop()
    with pytest.raises(PacsError, match=rf"PACS {orthanc.dicomweb}: QIDO-RS .* connection refused"):
        run_infer(served, tmp_path / "ledger.sqlite", KEY, env=env)
    orthanc.start()
    result = run_infer(served, tmp_path / "ledger.sqlite", KEY, env=env)
    assert (result.images, result.stored) == (1, 1)


def test_medflow_infer_command(orthanc, classifier, tmp_path: Path) -> None:
    """`medflow infer`: the same pass from the command line; counts out, no identifier; the
    PACS down: exit 1 and a line naming the server."""
    server, _ = classifier
    study = _study(2, f"{TODAY:%Y%m%d}")
    orthanc.store(study.images)
    root = _project(tmp_path, orthanc.dicomweb, server.url)
    env = {**os.environ, **orthanc.env}
    command = [sys.executable, "-m", "medflow.cli", "infer", "--params", "params.yaml"]

    first = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert "images: 2" in first.stdout and "stored: 2" in first.stdout
    again = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    assert "stored: 0" in again.stdout and "already done: 2" in again.stdout
    assert (root / ".medflow" / "pacs_infer.sqlite").is_file()

    orthanc.stop()
    down = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    assert down.returncode == 1
    assert f"PACS {orthanc.dicomweb}: QIDO-RS search for studies failed" in down.stderr
    text = first.stdout + first.stderr + again.stdout + again.stderr + down.stdout + down.stderr
    assert not [i for i in _identifiers([study]) if i in text]


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningBento, str]]:
    """A served segmentation Bento (an untrained [8, 16] U-Net) and its model tag."""
    tmp = tmp_path_factory.mktemp("pacs_infer_seg_pkg")
    spec = ModelSpec(
        architecture="unet",
        in_channels=1,
        num_classes=1,
        width=8,
        dropout=0.0,
        class_names=["background", "lesion"],
        preprocess=PreprocessParams(image_size=32).model_dump(),
        provenance={"data_hash": "e" * 64},
        task="segmentation",
        unet_channels=[8, 16],
    )
    torch.manual_seed(0)
    save_model(tmp / "model", build_unet(1, 1, [8, 16]).eval(), spec)
    metrics = SegmentationMetrics(
        dice=0.9,
        dice_ci_low=0.85,
        dice_ci_high=0.94,
        iou=0.82,
        iou_ci_low=0.75,
        iou_ci_high=0.88,
        hd95=2.0,
        hd95_ci_low=1.5,
        hd95_ci_high=2.5,
        detection_sensitivity=1.0,
        false_positives_per_image=0.0,
        per_segment={"lesion": {"dice": 0.9, "iou": 0.82, "hd95": 2.0}},
        threshold=0.5,
        n_images=4,
        n_patients=4,
        n_lesions=4,
    )
    metrics.write(tmp / "metrics.json")
    GateReport(
        passed=True,
        decision="accepted",
        failures=[],
        rules=[],
        champion=ChampionComparison(status=NO_CHAMPION, reason="test: no champion"),
        thresholds=GateParams(),
        metrics=metrics,
    ).write(tmp / "gate.json")
    packaged = run_package(
        PackageParams(model_name="medflow-segmenter", serve=ServeParams()),
        model_dir=tmp / "model",
        metrics_file=tmp / "metrics.json",
        gate_file=tmp / "gate.json",
        project_root=ROOT,
        out_file=tmp / "package.json",
    )
    yield from (
        (running, packaged.model_tag)
        for running in _serve(packaged.bento_tag, tmp_path_factory.mktemp("serve_seg"))
    )


def test_segmentation_model_stores_a_seg_per_image_once(orthanc, segmenter, tmp_path: Path) -> None:
    """run_infer (the flow's pass) with a segmentation Bento: one SEG per CT image, which
    highdicom reads back referencing it; a second pass stores nothing."""
    server, model_tag = segmenter
    study = _study(2, f"{TODAY:%Y%m%d}", modality="CT")
    orthanc.store(study.images)
    env = {**os.environ, **orthanc.env}
    pacs = PacsParams(url=orthanc.dicomweb, retries=1, backoff_seconds=0.05)
    pacs = pacs.model_copy(
        update={"infer": pacs.infer.model_copy(update={"bento_url": server.url})}
    )

    first = run_infer(pacs, tmp_path / "ledger.sqlite", KEY, env=env)
    assert (first.task, first.model_tag) == ("segmentation", model_tag)
    assert (first.images, first.stored, first.refused, first.failed) == (2, 2, {}, {})
    segs = _stored(orthanc, "SEG")
    assert len(segs) == 2
    referenced = set()
    for seg_ds in segs:
        buffer = io.BytesIO()
        seg_ds.save_as(buffer, enforce_file_format=True)
        buffer.seek(0)
        seg = hd.seg.segread(buffer)
        referenced.add(seg.get_source_image_uids()[0][2])
        assert f"{seg.ManufacturerModelName}:{seg.SoftwareVersions}" == model_tag
        assert seg.StudyInstanceUID == study.uid
    assert referenced == {ds.SOPInstanceUID for ds in study.images}

    again = run_infer(pacs, tmp_path / "ledger.sqlite", KEY, env=env)
    assert (again.images, again.stored, again.already_done) == (2, 0, 2)
    assert len(orthanc.sop_uids("SEG")) == 2
