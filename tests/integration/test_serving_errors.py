"""Every error code of docs/serving.md's table, produced over real HTTP by the Bento that the
session's `dvc repro` built (conftest.py `reproduced`), each from a real file or request of
the kind that causes it.

The cases are keyed by the codes read from the table: a documented code without a case fails
here, and so does a case whose code or status the table does not document, so the doc and the
service stay in step (tests/unit/test_docs.py compares the table with the service's source,
and README.md's summary with both). The two codes of a prediction log that is off or down
need servers configured so: tests/integration/test_serving_feedback.py gives them (ELSEWHERE).
One server: an API token, PNG/JPEG off, a 2 MB body limit, at most 4 files per batch and a
10 ms bound on the wait for the network, all set through the environment.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pydicom.examples
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import MPEG4HP41

from medflow.registry.infra_validation import InfraValidationFailed, RunningBento, serve_bento
from tests.helpers.docs import serving_error_table
from tests.helpers.shared_data import shared_data

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "serving-errors-token-not-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_UPLOAD = 2_000_000
MAX_BATCH = 4
SERVER_ENV = {
    "MEDFLOW_API_TOKEN": TOKEN,
    "MEDFLOW_SERVE_ALLOW_PNG_JPEG": "false",
    "MEDFLOW_SERVE_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
    "MEDFLOW_SERVE_MAX_BATCH_SIZE": str(MAX_BATCH),
    "MEDFLOW_SERVE_MAX_LATENCY_MS": "10",
}


DOCUMENTED = serving_error_table()
# Codes this server cannot give (its prediction log is on and reachable): produced over HTTP,
# against servers configured for them, by tests/integration/test_serving_feedback.py.
ELSEWHERE = {
    "prediction_log_off": "test_with_the_log_off_nothing_is_recorded",
    "prediction_log_unavailable": "test_a_database_that_cannot_be_reached_fails_no_prediction",
}


# ---------------------------------------------------------------------------- the files


def _ct(**changes: object) -> pydicom.Dataset:
    ds = pydicom.examples.ct  # MONOCHROME2 128 x 128 CT; a fresh copy each time
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


def _no_pixels() -> pydicom.Dataset:
    ds = _ct()
    del ds.PixelData
    return ds


def _short_pixel_data() -> pydicom.Dataset:
    ds = _ct()  # a complete file whose pixel data holds 1000 of the 32768 bytes claimed
    ds.PixelData = ds.PixelData[:1000]
    return ds


def _mpeg4_video() -> pydicom.Dataset:
    """A CT frame stored under an MPEG-4 transfer syntax: a video codec nothing decodes here."""
    ds = _ct()
    ds.file_meta.TransferSyntaxUID = MPEG4HP41
    ds.PixelData = encapsulate([bytes(4096)])
    ds["PixelData"].VR = "OB"
    return ds


def _sr() -> Path:
    return Path(pydicom.data.get_testdata_file("test-SR.dcm"))  # a Comprehensive SR document


def _seg() -> Path:
    return shared_data("dicom-seg/seg_image_ct_binary.dcm")  # a Segmentation object


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad_files")
    datasets = {
        "ct": _ct(),
        "no_pixels": _no_pixels(),
        "short_pixel_data": _short_pixel_data(),
        "hsv": _ct(PhotometricInterpretation="HSV"),
        "endoscopy": _ct(Modality="ES"),
        "two_samples": _ct(SamplesPerPixel=2),  # an implausible header
        "mpeg4": _mpeg4_video(),
        # a decompression bomb: 4096 x 4096 x 100 frames claimed, 32 kB of pixel data sent
        "bomb": _ct(Rows=4096, Columns=4096, NumberOfFrames=100),
    }
    paths = {}
    for name, ds in datasets.items():
        paths[name] = folder / f"{name}.dcm"
        ds.save_as(paths[name])
    ct = paths["ct"].read_bytes()
    paths["cut"] = folder / "cut.dcm"  # a Part-10 file cut off half-way (an aborted copy)
    paths["cut"].write_bytes(ct[: len(ct) // 2])
    paths["huge"] = folder / "huge.dcm"
    paths["huge"].write_bytes(ct + bytes(MAX_UPLOAD + 1_000_000))
    paths["empty"] = folder / "empty.dcm"
    paths["empty"].write_bytes(b"")
    paths["text"] = folder / "notes.txt"
    paths["text"].write_text("this is not an image\n")
    from PIL import Image

    paths["png"] = folder / "photo.png"
    pixels = np.random.default_rng(0).integers(0, 256, (48, 80), dtype=np.uint8)
    Image.fromarray(pixels).save(paths["png"])
    return paths


# ---------------------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def server(
    reproduced: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningBento]:
    """`bentoml serve` of the Bento the session's pipeline built, with SERVER_ENV."""
    repo, _ = reproduced
    bento_tag = json.loads((repo / "reports" / "bento.json").read_text())["bento_tag"]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MEDFLOW_SERVE_")}
    try:
        with serve_bento(
            bento_tag,
            workdir=tmp_path_factory.mktemp("serve_errors"),
            timeout=90,
            env={**environ, **SERVER_ENV},
        ) as running:
            yield running
    except InfraValidationFailed as exc:
        pytest.fail(str(exc))


