"""The package stage and the built Bento, for real: model store, `bentoml serve <bento>` in a
subprocess answering HTTP requests with real DICOM files. Two servers in all: the Bento with
the default settings for most cases, and the same Bento with an API token and PNG/JPEG
switched off through the environment. The network is untrained (its answers are checked
against the packaged network run here, in process); that the Bento of a trained pipeline
answers what evaluate scored is tests/integration/test_served_model.py. Each test can run
alone and in any order.

BENTOML_HOME is a per-session temp folder (tests/conftest.py).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pydicom.examples
import pytest

from medflow.config import PackageParams, PreprocessParams, ServeParams
from medflow.errors import GateFailed
from medflow.imaging.preprocess import preprocess_file
from medflow.models.artifact import ModelSpec, load_model, save_model
from medflow.models.net import SmallCNN
from medflow.registry.infra_validation import InfraValidationFailed, RunningBento, serve_bento
from medflow.registry.packaging import PackageResult, run_package
from medflow.serving.service import decide
from tests.helpers.handoffs import metrics_values, write_evaluated

ROOT = Path(__file__).resolve().parents[2]
PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "MRN-0042-SECRET"
# Clients name files after patients; the name must not reach logs or responses.
UPLOAD_NAME = "Doe_Jane_MRN-0042-SECRET.dcm"
# The served Bento's settings: small enough to test the upload limit with a 3 MB body.
SERVE = ServeParams(allow_png_jpeg=True, max_upload_bytes=2_000_000, max_batch_size=4)
TOKEN = "test-token-not-secret"

# As evaluate writes it; package serves the threshold evaluated (and gated), not model.json's.
EVALUATED = {"auroc": 0.91, "sensitivity": 0.8, "threshold": 0.3, "n_test": 40}


@dataclass(frozen=True)
class Packaged:
    served: PackageResult  # the Bento under test
    newer: PackageResult  # packaged afterwards: the store's "latest" model, not to be served
    out_file: Path


def _package(
    tmp: Path, class_names: list[str], data_hash: str, serve: ServeParams = SERVE
) -> tuple[PackageResult, Path]:
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
    write_evaluated(tmp, **EVALUATED)
    out_file = tmp / "package.json"
    result = run_package(
        PackageParams(serve=serve),
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


Server = RunningBento  # url, pid, log


@contextlib.contextmanager
def _serve(bento_tag: str, workdir: Path, env: dict[str, str] | None = None) -> Iterator[Server]:
    """`bentoml serve <bento tag>` (medflow.registry.infra_validation.serve_bento: its own process
    group, ready on entry), without the caller's MEDFLOW_SERVE_* or API token, plus `env`."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MEDFLOW_SERVE_")}
    environ.pop(SERVE.api_token_env, None)
    try:
        with serve_bento(
            bento_tag, workdir=workdir, timeout=90, env={**environ, **(env or {})}
        ) as running:
            yield running
    except InfraValidationFailed as exc:  # did not start: the test's failure, with the log
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def server(packaged: Packaged, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The first Bento as built: no API token, PNG/JPEG allowed (SERVE)."""
    with _serve(packaged.served.bento_tag, tmp_path_factory.mktemp("serve")) as srv:
        yield srv


@pytest.fixture(scope="module")
def auth_server(packaged: Packaged, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The same Bento with an API token, PNG/JPEG switched off and a 10 ms bound on the wait
    for the network, by the environment."""
    env = {
        SERVE.api_token_env: TOKEN,
        "MEDFLOW_SERVE_ALLOW_PNG_JPEG": "false",
        "MEDFLOW_SERVE_MAX_LATENCY_MS": "10",
    }
    with _serve(packaged.served.bento_tag, tmp_path_factory.mktemp("serve_auth"), env) as srv:
        yield srv


@pytest.fixture(scope="module")
def dicoms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real files, every one named after the patient, as clients do."""
    folder = tmp_path_factory.mktemp("dicom")

    def ct(**changes: object) -> pydicom.Dataset:
        ds = pydicom.examples.ct  # MONOCHROME2, 128x128, with a file window; a fresh copy
        ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        return ds

    no_pixels = ct()
    del no_pixels.PixelData
    truncated = ct()
    truncated.PixelData = truncated.PixelData[:1000]
    files = {
        "ct": ct(),
        "rgb": pydicom.examples.rgb_color,  # RGB, 240x320, Modality US
        "no_pixels": no_pixels,
        "truncated": truncated,
        "hsv": ct(PhotometricInterpretation="HSV"),
        "endoscopy": ct(Modality="ES"),
        # a decompression bomb: 4096 x 4096 x 100 frames claimed, 32 kB of pixel data sent
        "bomb": ct(Rows=4096, Columns=4096, NumberOfFrames=100),
    }
    paths = {}
    for name, ds in files.items():
        paths[name] = folder / name / UPLOAD_NAME
        paths[name].parent.mkdir()
        ds.save_as(paths[name])
    paths["text"] = folder / "notes.txt"
    paths["text"].write_text("this is not an image\n")
    paths["huge"] = folder / "huge" / UPLOAD_NAME
    paths["huge"].parent.mkdir()
    paths["huge"].write_bytes(paths["ct"].read_bytes() + bytes(3_000_000))
    from PIL import Image

    rng = np.random.default_rng(0)
    paths["png"] = folder / "image.png"
    Image.fromarray(rng.integers(0, 256, (48, 80), dtype=np.uint8)).save(paths["png"])
    paths["jpeg"] = folder / "image.jpg"
    Image.fromarray(rng.integers(0, 256, (60, 40, 3), dtype=np.uint8)).save(paths["jpeg"])
    return paths


def _post(
    server: Server,
    path: Path,
    headers: dict[str, str] | None = None,
    **form: str,
) -> httpx.Response:
    with path.open("rb") as fh:
        return httpx.post(
            f"{server.url}/predict",
            files={"file": (path.name, fh)},
            data=form,
            headers=headers,
            timeout=30,
        )


def _post_batch(server: Server, paths: list[Path]) -> httpx.Response:
    files = [("files", (p.name, p.read_bytes())) for p in paths]
    return httpx.post(f"{server.url}/predict_batch", files=files, timeout=30)


def _error(resp: httpx.Response) -> dict[str, str]:
    assert resp.headers["content-type"].startswith("application/json"), resp.text
    body = resp.json()
    assert set(body) == {"error", "detail"}, body
    return body


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
    # One service (the network runs in its workers), referencing the one model, and only it.
    assert [svc["name"] for svc in info["services"]] == ["medflow"]
    models = {m["tag"] for svc in info["services"] for m in svc["models"]} | set(info["models"])
    assert models == {packaged.served.model_tag}
    assert info["args"] == {"model_tag": packaged.served.model_tag, "serve": SERVE.model_dump()}

    import bentoml

    stored = bentoml.models.get(packaged.served.model_tag)
    assert sorted(p.name for p in Path(stored.path).iterdir() if p.suffix != ".yaml") == [
        "model.json",
        "model.pt",
    ]
    meta = stored.info.metadata
    assert meta["metrics"] == metrics_values(**EVALUATED)
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
    # only the layers the service imports (imaging, models' artifact and nets, serving)
    forbidden = ("cli", "orchestration", "stages", "evaluation", "registry", "data", "validation")
    assert not [f for f in code if f.split("/")[1] in forbidden], files
    assert "medflow/models/training.py" not in files

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


PREDICTION_KEYS = {
    "label",
    "label_index",
    "probabilities",
    "threshold",
    "model_tag",
    "model_name",
    "model_version",
    "input_format",
    "preprocessing",
    "gradcam_png",
    "prediction_id",  # the prediction log (tests/integration/test_serving_feedback.py)
    "image_hash",
}


def _check_prediction(body: dict, packaged: Packaged) -> None:
    assert set(body) == PREDICTION_KEYS
    # The first Bento serves its own model, although a newer one is now "latest".
    assert body["model_tag"] == packaged.served.model_tag
    assert f"{body['model_name']}:{body['model_version']}" == packaged.served.model_tag
    assert list(body["probabilities"]) == ["normal", "lesion"]
    assert math.isclose(sum(body["probabilities"].values()), 1.0, abs_tol=1e-5)
    assert body["threshold"] == 0.3
    expected = int(body["probabilities"]["lesion"] >= 0.3)
    assert (body["label_index"], body["label"]) == (expected, ["normal", "lesion"][expected])
    assert body["preprocessing"]["output_size"] == 32


def _computed_here(model_tag: str, path: Path) -> list[float]:
    """The packaged network of the model store, run in this process on `path` preprocessed
    by medflow.imaging.preprocess: what the Bento must answer."""
    import bentoml
    import torch

    net, spec = load_model(Path(bentoml.models.get(model_tag).path))
    x = torch.from_numpy(preprocess_file(path, spec.preprocess_params))[None]
    with torch.no_grad():
        return net(x).softmax(-1)[0].tolist()


@pytest.mark.parametrize("name", ["ct", "rgb"])
def test_predict_dicom(server: Server, packaged: Packaged, dicoms: dict[str, Path], name: str):
    resp = _post(server, dicoms[name])
    assert resp.status_code == 200, resp.text
    body = resp.json()
    _check_prediction(body, packaged)
    served = list(body["probabilities"].values())
    assert served == pytest.approx(
        _computed_here(packaged.served.model_tag, dicoms[name]), abs=1e-5
    )
    assert body["input_format"] == "dicom"
    assert body["gradcam_png"] is None  # not asked for
    pre = body["preprocessing"]
    assert pre["photometric"] == ("MONOCHROME2" if name == "ct" else "RGB")
    assert pre["original_shape"] == ([128, 128] if name == "ct" else [240, 320])
    assert (pre["frames_in_file"], pre["frame_used"]) == (1, 0)
    assert pre["window"]


def test_bentoml_python_client(server: Server, packaged: Packaged, dicoms: dict[str, Path]):
    """BentoML's own client shapes its requests from the APIs' schema; the guard answers them."""
    import bentoml

    with bentoml.SyncHTTPClient(server.url, timeout=30) as client:
        one = client.predict(file=dicoms["ct"])
        two = client.predict_batch(files=[dicoms["ct"], dicoms["rgb"]], gradcam=True)
    _check_prediction(one, packaged)
    assert one["gradcam_png"] is None
    assert len(two) == 2
    for body in two:
        _check_prediction(body, packaged)
        assert base64.b64decode(body["gradcam_png"]).startswith(b"\x89PNG")
    assert two[0]["probabilities"] == one["probabilities"]


@pytest.mark.parametrize(("name", "shape"), [("png", [48, 80]), ("jpeg", [60, 40])])
def test_png_jpeg_when_allowed(
    server: Server, packaged: Packaged, dicoms: dict[str, Path], name: str, shape: list[int]
) -> None:
    resp = _post(server, dicoms[name])
    assert resp.status_code == 200, resp.text
    body = resp.json()
    _check_prediction(body, packaged)
    assert body["input_format"] == name
    assert body["preprocessing"]["original_shape"] == shape


def test_predict_batch_of_three(server: Server, packaged: Packaged, dicoms: dict[str, Path]):
    resp = _post_batch(server, [dicoms["ct"], dicoms["rgb"], dicoms["ct"]])
    assert resp.status_code == 200, resp.text
    bodies = resp.json()
    assert len(bodies) == 3
    for body in bodies:
        _check_prediction(body, packaged)
    photometric = [b["preprocessing"]["photometric"] for b in bodies]
    assert photometric == ["MONOCHROME2", "RGB", "MONOCHROME2"]
    # the same image gives the same answer, batched or not
    single = _post(server, dicoms["ct"]).json()["probabilities"]
    for got in (bodies[0]["probabilities"], bodies[2]["probabilities"]):
        assert got == pytest.approx(single, abs=1e-5)


def test_batch_refuses_a_bad_file_naming_it(server: Server, dicoms: dict[str, Path]) -> None:
    resp = _post_batch(server, [dicoms["ct"], dicoms["hsv"], dicoms["ct"]])
    assert resp.status_code == 422
    error = _error(resp)
    assert error["error"] == "unsupported_photometric"
    assert error["detail"].startswith("file 2 of 3:")
    too_many = _post_batch(server, [dicoms["ct"]] * (SERVE.max_batch_size + 1))
    assert too_many.status_code == 413
    assert _error(too_many)["error"] == "batch_size"


def test_gradcam_on_request(server: Server, dicoms: dict[str, Path]) -> None:
    resp = _post(server, dicoms["ct"], gradcam="true")
    assert resp.status_code == 200, resp.text
    png = base64.b64decode(resp.json()["gradcam_png"])
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        assert (im.format, im.mode, im.size) == ("PNG", "RGB", (32, 32))


@pytest.mark.parametrize(
    ("name", "status", "error", "expected"),
    [
        ("text", 415, "not_dicom", "not a DICOM file"),
        ("no_pixels", 422, "no_pixel_data", "no pixel data"),
        ("truncated", 422, "undecodable_pixel_data", "cannot decode pixel data"),
        ("hsv", 422, "unsupported_photometric", "PhotometricInterpretation 'HSV'"),
        ("endoscopy", 422, "unsupported_modality", "Modality 'ES'"),
        ("bomb", 413, "image_too_large", "4096 x 4096 pixels x 100 frame(s)"),
        ("huge", 413, "upload_too_large", "above the limit of 2,000,000"),
    ],
)
def test_bad_upload_is_a_client_error(
    server: Server, dicoms: dict[str, Path], name: str, status: int, error: str, expected: str
) -> None:
    resp = _post(server, dicoms[name])
    assert resp.status_code == status, resp.text
    body = _error(resp)
    assert body["error"] == error
    assert expected in body["detail"]
    # and the server still answers
    assert _post(server, dicoms["ct"]).status_code == 200


def test_malformed_requests_are_client_errors(server: Server, dicoms: dict[str, Path]) -> None:
    """BentoML's own parsing answers 500 to these; the guard refuses them first."""
    url = f"{server.url}/predict"
    cases = {
        "unknown_field": httpx.post(url, files={"image": dicoms["ct"].read_bytes()}),
        "bad_field": httpx.post(url, files={"file": (None, "not a file")}),
        "missing_field": httpx.post(url, files={"gradcam": (None, "true")}),
        "not_multipart": httpx.post(url, json={"file": "x"}),
        "malformed_multipart": httpx.post(
            url,
            content=b"garbage--zzz",
            headers={"content-type": "multipart/form-data; boundary=zzz"},
        ),
    }
    for error, resp in cases.items():
        assert 400 <= resp.status_code < 500, (error, resp.text)
        assert _error(resp)["error"] == error
    assert _post(server, dicoms["ct"]).status_code == 200


def test_form_values_are_checked(server: Server, dicoms: dict[str, Path]) -> None:
    """Two files to /predict, or a gradcam flag that is not a boolean: 400s naming the field."""
    url, data = f"{server.url}/predict", dicoms["ct"].read_bytes()
    cases = {
        "two files": httpx.post(url, files=[("file", data), ("file", data)]),
        "gradcam=maybe": httpx.post(url, files={"file": data}, data={"gradcam": "maybe"}),
    }
    for case, resp in cases.items():
        assert resp.status_code == 400, (case, resp.text)
        assert _error(resp)["error"] == "bad_field", case
    assert _post(server, dicoms["ct"], gradcam="0").json()["gradcam_png"] is None


def test_health_and_metrics_answer(server: Server, dicoms: dict[str, Path]) -> None:
    assert _post(server, dicoms["ct"]).status_code == 200  # a prediction the metrics count
    for path in ("/healthz", "/livez", "/readyz", "/metrics"):
        assert httpx.get(f"{server.url}{path}", timeout=10).status_code == 200, path
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    # BentoML's request metrics, predictions among them
    served = r'bentoml_service_request_total\{[^}]*endpoint="/predict"[^}]*response_code="200"'
    assert re.search(served, metrics), metrics[:3000]


def _logged_requests(server: Server) -> int:
    """Requests to the prediction routes in the server's (access) log so far."""
    return len(re.findall(r"path=/predict", server.log.read_text(errors="replace")))


def test_no_patient_identifiers_leave_the_server(server: Server, dicoms: dict[str, Path]):
    """Good and bad uploads named after the patient, then the server's log read once it
    shows them all (polled with a deadline: a log not yet flushed would prove nothing)."""
    before = _logged_requests(server)
    resp = _post(server, dicoms["ct"], gradcam="true")
    bad = _post(server, dicoms["no_pixels"])
    others = [_post(server, dicoms[n]) for n in ("text", "truncated", "hsv", "rgb")]
    batch = _post_batch(server, [dicoms["ct"], dicoms["rgb"]])
    assert batch.status_code == 200 and resp.status_code == 200
    ds = pydicom.dcmread(dicoms["ct"])
    secrets = [PATIENT_NAME, PATIENT_ID, "Doe_Jane", ds.SOPInstanceUID, ds.StudyInstanceUID]
    deadline = time.monotonic() + 30
    while _logged_requests(server) < before + 7:
        assert time.monotonic() < deadline, "the server log does not show the requests"
        time.sleep(0.1)
    log = server.log.read_text(errors="replace")
    for answer in others:
        for secret in secrets:
            assert secret not in answer.text
    for secret in secrets:
        assert secret not in resp.text
        assert secret not in bad.text
        assert secret not in log, f"{secret!r} in the server log"
    assert "Traceback" not in log, "a request raised in the server"
    errors = [
        line
        for line in httpx.get(f"{server.url}/metrics").text.splitlines()
        if line.startswith("bentoml_service_request_total")
        and 'http_response_code="500"' in line
        and float(line.rsplit(" ", 1)[1]) > 0
    ]
    assert not errors, errors


def test_token_required_when_set(auth_server: Server, dicoms: dict[str, Path]) -> None:
    for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        resp = _post(auth_server, dicoms["ct"], headers=headers)
        assert resp.status_code == 401, resp.text
        assert _error(resp)["error"] == "unauthorized"
        assert resp.headers["www-authenticate"] == "Bearer"
        assert TOKEN not in resp.text
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert _post(auth_server, dicoms["ct"], headers=auth).status_code == 200
    # health stays open
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(f"{auth_server.url}{path}", timeout=10).status_code == 200, path
    # MEDFLOW_SERVE_ALLOW_PNG_JPEG=false overrode the Bento's setting
    png = _post(auth_server, dicoms["png"], headers=auth)
    assert png.status_code == 415
    assert _error(png)["error"] == "png_jpeg_not_allowed"


def test_overload_is_a_503_and_the_server_recovers(
    auth_server: Server, dicoms: dict[str, Path]
) -> None:
    """48 requests at once against max_latency_ms 10: those that waited longer for the network
    get 503 `overloaded` with Retry-After, the rest their prediction; then a lone request is
    served again."""
    import asyncio

    auth = {"Authorization": f"Bearer {TOKEN}"}
    data = dicoms["ct"].read_bytes()

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60, headers=auth) as client:
            return await asyncio.gather(
                *(
                    client.post(f"{auth_server.url}/predict", files={"file": ("x.dcm", data)})
                    for _ in range(48)
                )
            )

    responses = asyncio.run(burst())
    codes = sorted({r.status_code for r in responses})
    assert set(codes) <= {200, 503}, [r.text for r in responses if r.status_code not in (200, 503)]
    refused = [r for r in responses if r.status_code == 503]
    assert refused, f"no request waited over 10 ms among 48 at once: {codes}"
    assert _error(refused[0])["error"] == "overloaded"
    assert "above max_latency_ms 10" in _error(refused[0])["detail"]
    assert refused[0].headers["retry-after"] == "1"
    assert _post(auth_server, dicoms["ct"], headers=auth).status_code == 200


def test_failed_gate_builds_nothing(tmp_path: Path, packaged: Packaged) -> None:
    import bentoml

    before = (len(bentoml.models.list()), len(bentoml.list()))
    save_model(
        tmp_path / "model",
        SmallCNN(1, 2, width=8),
        ModelSpec("SmallCNN", 1, 2, 8, 0.1, ["normal", "lesion"], PreprocessParams().model_dump()),
    )
    write_evaluated(tmp_path, failures=["auroc 0.600 < min_auroc 0.850"], auroc=0.6)
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
    write_evaluated(tmp_path)
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
