"""The pull stage against a real Orthanc: `dvc repro` from the PACS to a gated model,
incremental re-runs, and the server going down in the middle of a pull."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from medflow.config import Params, SynthParams, load_params
from medflow.data.synthetic import run_synth
from medflow.data.workers import serial_mapper
from medflow.errors import PacsError
from medflow.pacs.client import server_name
from medflow.stages.pull import pull
from tests.helpers.pipeline_copy import TEST_DEID_KEY, TINY_PARAMS, make_copy, run

CLASSES = ["normal", "lesion"]


def _publish(orthanc, folder: Path, synth: SynthParams) -> list[pydicom.Dataset]:
    """Synthetic studies (one image each) STOW'd to Orthanc; their headers with the label
    (as ds.label) returned."""
    run_synth(synth, CLASSES, folder)
    table = pd.read_csv(folder / "labels.csv")
    paths = [folder / p for p in table.path]
    assert orthanc.store(paths) == len(paths)
    headers = []
    for path, label in zip(paths, table.label, strict=True):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ds.label = label
        headers.append(ds)
    return headers


def _labels_csv(path: Path, headers: list[pydicom.Dataset], key: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [(str(getattr(ds, key)), ds.label) for ds in headers]
    pd.DataFrame(rows, columns=[key, "label"]).to_csv(path, index=False)


def _raw_files(raw: Path) -> dict[str, int]:
    return {p.relative_to(raw).as_posix(): p.stat().st_mtime_ns for p in raw.rglob("*.dcm")}


def _retrieved(output: str) -> int:
    found = re.findall(r"pull: (\d+) retrieved", output)
    assert len(found) == 1, output[-3000:]
    return int(found[0])


def test_dvc_repro_pulls_from_the_pacs_into_a_gated_model(orthanc, tmp_path):
    # more patients than the tiny synthetic run: the split follows the real key's pseudonyms,
    # and 120 images left its gate figures marginal (AUROC 0.90, ECE 0.26)
    synth = {**TINY_PARAMS["synth"], "n_patients": 100}
    headers = _publish(orthanc, tmp_path / "published", SynthParams(**synth))
    repo = make_copy(
        tmp_path / "repo", {"data": {"source": "pacs"}, "pacs": {"url": orthanc.dicomweb}}
    )
    _labels_csv(repo / "data" / "pacs_labels.csv", headers, "StudyInstanceUID")
    env = {**orthanc.env, "MEDFLOW_DEID_KEY": TEST_DEID_KEY}

    first = run(["dvc", "repro"], repo, env=env)
    assert _retrieved(first.stdout + first.stderr) == len(headers)
    assert json.loads((repo / "reports" / "gate.json").read_text())["passed"] is True
    record = json.loads((repo / "data" / "pull.json").read_text())
    assert record["instances"] == record["studies"] == len(headers)
    manifest = pd.read_csv(repo / "data" / "ingested" / "manifest.csv")
    assert len(manifest) == len(headers)
    raw = repo / "data" / "pacs"
    # the raw folder: tokens only, never a UID in a name; never in git or the DVC cache
    names = "\n".join(_raw_files(raw))
    assert not any(ds.StudyInstanceUID in names or ds.SOPInstanceUID in names for ds in headers)
    assert run(["git", "check-ignore", "-q", "data/pacs"], repo, check=False).returncode == 0
    cached = {p.parent.name + p.name for p in (repo / ".dvc" / "cache").rglob("*") if p.is_file()}
    raw_md5 = {hashlib.md5(p.read_bytes()).hexdigest() for p in raw.rglob("*.dcm")}
    # the synth stage ran too, and the first 60 patients are its very files (byte for byte)
    synthetic = {hashlib.md5(p.read_bytes()).hexdigest() for p in raw.parent.glob("synthetic/*/*")}
    assert cached and not (raw_md5 - synthetic) & cached
    logs = first.stdout + first.stderr + (repo / "data" / "pull.json").read_text()
    assert not any(ds.StudyInstanceUID in logs or ds.AccessionNumber in logs for ds in headers)

    before = _raw_files(raw)
    second = run(["dvc", "repro"], repo, env=env)
    out = second.stdout + second.stderr
    assert _retrieved(out) == 0
    assert "Stage 'ingest' didn't change, skipping" in out, out[-3000:]
    assert json.loads((repo / "data" / "pull.json").read_text()) == record
    assert _raw_files(raw) == before

    new = _publish(
        orthanc, tmp_path / "new", SynthParams(n_patients=6, images_per_patient=1, seed=99)
    )
    _labels_csv(repo / "data" / "pacs_labels.csv", [*headers, new[0]], "StudyInstanceUID")
    third = run(["dvc", "repro", "ingest"], repo, env=env)
    assert _retrieved(third.stdout + third.stderr) == 1
    after = _raw_files(raw)
    assert len(set(after) - set(before)) == 1
    assert {k: after[k] for k in before} == before  # nothing retrieved again
    assert json.loads((repo / "data" / "pull.json").read_text())["instances"] == len(headers) + 1
    assert len(pd.read_csv(repo / "data" / "ingested" / "manifest.csv")) == len(headers) + 1


def test_pacs_down_mid_pull_fails_clearly_and_a_later_run_completes(orthanc, tmp_path):
    headers = _publish(orthanc, tmp_path / "published", SynthParams(n_patients=8, seed=5))
    total = len(headers)  # 24 studies of one image
    data = tmp_path / "data"
    _labels_csv(data / "pacs_labels.csv", headers, "AccessionNumber")  # by accession number
    params = Params.model_validate(
        {
            "data": {"source": "pacs"},
            "ingest": {"shard_size": 4},
            "pacs": {"url": orthanc.dicomweb, "retries": 1, "backoff_seconds": 0.05},
        }
    )
    env = {**orthanc.env, "MEDFLOW_DEID_KEY": TEST_DEID_KEY}
    raw, record = data / "pacs", data / "pull.json"

    def stop_after_two_shards(done: int, todo: int) -> None:
        if done >= 8 and orthanc.proc is not None:
            orthanc.stop()  # the PACS goes down between shards: deterministic

    with pytest.raises(PacsError) as failed:
        pull(params, raw, record, mapper=serial_mapper, progress=stop_after_two_shards, env=env)
    message = str(failed.value)
    assert server_name(orthanc.dicomweb) in message and "connection refused" in message
    uids = [v for ds in headers for v in (ds.StudyInstanceUID, ds.SOPInstanceUID)]
    assert not any(u in message for u in [*uids, *(ds.AccessionNumber for ds in headers)])
    held = _raw_files(raw)
    assert len(held) == 8
    assert not [p for p in raw.rglob(".*")], "a partial file was left"
    assert not record.exists()  # written only by a run that completes
    for path in raw.rglob("*.dcm"):
        pydicom.dcmread(path)  # every file kept is complete

    orthanc.start()
    result = pull(params, raw, record, mapper=serial_mapper, env=env)
    assert result.retrieved == total - len(held)
    assert {k: v for k, v in _raw_files(raw).items() if k in held} == held
    assert json.loads(record.read_text())["instances"] == total
    labels = pd.read_csv(raw / "labels.csv")
    assert len(labels) == total and set(labels.label) <= set(CLASSES)

    # a study no longer labelled leaves the raw folder (the PACS keeps it); the record moves
    _labels_csv(data / "pacs_labels.csv", headers[1:], "AccessionNumber")
    again = pull(params, raw, record, mapper=serial_mapper, env=env)
    assert (again.retrieved, again.removed, again.record.instances) == (0, 1, total - 1)
    assert again.record.digest != result.record.digest


def test_non_pacs_source_writes_the_same_record_every_run(tmp_path):
    params = load_params(Path(__file__).resolve().parents[2] / "params.yaml")
    record = tmp_path / "pull.json"
    assert pull(params, tmp_path / "pacs", record) is None
    first = (record.read_bytes(), record.stat().st_mtime_ns)
    assert pull(params, tmp_path / "pacs", record) is None
    assert (record.read_bytes(), record.stat().st_mtime_ns) == first
    assert not (tmp_path / "pacs").exists()


def test_dask_flow_pulls_on_dask_workers_then_ingests(
    prefect_server, orthanc, tmp_path, monkeypatch: pytest.MonkeyPatch
):
    import yaml

    from medflow.orchestration.ingest_dask import dask_runner, ingest_dask

    headers = _publish(orthanc, tmp_path / "published", SynthParams(n_patients=8, seed=9))
    _labels_csv(tmp_path / "data" / "pacs_labels.csv", headers, "StudyInstanceUID")
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(
            {
                "data": {"source": "pacs"},
                "ingest": {"workers": 1, "shard_size": 6},
                "pacs": {"url": orthanc.dicomweb},
            }
        )
    )
    # the Dask workers read the credentials and the key from their environment
    for name, value in {**orthanc.env, "MEDFLOW_DEID_KEY": TEST_DEID_KEY}.items():
        monkeypatch.setenv(name, value)
    flow = ingest_dask.with_options(task_runner=dask_runner(n_workers=2))
    state = flow(root=str(tmp_path), return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["pulled"] == summary["n_images"] == len(headers)
    assert json.loads((tmp_path / "data" / "pull.json").read_text())["instances"] == len(headers)


def test_a_partly_held_series_is_listed_and_only_its_missing_instances_retrieved(orthanc, tmp_path):
    run_synth(SynthParams(n_patients=6, images_per_patient=1), CLASSES, tmp_path / "synth")
    files = sorted((tmp_path / "synth").glob("*/IM*"))[:4]
    series = [pydicom.dcmread(f) for f in files]
    for ds in series[1:]:  # one series of 4 instances
        ds.StudyInstanceUID, ds.SeriesInstanceUID = (
            series[0].StudyInstanceUID,
            series[0].SeriesInstanceUID,
        )
        for keyword in ("Modality", "PatientID", "PatientName", "PatientBirthDate"):
            setattr(ds, keyword, series[0].get(keyword))
    assert orthanc.store(series[:3]) == 3
    data = tmp_path / "data"
    series[0].label = "lesion"
    _labels_csv(data / "pacs_labels.csv", series[:1], "StudyInstanceUID")
    env = {**orthanc.env, "MEDFLOW_DEID_KEY": TEST_DEID_KEY}
    raw, record = data / "pacs", data / "pull.json"
    # no series filter: studies are planned whole, then series by series when part is held
    params = Params.model_validate({"data": {"source": "pacs"}, "pacs": {"url": orthanc.dicomweb}})
    assert pull(params, raw, record, mapper=serial_mapper, env=env).retrieved == 3
    orthanc.store(series[3:])  # a fourth instance arrives
    next(raw.rglob("*.dcm")).unlink()  # and one held file is lost
    held = _raw_files(raw)
    again = pull(params, raw, record, mapper=serial_mapper, env=env)
    assert (again.retrieved, again.record.instances) == (2, 4)
    assert {k: v for k, v in _raw_files(raw).items() if k in held} == held

    # a series filter: series-level retrieval, then the instances of a part-held series
    shutil.rmtree(raw)
    filters = {"Modality": series[0].Modality}
    params = params.model_copy(update={"pacs": params.pacs.model_copy(update={"filters": filters})})
    assert pull(params, raw, record, mapper=serial_mapper, env=env).retrieved == 4
    next(raw.rglob("*.dcm")).unlink()
    assert pull(params, raw, record, mapper=serial_mapper, env=env).retrieved == 1
    assert json.loads(record.read_text())["filters"] == filters
