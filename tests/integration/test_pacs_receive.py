"""`medflow receive` as a real process: dcmtk's echoscu/storescu, a pynetdicom SCU and Orthanc
push to it; an unlisted AE is refused; the data watcher then emits its data-change event."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
import yaml
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless

from medflow.orchestration.watch import EVENT, hash_source, watch_data
from tests.helpers.dicom_files import image_dataset, write_dicom
from tests.helpers.orthanc import Orthanc, free_port, orthanc_binary

ROOT = Path(__file__).resolve().parents[2]
KEY = "integration-receive-key-0123456789"
ALLOWED = ("STORESCU", "PYSCU", "ORTHANC")

pytestmark = pytest.mark.skipif(
    shutil.which("storescu") is None or shutil.which("echoscu") is None,
    reason="dcmtk (storescu, echoscu) is not installed (`make system-deps`)",
)


@dataclass
class Running:
    """A `medflow receive` process and its project folder."""

    root: Path
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def source(self) -> Path:
        return self.root / "data" / "incoming"

    @property
    def held(self) -> Path:
        return self.root / "data" / "received-unlabelled"


def _project(root: Path, source_labels_csv: bool) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["source"] = "incoming"
    params["data"]["class_names"] = ["normal", "lesion"]
    (root / "data" / "incoming").mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    existing = write_dicom(_dataset(), root / "data" / "incoming" / "old" / "a.dcm")
    if source_labels_csv:
        (root / "data" / "incoming" / "labels.csv").write_text("path,label\nold/a.dcm,normal\n")
    else:
        (root / "data" / "incoming" / "normal").mkdir()
        shutil.move(existing, root / "data" / "incoming" / "normal" / "a.dcm")
    return root


def _dataset(**attrs: object) -> pydicom.Dataset:
    pixels = np.random.default_rng(0).integers(0, 4000, (32, 32), dtype=np.uint16)
    return image_dataset(pixels, AccessionNumber="", **attrs)


def _study_labels(root: Path, rows: list[tuple[str, str]]) -> None:
    path = root / "data" / "pacs_labels.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([("StudyInstanceUID", "label"), *rows])


def _echo(port: int, calling: str = "STORESCU") -> subprocess.CompletedProcess[str]:
    cmd = ["echoscu", "-aet", calling, "-aec", "MEDFLOW", "127.0.0.1", str(port)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def _storescu(port: int, files: list[Path], calling: str) -> subprocess.CompletedProcess[str]:
    cmd = ["storescu", "-aet", calling, "-aec", "MEDFLOW", "127.0.0.1", str(port)]
    return subprocess.run(cmd + [str(f) for f in files], capture_output=True, text=True, timeout=60)


def _start(root: Path) -> Running:
    port = free_port()
    log = root / "receive.log"
    env = {**os.environ, "MEDFLOW_DEID_KEY": KEY, "MEDFLOW_LOG_LEVEL": "DEBUG", "COLUMNS": "200"}
    allow = [w for aet in ALLOWED for w in ("--allow", aet)]
    cmd = [
        "medflow",
        "receive",
        "--params",
        str(root / "params.yaml"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *allow,
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while _echo(port).returncode != 0:  # ready: it answers a C-ECHO
        assert proc.poll() is None, f"medflow receive exited {proc.returncode}: {log.read_text()}"
        assert time.monotonic() < deadline, f"no C-ECHO answer in 90 s: {log.read_text()}"
        time.sleep(0.5)
    return Running(root, port, proc, log)


def _stop(running: Running) -> str:
    running.proc.send_signal(signal.SIGTERM)
    assert running.proc.wait(timeout=30) == 0, running.log.read_text()
    return running.log.read_text()


@pytest.fixture
def receiving(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Running]:
    running = _start(_project(tmp_path / "project", getattr(request, "param", True)))
    try:
        yield running
    finally:
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait()


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _wait_for(what: str, check, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def test_storescu_push_is_filed_refused_for_others_and_the_watcher_emits(
    prefect_server, receiving: Running, tmp_path: Path
):
    root, source = receiving.root, receiving.source
    labelled = [_dataset(), _dataset()]
    unlabelled = _dataset()
    _study_labels(
        root, [(labelled[0].StudyInstanceUID, "lesion"), (labelled[1].StudyInstanceUID, "normal")]
    )
    files = [write_dicom(ds, tmp_path / "out" / f"{i}.dcm") for i, ds in enumerate(labelled)]
    held_file = write_dicom(unlabelled, tmp_path / "out" / "held.dcm")
    # baseline look of the watcher (first look: no event)
    assert watch_data(root=str(root)) is None

    assert _echo(receiving.port).returncode == 0
    pushed = _storescu(receiving.port, [*files, held_file], "STORESCU")
    assert pushed.returncode == 0, pushed.stderr
    refused = _storescu(receiving.port, [files[0]], "STRANGER")
    assert refused.returncode != 0 and "Calling AE title not recognised" in refused.stderr

    # the labelled instances are in the source with their label rows; complete and readable
    rows = dict(csv.reader((source / "labels.csv").open()))
    received = [f for f in _files(source) if f.startswith("received/")]
    assert len(received) == 2 and {rows[f] for f in received} == {"lesion", "normal"}
    by_sop = {pydicom.dcmread(source / f).SOPInstanceUID: f for f in received}
    for ds in labelled:
        got = pydicom.dcmread(source / by_sop[ds.SOPInstanceUID])
        assert rows[by_sop[ds.SOPInstanceUID]] == ("lesion" if ds is labelled[0] else "normal")
        assert np.array_equal(got.pixel_array, ds.pixel_array)
    # the unlabelled study waits outside the source
    assert len(_files(receiving.held)) == 1
    # nothing but DICOM files and labels.csv in the source; no UID in any name under data/
    assert all(f.endswith(".dcm") or f == "labels.csv" for f in _files(source))
    names = " ".join(_files(root / "data"))
    for ds in [*labelled, unlabelled]:
        assert ds.StudyInstanceUID not in names and ds.SOPInstanceUID not in names

    # one look of the watcher: the data changed, and the server holds its event
    digest = watch_data(root=str(root))
    assert digest == hash_source(source).digest
    from prefect.settings import PREFECT_API_URL

    def event() -> list[dict]:
        page = httpx.post(
            f"{PREFECT_API_URL.value()}/events/filter",
            json={"filter": {"event": {"name": [EVENT]}}, "limit": 50},
        ).json()
        return [e for e in page["events"] if e["resource"].get("medflow.root") == str(root)]

    _wait_for("the data-change event on the Prefect server", event, 60)
    assert event()[0]["payload"]["hash"] == digest

    # its study is listed: the held instance is filed without being sent again
    _study_labels(root, [(unlabelled.StudyInstanceUID, "lesion")])
    _wait_for("the held instance to be filed", lambda: not _files(receiving.held), 30)
    rows = dict(csv.reader((source / "labels.csv").open()))
    assert sum(1 for f in rows if f.startswith("received/")) == 3

    log = _stop(receiving)
    assert "association from AE STRANGER rejected" in log
    assert "2 filed, 1 held for a label, 0 failed" in log
    for ds in [*labelled, unlabelled]:
        assert ds.StudyInstanceUID not in log and ds.SOPInstanceUID not in log


@pytest.mark.parametrize("receiving", [False], indirect=True)  # class folders, no labels.csv
def test_pynetdicom_scu_pushes_many_into_class_folders(receiving: Running):
    from pynetdicom import AE

    datasets = [_dataset() for _ in range(12)]
    for ds in datasets[::3]:
        ds.compress(RLELossless)
    _study_labels(receiving.root, [(ds.StudyInstanceUID, "lesion") for ds in datasets])
    scu = AE(ae_title="PYSCU")
    scu.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    scu.add_requested_context(CTImageStorage, [RLELossless])
    assoc = scu.associate("127.0.0.1", receiving.port, ae_title="MEDFLOW")
    assert assoc.is_established
    statuses = [assoc.send_c_store(ds).Status for ds in datasets]
    assoc.release()
    assert statuses == [0] * len(datasets)
    received = _files(receiving.source / "lesion" / "received")
    assert len(received) == len(datasets)
    syntaxes = sorted(
        str(pydicom.dcmread(receiving.source / "lesion/received" / f).file_meta.TransferSyntaxUID)
        for f in received
    )
    assert syntaxes.count(RLELossless) == 4  # kept as sent
    assert "12 filed, 0 held" in _stop(receiving)


@pytest.mark.skipif(orthanc_binary() is None, reason="Orthanc is not installed")
def test_orthanc_pushes_a_study(receiving: Running, tmp_path: Path):
    orthanc = Orthanc(tmp_path / "orthanc", aet="ORTHANC")
    orthanc.add_modality("MEDFLOW", receiving.port)
    orthanc.start()
    try:
        study = [_dataset(), _dataset()]
        study[1].StudyInstanceUID = study[0].StudyInstanceUID
        _study_labels(receiving.root, [(study[0].StudyInstanceUID, "normal")])
        orthanc.store(study)
        session = orthanc.session()
        (study_id,) = session.get(f"{orthanc.url}/studies").json()
        answer = session.post(f"{orthanc.url}/modalities/MEDFLOW/store", json=[study_id])
        assert answer.ok, answer.text
    finally:
        orthanc.stop()
    received = [f for f in _files(receiving.source) if f.startswith("received/")]
    assert len(received) == 2
    assert {str(pydicom.dcmread(receiving.source / f).SOPInstanceUID) for f in received} == {
        ds.SOPInstanceUID for ds in study
    }
