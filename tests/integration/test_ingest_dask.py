"""Ingest shards fanned out on a real local Dask cluster (2 workers) through Prefect."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from medflow.config import DataParams, DeidParams, IngestParams, PreprocessParams
from medflow.data.ingest import IngestConfig, run_ingest
from tests.helpers.deid_key import KEY


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medflow.config import SynthParams
    from medflow.data.synthetic import run_synth

    folder = tmp_path_factory.mktemp("dask") / "source"
    run_synth(SynthParams(n_patients=24, images_per_patient=2), ["normal", "lesion"], folder)
    return folder


def test_two_dask_workers_give_the_same_manifest_as_one_worker(
    prefect_server, source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medflow.orchestration.ingest_dask import dask_runner, ingest_dask

    params = {
        "data": {"source": str(source), "class_names": ["normal", "lesion"]},
        "ingest": {"workers": 1, "shard_size": 8},
    }
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    one = IngestConfig(
        DataParams(**params["data"]),
        IngestParams(**params["ingest"]),
        DeidParams(),
        PreprocessParams(),
    )
    serial = run_ingest(one, source, tmp_path / "serial", KEY)

    monkeypatch.setenv("MEDFLOW_DEID_KEY", KEY.decode())
    flow = ingest_dask.with_options(task_runner=dask_runner(n_workers=2))
    state = flow(
        root=str(tmp_path),
        source=str(source),
        out=str(tmp_path / "dask"),
        params_file=str(params_file),
        return_state=True,
    )
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["n_images"] == serial.n_images == 48
    assert summary["data_hash"] == serial.data_hash
    assert (tmp_path / "dask" / "manifest.csv").read_bytes() == (
        tmp_path / "serial" / "manifest.csv"
    ).read_bytes()
    images = sorted(p.name for p in (tmp_path / "dask" / "images").iterdir())
    assert images == sorted(p.name for p in (tmp_path / "serial" / "images").iterdir())
    shutil.rmtree(tmp_path / "dask")