# ---------------------------------------------------------------------------- the cases


def _upload(url: str, path: Path, headers: dict[str, str] | None = AUTH) -> httpx.Response:
    return httpx.post(
        f"{url}/predict",
        files={"file": (path.name, path.read_bytes())},
        headers=headers,
        timeout=30,
    )


def _file(name: str) -> Callable[[str, dict[str, Path]], httpx.Response]:
    return lambda url, files: _upload(url, files[name])


def _no_token(url: str, files: dict[str, Path]) -> httpx.Response:
    return _upload(url, files["ct"], headers=None)


def _seg_object(url: str, files: dict[str, Path]) -> httpx.Response:
    return _upload(url, _seg())


def _sr_document(url: str, files: dict[str, Path]) -> httpx.Response:
    return _upload(url, _sr())


def _segment_a_classifier(url: str, files: dict[str, Path]) -> httpx.Response:
    """/segment to the pipeline's Bento, a classifier's."""
    data = files["ct"].read_bytes()
    return httpx.post(f"{url}/segment", files={"file": ("x.dcm", data)}, headers=AUTH, timeout=30)


def _too_many(url: str, files: dict[str, Path]) -> httpx.Response:
    data = files["ct"].read_bytes()
    batch = [("files", (f"{i}.dcm", data)) for i in range(MAX_BATCH + 1)]
    return httpx.post(f"{url}/predict_batch", files=batch, headers=AUTH, timeout=30)


def _form(
    headers: dict[str, str] | None = None, **kwargs: object
) -> Callable[[str, dict[str, Path]], httpx.Response]:
    """A hand-made request to /predict (token added)."""
    return lambda url, files: httpx.post(
        f"{url}/predict", headers={**AUTH, **(headers or {})}, timeout=30, **kwargs
    )


def _feedback(
    headers: dict[str, str] | None = None, **kwargs: object
) -> Callable[[str, dict[str, Path]], httpx.Response]:
    """A request to /feedback (token added)."""
    return lambda url, files: httpx.post(
        f"{url}/feedback", headers={**AUTH, **(headers or {})}, timeout=30, **kwargs
    )


def _burst(url: str, files: dict[str, Path]) -> httpx.Response:
    """64 requests at once against a 10 ms bound on the wait for the network: some wait
    longer. Every answer is a prediction or a 503; the first 503 is the case's answer."""
    data = files["ct"].read_bytes()

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60, headers=AUTH) as client:
            return await asyncio.gather(
                *(client.post(f"{url}/predict", files={"file": ("x.dcm", data)}) for _ in range(64))
            )

    responses = asyncio.run(burst())
    codes = sorted({r.status_code for r in responses})
    assert set(codes) <= {200, 503}, [r.text for r in responses if r.status_code not in (200, 503)]
    refused = [r for r in responses if r.status_code == 503]
    assert refused, f"no request waited over 10 ms among 64 at once: {codes}"
    assert refused[0].headers["retry-after"] == "1"
    return refused[0]


UNKNOWN = {"prediction_id": "0" * 32, "label": 1}  # no prediction has this id


@dataclass(frozen=True)
class Case:
    what: str  # the input, as a reviewer would describe it
    send: Callable[[str, dict[str, Path]], httpx.Response]
    detail: str  # a part of the detail the client gets


