"""The package stage and the built Bento, for real: model store, `bentoml build`, and
`bentoml serve <bento>` in a subprocess answering HTTP requests with real DICOM files.

BENTOML_HOME is a per-session temp folder (tests/conftest.py).
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pydicom.examples
import pytest

from medflow.config import PackageParams, PreprocessParams
from medflow.errors import GateFailed
from medflow.models.artifact import ModelSpec, save_model
from medflow.models.net import SmallCNN
from medflow.package import PackageResult, run_package
from medflow.serving.service import decide

ROOT = Path(__file__).resolve().parents[2]
PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "MRN-0042-SECRET"
# Clients name files after patients; the name must not reach logs or responses.
UPLOAD_NAME = "Doe_Jane_MRN-0042-SECRET.dcm"


@dataclass(frozen=True)
class Packaged:
    served: PackageResult  # the Bento under test
    newer: PackageResult  # packaged afterwards: the store's "latest" model, not to be served
    out_file: Path


def _package(tmp: Path, class_names: list[str], data_hash: str) -> tuple[PackageResult, Path]:
    model_dir = tmp / "model"
    spec = ModelSpec(
        architecture="SmallCNN",
        in_channels=1,
        num_classes=len(class_names),
        width=8,
        dropout=0.1,
        class_names=class_names,
        preprocess=PreprocessParams(image_size=32).model_dump(),
        provenance={"data_hash": data_hash, "git_rev": None},
    )
    save_model(model_dir, SmallCNN(1, len(class_names), width=8), spec)
    # As evaluate writes it; package serves the threshold evaluated (and gated), not model.json's.
    metrics = {"auroc": 0.91, "sensitivity": 0.8, "threshold": 0.3, "n_test": 40}
    (tmp / "metrics.json").write_text(json.dumps(metrics))
    (tmp / "gate.json").write_text(json.dumps({"passed": True, "failures": []}))
    out_file = tmp / "package.json"
    result = run_package(
        PackageParams(),
        model_dir=model_dir,
        metrics_file=tmp / "metrics.json",
        gate_file=tmp / "gate.json",
        project_root=ROOT,
        out_file=out_file,
    )
    return result, out_file


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> Packaged:
    served, out_file = _package(tmp_path_factory.mktemp("pkg_a"), ["normal", "lesion"], "a" * 64)
    newer, _ = _package(tmp_path_factory.mktemp("pkg_b"), ["benign", "malignant"], "b" * 64)
    return Packaged(served=served, newer=newer, out_file=out_file)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Server:
    url: str
    log: Path


@pytest.fixture(scope="module")
def server(packaged: Packaged, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`bentoml serve <bento tag>` of the first Bento, in its own process group."""
    workdir = tmp_path_factory.mktemp("serve")  # not the repo: serve puts its cwd on sys.path
    log = workdir / "server.log"
    port = _free_port()
    cmd = [sys.executable, "-m", "bentoml", "serve", packaged.served.bento_tag]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            cmd, cwd=workdir, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"bentoml serve exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"bento not ready after 60 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield Server(url=url, log=log)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def dicoms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("dicom")
    ct = pydicom.examples.ct  # MONOCHROME2, 128x128, with a file window
    ct.PatientName, ct.PatientID = PATIENT_NAME, PATIENT_ID
    rgb = pydicom.examples.rgb_color  # RGB, 240x320
    no_pixels = pydicom.examples.ct
    del no_pixels.PixelData
    truncated = pydicom.examples.ct
    truncated.PixelData = truncated.PixelData[:1000]
    files = {"ct": ct, "rgb": rgb, "no_pixels": no_pixels, "truncated": truncated}
    paths = {}
    for name, ds in files.items():
        paths[name] = folder / name / UPLOAD_NAME
        paths[name].parent.mkdir()
        ds.save_as(paths[name])
    paths["text"] = folder / "notes.txt"
    paths["text"].write_text("this is not an image\n")
    return paths


def _post(server: Server, path: Path) -> httpx.Response:
    with path.open("rb") as fh:
        return httpx.post(f"{server.url}/predict", files={"file": (path.name, fh)}, timeout=30)


