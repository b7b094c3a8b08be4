"""The PACS client: credentials from the environment, errors that name the server only."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator

import pytest

from medflow.config import PacsParams
from medflow.errors import PacsError
from medflow.pacs.client import call, connect, make_session, server_name

UID_PATH = "/dicom-web/studies/1.2.826.0.1.3680043.8.498.1234567890/series"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def answering(request: pytest.FixtureRequest) -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server answering every GET with the status given by the test."""
    status = request.param
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            hits.append(self.path)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web", hits
    finally:
        server.shutdown()


def test_server_name_drops_credentials_and_query():
    assert server_name("https://u:pw@pacs.example.org:8443/rs/?x=1") == (
        "https://pacs.example.org:8443/rs"
    )


def test_credentials_come_from_the_named_variables():
    pacs = PacsParams(url="http://pacs/dicom-web", user_env="PU", password_env="PP")
    basic = make_session(pacs, {"PU": "reader", "PP": "s3cret"})
    assert basic.auth == ("reader", "s3cret")
    assert "Authorization" not in basic.headers
    bearer = make_session(pacs, {"PU": "reader", "PP": "s3cret", "MEDFLOW_PACS_TOKEN": "tok"})
    assert bearer.headers["Authorization"] == "Bearer tok"
    assert make_session(pacs, {}).auth is None


def test_an_empty_url_says_what_to_set():
    with pytest.raises(PacsError, match="pacs.url is empty"):
        connect(PacsParams(), {})


def test_a_server_that_stays_down_is_named_without_the_request_path():
    url = f"http://127.0.0.1:{_closed_port()}/dicom-web"
    pacs = PacsParams(url=url, retries=2, backoff_seconds=0.01)
    session = make_session(pacs, {})
    with pytest.raises(PacsError) as err:
        call(pacs, "QIDO-RS search", lambda: session.get(url + UID_PATH, timeout=5))
    text = str(err.value)
    assert url in text and "connection refused" in text and "after 2 retries" in text
    assert "1.2.826" not in text and "studies" not in text
    assert err.value.__cause__ is None and err.value.__suppress_context__


@pytest.mark.parametrize("answering", [401], indirect=True)
def test_unauthorised_says_to_check_the_credentials(answering: tuple[str, list[str]]):
    url, hits = answering
    pacs = PacsParams(url=url, retries=0)
    client = connect(pacs, {})
    with pytest.raises(PacsError, match="HTTP 401.*credentials") as err:
        call(pacs, "QIDO-RS search", lambda: client.search_for_studies())
    assert url in str(err.value)
    assert len(hits) == 1


@pytest.mark.parametrize("answering", [503], indirect=True)
def test_a_busy_server_is_retried_then_named(answering: tuple[str, list[str]]):
    url, hits = answering
    pacs = PacsParams(url=url, retries=2, backoff_seconds=0.01)
    client = connect(pacs, {})
    with pytest.raises(PacsError, match="HTTP 503"):
        call(pacs, "QIDO-RS search", lambda: client.search_for_studies())
    assert len(hits) == 3  # the first try and two retries
