"""A DICOMweb client of the configured PACS (dicomweb-client on a requests session).

Credentials come from the environment variables params `pacs` names, never from params.
Failed requests (connection refused or reset, timeouts, 429/502/503/504) are retried with
exponential backoff by urllib3; what still fails becomes a PacsError that names the server
and the cause but no URL path: paths carry Study/Series/SOP Instance UIDs, which identify.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import requests
from dicomweb_client import DICOMwebClient
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from medflow.config import PacsParams
from medflow.errors import PacsError

T = TypeVar("T")

# These log request URLs (UIDs) at debug and retries at warning: never let them through.
for _name in ("dicomweb_client", "urllib3.connectionpool", "urllib3.util.retry"):
    logging.getLogger(_name).setLevel(logging.ERROR)


def server_name(url: str) -> str:
    """The server as it may be shown: scheme://host[:port]/path, without user or query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def make_session(pacs: PacsParams, env: Mapping[str, str] = os.environ) -> requests.Session:
    """A requests session with the PACS's credentials, CA bundle and retries."""
    session = requests.Session()
    token = env.get(pacs.token_env, "")
    user, password = env.get(pacs.user_env, ""), env.get(pacs.password_env, "")
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    elif user:
        session.auth = (user, password)
    ca_bundle = env.get(pacs.ca_bundle_env, "")
    if ca_bundle:
        session.verify = ca_bundle
    retry = Retry(
        total=pacs.retries,
        connect=pacs.retries,
        read=pacs.retries,
        status=pacs.retries,
        backoff_factor=pacs.backoff_seconds,
        status_forcelist=(429, 502, 503, 504),
        # STOW-RS (POST) too: storing the same SOP Instance again replaces it, never doubles it
        allowed_methods=frozenset({"GET", "POST"}),
        raise_on_status=False,
        respect_retry_after_header=True,
    )
    adapter = HTTPAdapter(max_retries=retry, pool_maxsize=max(10, pacs.workers * 2))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def connect(pacs: PacsParams, env: Mapping[str, str] = os.environ) -> DICOMwebClient:
    """A DICOMweb client of pacs.url (retries by the session, not again by dicomweb-client)."""
    if not pacs.url:
        raise PacsError(
            "params pacs.url is empty: set it to the PACS's DICOMweb root, e.g."
            " http://orthanc:8042/dicom-web (docs/pacs.md)"
        )
    client = DICOMwebClient(pacs.url, session=make_session(pacs, env), timeout=pacs.timeout_seconds)
    client.set_http_retry_params(retry=False)
    return client


def describe(exc: BaseException) -> str:
    """What went wrong, without the request's URL (its path holds UIDs)."""
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        status = exc.response.status_code
        hint = {
            401: " (unauthorised: check the credentials' environment variables)",
            403: " (forbidden: the account may not read or store here)",
            404: " (not found: check pacs.url, the DICOMweb root)",
        }.get(status, "")
        return f"HTTP {status} {exc.response.reason or ''}".rstrip() + hint
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS error (certificate not trusted? set the CA bundle variable)"
    if isinstance(exc, requests.ConnectionError):
        text = str(exc)
        if "Connection refused" in text:
            return "connection refused"
        if "Name or service not known" in text or "NameResolutionError" in text:
            return "host name not found"
        if "reset" in text.lower():
            return "connection reset"
        if "Read timed out" in text or isinstance(exc, requests.exceptions.ReadTimeout):
            return "timed out"
        return "connection failed"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    return type(exc).__name__


def call(pacs: PacsParams, what: str, fn: Callable[[], T]) -> T:
    """fn() with its requests errors turned into a PacsError naming the server and `what`
    (e.g. "QIDO-RS search for studies"); the retries already happened in the session."""
    try:
        return fn()
    except (requests.RequestException, OSError) as exc:
        tries = f" after {pacs.retries} retries" if pacs.retries else ""
        raise PacsError(
            f"PACS {server_name(pacs.url)}: {what} failed{tries}: {describe(exc)}"
        ) from None