def _error(resp: httpx.Response) -> str:
    body = resp.json()
    # BentoML 1.4.39 wraps client errors in a one-element list: [{"error": "..."}]
    if isinstance(body, list) and len(body) == 1:
        body = body[0]
    return body["error"]


def test_package_pins_its_model_and_records_it(packaged: Packaged) -> None:
    out = json.loads(packaged.out_file.read_text())
    assert out["model_tag"] == packaged.served.model_tag
    assert out["bento_tag"] == packaged.served.bento_tag
    assert out["serve"] == f"bentoml serve {packaged.served.bento_tag}"
    assert packaged.served.model_tag != packaged.newer.model_tag

    info = json.loads(
        subprocess.run(
            [sys.executable, "-m", "bentoml", "get", packaged.served.bento_tag, "-o", "json"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    models = [m["tag"] for svc in info["services"] for m in svc["models"]] + info["models"]
    assert models == [packaged.served.model_tag]
    assert info["args"] == {"model_tag": packaged.served.model_tag}

    import bentoml

    stored = bentoml.models.get(packaged.served.model_tag)
    assert sorted(p.name for p in Path(stored.path).iterdir() if p.suffix != ".yaml") == [
        "model.json",
        "model.pt",
    ]
    meta = stored.info.metadata
    assert meta["metrics"] == {"auroc": 0.91, "sensitivity": 0.8, "threshold": 0.3, "n_test": 40}
    assert json.loads((Path(stored.path) / "model.json").read_text())["threshold"] == 0.3
    assert meta["data_hash"] == "a" * 64
    assert meta["gate"]["passed"] is True
    assert meta["spec"]["class_names"] == ["normal", "lesion"]


def test_bento_holds_only_serving_code(packaged: Packaged) -> None:
    import bentoml

    src = Path(bentoml.get(packaged.served.bento_tag).path) / "src"
    files = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    assert "bentofile.yaml" in files
    code = [f for f in files if f != "bentofile.yaml"]
    assert code and all(f.startswith("medflow/") and f.endswith(".py") for f in code), files
    for forbidden in ("medflow/train.py", "medflow/package.py", "medflow/cli.py"):
        assert forbidden not in files

    # Load the Bento as `bentoml serve` does and check that every medflow module comes from
    # the Bento, not from the editable install (a missing `include` fails the import here).
    probe = (
        "import bentoml, json, sys; bentoml.load(sys.argv[1]);"
        " print(json.dumps({m: sys.modules[m].__file__ for m in sys.modules"
        " if m.split('.')[0] == 'medflow'}))"
    )
    loaded = json.loads(
        subprocess.run(
            [sys.executable, "-c", probe, packaged.served.bento_tag],
            cwd=src.parent.parent,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.splitlines()[-1]
    )
    assert "medflow.serving.service" in loaded
    outside = {m: f for m, f in loaded.items() if not Path(f).is_relative_to(src)}
    assert not outside, f"served from outside the Bento: {outside}; add them to include"


@pytest.mark.parametrize("name", ["ct", "rgb"])
def test_predict_dicom(server: Server, packaged: Packaged, dicoms: dict[str, Path], name: str):
    resp = _post(server, dicoms[name])
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {
        "label",
        "label_index",
        "probabilities",
        "threshold",
        "model_tag",
        "preprocessing",
    }
    # The first Bento serves its own model, although a newer one is now "latest".
    assert body["model_tag"] == packaged.served.model_tag
    assert list(body["probabilities"]) == ["normal", "lesion"]
    assert math.isclose(sum(body["probabilities"].values()), 1.0, abs_tol=1e-5)
    assert body["threshold"] == 0.3
    expected = int(body["probabilities"]["lesion"] >= 0.3)
    assert (body["label_index"], body["label"]) == (expected, ["normal", "lesion"][expected])
    pre = body["preprocessing"]
    assert pre["output_size"] == 32
    assert pre["photometric"] == ("MONOCHROME2" if name == "ct" else "RGB")
    assert pre["original_shape"] == ([128, 128] if name == "ct" else [240, 320])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("text", "not a DICOM file"),
        ("no_pixels", "no pixel data"),
        ("truncated", "cannot decode pixel data"),
    ],
)
def test_bad_upload_is_a_client_error(
    server: Server, dicoms: dict[str, Path], name: str, expected: str
) -> None:
    resp = _post(server, dicoms[name])
    assert resp.status_code == 400, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    message = _error(resp)
    assert expected in message
    assert "DICOM" in message
    # and the server still answers
    assert _post(server, dicoms["ct"]).status_code == 200


def test_no_patient_identifiers_leave_the_server(server: Server, dicoms: dict[str, Path]):
    resp = _post(server, dicoms["ct"])
    bad = _post(server, dicoms["no_pixels"])
    ds = pydicom.dcmread(dicoms["ct"])
    secrets = [PATIENT_NAME, PATIENT_ID, "Doe_Jane", ds.SOPInstanceUID, ds.StudyInstanceUID]
    time.sleep(0.5)  # let the server flush its log
    log = server.log.read_text(errors="replace")
    for secret in secrets:
        assert secret not in resp.text
        assert secret not in bad.text
        assert secret not in log, f"{secret!r} in the server log"


def test_failed_gate_builds_nothing(tmp_path: Path, packaged: Packaged) -> None:
    import bentoml

    before = (len(bentoml.models.list()), len(bentoml.list()))
    save_model(
        tmp_path / "model",
        SmallCNN(1, 2, width=8),
        ModelSpec("SmallCNN", 1, 2, 8, 0.1, ["normal", "lesion"], PreprocessParams().model_dump()),
    )
    (tmp_path / "metrics.json").write_text(json.dumps({"auroc": 0.6}))
    gate = {"passed": False, "failures": ["auroc 0.600 < min_auroc 0.850"]}
    (tmp_path / "gate.json").write_text(json.dumps(gate))
    with pytest.raises(GateFailed, match="auroc 0.600 < min_auroc 0.850"):
        run_package(
            PackageParams(),
            tmp_path / "model",
            tmp_path / "metrics.json",
            tmp_path / "gate.json",
            ROOT,
            tmp_path / "package.json",
        )
    assert (len(bentoml.models.list()), len(bentoml.list())) == before
    assert not (tmp_path / "package.json").exists()


def test_decide() -> None:
    assert decide([0.75, 0.25], threshold=0.3) == 0
    assert decide([0.7, 0.3], threshold=0.3) == 1  # at the threshold: positive
    assert decide([0.1, 0.9], threshold=0.95) == 0
    assert decide([0.2, 0.5, 0.3], threshold=0.9) == 1  # multi-class: argmax


def test_failed_build_leaves_no_model_behind(tmp_path: Path, packaged: Packaged) -> None:
    import bentoml

    root = tmp_path / "project"
    (root / "deploy").mkdir(parents=True)
    (root / "src").mkdir()
    (root / "deploy" / "bentofile.yaml").write_text(
        (ROOT / "deploy" / "bentofile.yaml")
        .read_text()
        .replace("medflow.serving.service:", "medflow.serving.no_such_module:")
    )
    save_model(
        tmp_path / "model",
        SmallCNN(1, 2, width=8),
        ModelSpec("SmallCNN", 1, 2, 8, 0.1, ["normal", "lesion"], PreprocessParams().model_dump()),
    )
    (tmp_path / "metrics.json").write_text(json.dumps({"auroc": 0.9}))
    (tmp_path / "gate.json").write_text(json.dumps({"passed": True, "failures": []}))
    before = sorted(str(m.tag) for m in bentoml.models.list())
    with pytest.raises(Exception, match="no_such_module"):
        run_package(
            PackageParams(),
            tmp_path / "model",
            tmp_path / "metrics.json",
            tmp_path / "gate.json",
            root,
            tmp_path / "package.json",
        )
    assert sorted(str(m.tag) for m in bentoml.models.list()) == before
    assert not (tmp_path / "package.json").exists()