# Keyed by the documented code; a code may have several real causes.
CASES: dict[str, list[Case]] = {
    "unauthorized": [Case("a DICOM upload without the bearer token", _no_token, "API token")],
    "upload_too_large": [
        Case("a 3 MB body (limit 2 MB)", _file("huge"), f"above the limit of {MAX_UPLOAD:,}")
    ],
    "image_too_large": [
        Case(
            "a header claiming 4096 x 4096 x 100 frames (a decompression bomb)",
            _file("bomb"),
            "4096 x 4096 pixels x 100 frame(s)",
        )
    ],
    "batch_size": [Case(f"{MAX_BATCH + 1} files to /predict_batch", _too_many, "")],
    "not_multipart": [Case("a JSON body", _form(json={"file": "x"}), "multipart/form-data")],
    "not_dicom": [Case("a text file", _file("text"), "not a DICOM file")],
    "png_jpeg_not_allowed": [Case("a PNG while PNG/JPEG is off", _file("png"), "not PNG")],
    "no_pixel_data": [Case("a CT without pixel data", _file("no_pixels"), "no pixel data")],
    "not_an_image": [
        Case("a structured report (pydicom's test-SR.dcm)", _sr_document, "SR Storage"),
        Case("a segmentation (../shared/data/dicom-seg)", _seg_object, "Segmentation Storage"),
    ],
    "unsupported_photometric": [
        Case("PhotometricInterpretation HSV", _file("hsv"), "PhotometricInterpretation 'HSV'")
    ],
    "unsupported_image": [
        Case("pixel data under an MPEG-4 transfer syntax", _file("mpeg4"), "no pixel decoder")
    ],
    "unsupported_modality": [Case("Modality ES (endoscopy)", _file("endoscopy"), "Modality 'ES'")],
    "undecodable_pixel_data": [
        Case("1000 bytes of pixel data for 128 x 128", _file("short_pixel_data"), "cannot decode")
    ],
    "invalid_image": [
        Case("a header with 2 samples per pixel", _file("two_samples"), "2 sample(s) per pixel")
    ],
    "empty_upload": [Case("a 0-byte file", _file("empty"), "empty")],
    "unreadable_dicom": [Case("a DICOM file cut off half-way", _file("cut"), "truncated file")],
    "unknown_field": [Case("the file in a field 'image'", _form(files={"image": b"x"}), "'image'")],
    "missing_field": [
        Case("only gradcam=true, no file", _form(files={"gradcam": (None, "true")}), "'file'")
    ],
    "bad_field": [Case("text where the file belongs", _form(files={"file": (None, "x")}), "file")],
    "malformed_multipart": [
        Case(
            "a multipart body without parts",
            _form(
                content=b"garbage--zzz",
                headers={"content-type": "multipart/form-data; boundary=zzz"},
            ),
            "does not parse",
        )
    ],
    "overloaded": [Case("64 requests at once, 10 ms bound on the wait", _burst, "max_latency_ms")],
    "wrong_task": [
        Case("a DICOM to /segment of a classifier's Bento", _segment_a_classifier, "POST /predict")
    ],
    "not_json": [Case("feedback as a form", _feedback(data={"label": "1"}), "application/json")],
    "malformed_json": [
        Case(
            "feedback that is not JSON",
            _feedback(content=b"{label", headers={"content-type": "application/json"}),
            "not JSON",
        )
    ],
    "unknown_prediction": [
        Case("feedback on an id never answered", _feedback(json=UNKNOWN), "no logged prediction")
    ],
    "unknown_label": [
        Case(
            "feedback with a label the model lacks",
            _feedback(json={**UNKNOWN, "label": "tumour"}),
            "class name or index",
        )
    ],
}


def _params() -> list:
    out = []
    for code in [c for c in DOCUMENTED if c not in ELSEWHERE]:
        for i, case in enumerate(CASES.get(code) or [None]):
            out.append(pytest.param(code, case, id=f"{code}-{i}"))
    return out


def _status_counts(url: str) -> dict[int, float]:
    """Requests counted per response status on the prediction routes, /segment included
    (BentoML's /metrics)."""
    counts: dict[int, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        routed = "/predict" in line or "/segment" in line or "/feedback" in line
        if not line.startswith("bentoml_service_request_total{") or not routed:
            continue
        status = re.search(r'response_code="(\d+)"', line)
        if status:
            code = int(status.group(1))
            counts[code] = counts.get(code, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


@pytest.mark.parametrize(("code", "case"), _params())
def test_documented_error_over_http(
    server: RunningBento, files: dict[str, Path], code: str, case: Case | None
) -> None:
    assert case is not None, f"docs/serving.md documents {code!r}, but no case here produces it"
    before = _status_counts(server.url)
    resp = case.send(server.url, files)

    assert resp.status_code == DOCUMENTED[code], (case.what, resp.text)
    assert resp.headers["content-type"].startswith("application/json"), resp.text
    body = resp.json()
    assert set(body) == {"error", "detail"}, body
    assert body["error"] == code, (case.what, body)
    assert case.detail in body["detail"], body
    if code != "overloaded":  # the one 5xx, and not the request's fault
        assert resp.status_code < 500

    # BentoML's metrics counted this status (so they would count a 500 too), and no 500 so far
    deadline = time.monotonic() + 10
    while (after := _status_counts(server.url)).get(resp.status_code, 0) <= before.get(
        resp.status_code, 0
    ):
        assert time.monotonic() < deadline, f"/metrics never counted the {resp.status_code}"
        time.sleep(0.05)
    assert not {s for s, n in after.items() if s >= 500 and n > 0} - {503}, after
    # and the server still answers
    assert _upload(server.url, files["ct"]).status_code == 200


def test_cases_and_table_name_the_same_codes() -> None:
    """Without a server: a documented code without a case (the test above fails for it too),
    or a case whose code the table lacks (the doc is behind)."""
    here = set(DOCUMENTED) - set(ELSEWHERE)
    assert sorted(here - set(CASES)) == [], "documented, but no case produces them"
    assert sorted(set(CASES) - here) == [], "produced here, but not documented (or elsewhere)"
    assert all(CASES.values()), "a code with an empty list of cases"
    assert set(ELSEWHERE) <= set(DOCUMENTED)
    feedback_tests = (Path(__file__).parent / "test_serving_feedback.py").read_text()
    for code, test in ELSEWHERE.items():
        assert f"def {test}(" in feedback_tests and f'"{code}"' in feedback_tests, code
