"""The served medflow Bento as PACS inference uses it: which model it serves, its answer.

The task and model tag come from the service's 409 `wrong_task` to a request on the other
task's route (nothing is inferred); a classifier's JSON answer becomes a ModelAnswer (the SR's
content), a segmentation model's DICOM SEG is returned as it is. Connection failures and 503
`overloaded` are retried with backoff; what still fails is a BentoError naming the Bento.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import pydicom
import requests
from pydicom.dataset import Dataset
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from medflow.config import PacsParams
from medflow.errors import StageFailed
from medflow.pacs.client import describe, server_name
from medflow.pacs.sr import Finding, ModelAnswer

CLASSIFICATION, SEGMENTATION = "classification", "segmentation"
TOKEN_ENV = "MEDFLOW_API_TOKEN"  # package.serve.api_token_env's default, as the Bento reads it
_TAG = re.compile(r"\(([^()\s]+:[^()\s]+)\)")  # "... model (name:version): POST /x"


class BentoError(StageFailed):
    """The served model cannot be reached or does not answer as a medflow Bento does."""


@dataclass(frozen=True)
class Served:
    """What the Bento serves: its task and the model's tag (name:version)."""

    task: str
    model_tag: str


@dataclass(frozen=True)
class Refusal:
    """The Bento refused an image (a 4xx other than auth): its stable error code."""

    code: str


class Bento:
    """The served medflow Bento over HTTP: what it serves, and its answer for one image."""

    def __init__(self, url: str, pacs: PacsParams, env: Mapping[str, str] = os.environ) -> None:
        self.url = url.rstrip("/")
        self.name = server_name(self.url)  # as shown: no user, password or query
        self.timeout = pacs.timeout_seconds
        self.session = requests.Session()
        token = env.get(TOKEN_ENV, "")
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        # connection failures and 503 `overloaded` are retried; a prediction is idempotent
        retry = Retry(
            total=pacs.retries,
            connect=pacs.retries,
            read=0,
            status=pacs.retries,
            backoff_factor=pacs.backoff_seconds,
            status_forcelist=(502, 503, 504),
            allowed_methods=frozenset({"GET", "POST"}),
            raise_on_status=False,
            respect_retry_after_header=True,
        )
        adapter = HTTPAdapter(max_retries=retry, pool_maxsize=max(10, pacs.workers * 2))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def _post(self, route: str, data: bytes, accept: str = "application/json") -> requests.Response:
        try:
            response = self.session.post(
                f"{self.url}{route}",
                files={"file": ("image.dcm", data, "application/dicom")},
                headers={"Accept": accept},
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            raise BentoError(
                f"Bento {self.name}: POST {route} failed: {describe(exc)} (is the champion Bento"
                " served? `make serve`; params pacs.infer.bento_url)"
            ) from None
        if response.status_code in (401, 403):
            raise BentoError(
                f"Bento {self.name}: POST {route} refused ({response.status_code}): set"
                f" ${TOKEN_ENV} to the token the Bento was started with"
            )
        if response.status_code == 404:
            raise BentoError(
                f"Bento {self.name}: no {route} route (404): is pacs.infer.bento_url a medflow"
                " Bento?"
            )
        if response.status_code >= 500:
            raise BentoError(
                f"Bento {self.name}: POST {route} failed with HTTP {response.status_code}"
                " (see the Bento's log)"
            )
        return response

    @staticmethod
    def _error(response: requests.Response) -> tuple[str, str]:
        try:
            body = response.json()
            return str(body.get("error", "")), str(body.get("detail", ""))
        except ValueError:
            return "", ""

    def _refusal(self, route: str, response: requests.Response) -> Refusal:
        """The model's refusal of an image (recorded: it would refuse it again); a refusal
        that is not about the image (the task changed, too many requests) stops the pass."""
        code = self._error(response)[0] or f"http_{response.status_code}"
        if response.status_code in (408, 409, 429):
            raise BentoError(
                f"Bento {self.name}: POST {route} answered {response.status_code} {code}"
                " (the served model changed during the pass, or it is overloaded): run again"
            )
        return Refusal(code)

    def probe(self) -> Served:
        """The task and model tag, from the Bento's 409 `wrong_task` to a bodiless request on
        the other task's route (no image is sent; nothing is inferred)."""
        for route, task_if_wrong in (("/predict", SEGMENTATION), ("/segment", CLASSIFICATION)):
            response = self._post(route, b"medflow probe: not an image")
            code, detail = self._error(response)
            if response.status_code == 409 and code == "wrong_task":
                found = _TAG.search(detail)
                if found:
                    return Served(task_if_wrong, found.group(1))
        raise BentoError(
            f"Bento {self.name}: cannot tell which model it serves (no 409 wrong_task naming"
            " it from /predict or /segment): is it a medflow Bento of this version?"
        )

    def classify(self, data: bytes) -> ModelAnswer | Refusal:
        """The classifier's answer for one DICOM file, or its refusal."""
        response = self._post("/predict", data)
        if response.status_code != 200:
            return self._refusal("/predict", response)
        body = response.json()
        names = list(body["probabilities"])
        probabilities = [float(body["probabilities"][n]) for n in names]
        label = body["label"]
        # two classes: the positive one (index 1) is the finding; more: each class is one
        shown = names[1:] if len(names) == 2 else names
        findings = tuple(
            Finding(n, probabilities[names.index(n)], present=n == label) for n in shown
        )
        return ModelAnswer(body["model_name"], body["model_version"], body["threshold"], findings)

    def segment(self, data: bytes) -> Dataset | Refusal:
        """The segmentation model's DICOM SEG for one DICOM file, or its refusal."""
        response = self._post("/segment", data, accept="application/dicom")
        if response.status_code != 200:
            return self._refusal("/segment", response)
        return pydicom.dcmread(io.BytesIO(response.content))
