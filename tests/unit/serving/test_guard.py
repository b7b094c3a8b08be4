"""The guard middleware over ASGI: what it refuses, what it hands to the service, and that an
upload never touches the disk on the way."""

from __future__ import annotations

import asyncio
import tempfile

import httpx
import pytest
from starlette.responses import JSONResponse, Response

from medflow.serving.guard import Form, RequestGuard, Route

ROUTE = Route(
    fields=frozenset({"file", "gradcam"}), files=frozenset({"file"}), required=frozenset({"file"})
)


async def _downstream(scope: dict, receive, send) -> None:
    """Stands for BentoML's app: says that the request reached it."""
    await JSONResponse({"reached": "app"})(scope, receive, send)


def _post(guard: RequestGuard, **kwargs: object) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=guard)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.post("/predict", **kwargs)

    return asyncio.run(go())


def _guard(answer=None, max_body: int = 8 * 2**20, token_env: str = "MEDFLOW_TEST_TOKEN"):
    answerer = None if answer is None else lambda: answer
    return RequestGuard(_downstream, {"/predict": ROUTE}, token_env, max_body, answerer)


def test_a_checked_form_goes_to_answer_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """3 MiB is past the 1 MiB at which Starlette's parser spools a part to a temporary file."""

    def no_disk(*args: object, **kwargs: object) -> None:
        raise AssertionError("an upload was spooled to a temporary file")

    monkeypatch.setattr(tempfile, "TemporaryFile", no_disk)
    seen: list[Form] = []

    async def answer(path: str, form: Form) -> Response:
        seen.append(form)
        return JSONResponse({"path": path})

    upload = bytes(range(256)) * (3 * 2**12)
    resp = _post(_guard(answer), files={"file": ("x.dcm", upload)}, data={"gradcam": "true"})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"path": "/predict"}
    assert seen[0].files == {"file": [upload]}
    assert seen[0].values == {"gradcam": "true"}


def test_without_a_service_the_request_goes_on_to_the_app() -> None:
    not_yet = RequestGuard(
        _downstream, {"/predict": ROUTE}, "MEDFLOW_TEST_TOKEN", 2**20, lambda: None
    )
    for guard in (_guard(None), not_yet):
        resp = _post(guard, files={"file": ("x.dcm", b"DICM")})
        assert resp.json() == {"reached": "app"}


def test_refusals_never_reach_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    async def answer(path: str, form: Form) -> Response:
        raise AssertionError("a refused request reached the service")

    monkeypatch.setenv("MEDFLOW_TEST_TOKEN", "s3cret")
    guard = _guard(answer, max_body=4096)
    cases = {
        "unauthorized": _post(guard, files={"file": ("x.dcm", b"DICM")}),
        "upload_too_large": _post(
            guard,
            files={"file": ("x.dcm", bytes(8192))},
            headers={"Authorization": "Bearer s3cret"},
        ),
        "unknown_field": _post(
            guard, files={"image": ("x.dcm", b"DICM")}, headers={"Authorization": "Bearer s3cret"}
        ),
    }
    for code, resp in cases.items():
        assert 400 <= resp.status_code < 500, (code, resp.text)
        assert resp.json()["error"] == code


FEEDBACK = Route(
    fields=frozenset({"label", "prediction_id", "image_hash"}),
    files=frozenset(),
    required=frozenset({"label"}),
    json=True,
)


def _post_feedback(guard: RequestGuard, **kwargs: object) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=guard)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.post("/feedback", **kwargs)

    return asyncio.run(go())


def test_a_json_route_hands_the_object_to_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, Form]] = []

    async def answer(path: str, form: Form) -> Response:
        seen.append((path, form))
        return JSONResponse({"ok": True})

    monkeypatch.setenv("MEDFLOW_TEST_TOKEN", "s3cret")
    guard = RequestGuard(
        _downstream, {"/feedback": FEEDBACK}, "MEDFLOW_TEST_TOKEN", 4096, lambda: answer
    )
    body = {"prediction_id": "ab" * 16, "label": 1}
    resp = _post_feedback(guard, json=body, headers={"Authorization": "Bearer s3cret"})
    assert resp.status_code == 200, resp.text
    assert seen == [("/feedback", Form({}, body, accept="*/*"))]
    assert _post_feedback(guard, json=body).status_code == 401  # the same token as /predict


@pytest.mark.parametrize(
    ("request_kwargs", "status", "code"),
    [
        ({"files": {"label": (None, "1")}}, 415, "not_json"),
        (
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            400,
            "malformed_json",
        ),
        (
            {"content": b"\xff\xfe", "headers": {"content-type": "application/json"}},
            400,
            "malformed_json",
        ),
        ({"json": ["label", 1]}, 400, "malformed_json"),
        (
            {"content": b"[" * 3000, "headers": {"content-type": "application/json"}},
            400,
            "malformed_json",
        ),
        ({"json": {"label": 1, "patient": "x"}}, 400, "unknown_field"),
        ({"json": {"prediction_id": "x"}}, 400, "missing_field"),
        ({"json": {"label": "x" * 5000}}, 413, "upload_too_large"),
    ],
)
def test_a_bad_json_body_is_refused_before_the_service(
    request_kwargs: dict, status: int, code: str
) -> None:
    async def answer(path: str, form: Form) -> Response:
        raise AssertionError("a refused request reached the service")

    guard = RequestGuard(
        _downstream, {"/feedback": FEEDBACK}, "MEDFLOW_TEST_TOKEN", 4096, lambda: answer
    )
    resp = _post_feedback(guard, **request_kwargs)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"] == code
