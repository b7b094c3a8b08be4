"""A real Orthanc PACS (Debian's `orthanc` + `orthanc-dicomweb`) on loopback for the tests.

Each instance has its own temporary configuration, storage, ports and credentials; stop()
and start() again keep the storage (a server that goes down and comes back).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pydicom
import requests

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def orthanc_binary() -> str | None:
    """The Orthanc executable with its DICOMweb plugin, or None (the tests then skip)."""
    found = shutil.which("Orthanc") or (
        "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None
    )
    return found if found and PLUGIN.is_file() else None


SKIP_REASON = (
    "Orthanc with its DICOMweb plugin is not installed (Debian: orthanc orthanc-dicomweb;"
    " `make system-deps` installs them)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """One Orthanc server: start() / stop(), its DICOMweb root and credentials."""

    def __init__(self, folder: Path, *, aet: str = "ORTHANC") -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.user = "medflow"
        self.password = secrets.token_urlsafe(12)
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.aet = aet
        self.modalities: dict[str, list[Any]] = {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def env(self) -> dict[str, str]:
        """The credentials as medflow reads them (params pacs.user_env/password_env)."""
        return {"MEDFLOW_PACS_USER": self.user, "MEDFLOW_PACS_PASSWORD": self.password}

    def session(self) -> requests.Session:
        s = requests.Session()
        s.auth = (self.user, self.password)
        return s

    def add_modality(self, aet: str, port: int, host: str = "127.0.0.1") -> None:
        """A DICOM peer Orthanc may C-STORE to (takes effect at the next start)."""
        self.modalities[aet] = [aet, host, port]

    def start(self, timeout: float = 30) -> Orthanc:
        binary = orthanc_binary()
        assert binary, SKIP_REASON
        config = {
            "Name": "medflow-test",
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "StorageDirectory": str(self.folder / "db"),
            "IndexDirectory": str(self.folder / "db"),
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.user: self.password},
            "Plugins": [str(PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "DicomModalities": self.modalities,
            "DicomAlwaysAllowStore": True,
            "DicomCheckCalledAet": False,
            "HttpTimeout": 60,
        }
        cfg = self.folder / "orthanc.json"
        cfg.write_text(json.dumps(config, indent=1))
        log = (self.folder / "orthanc.log").open("ab")
        self.proc = subprocess.Popen(
            [binary, str(cfg)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited ({self.proc.returncode}): {self.log_tail()}")
            try:
                if self.session().get(f"{self.url}/system", timeout=2).ok:
                    return self
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Orthanc did not answer within {timeout} s: {self.log_tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 30) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def log_tail(self, n: int = 20) -> str:
        path = self.folder / "orthanc.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        return "\n".join(lines[-n:])

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- content -------------------------------------------------------------------------

    def client(self):  # noqa: ANN201 - dicomweb_client.DICOMwebClient
        from dicomweb_client import DICOMwebClient

        return DICOMwebClient(self.dicomweb, session=self.session())

    def store(self, items: Iterable[Path | pydicom.Dataset]) -> int:
        """STOW-RS the files or datasets (given a preamble: Orthanc keeps the bytes as sent)."""
        datasets = []
        for item in items:
            ds = pydicom.dcmread(item) if isinstance(item, Path) else item
            if not getattr(ds, "preamble", None):
                ds.preamble = b"\0" * 128
            datasets.append(ds)
        if not datasets:
            return 0
        stored = 0
        for start in range(0, len(datasets), 50):
            reply = self.client().store_instances(datasets[start : start + 50])
            stored += len(reply.get("ReferencedSOPSequence", []))
        return stored

    def instance_ids(self) -> list[str]:
        """Orthanc's ids of every stored instance."""
        r = self.session().get(f"{self.url}/instances", timeout=30)
        r.raise_for_status()
        return r.json()

    def sop_uids(self, modality: str | None = None) -> set[str]:
        """SOP Instance UIDs stored, of one modality or all (QIDO-RS)."""
        filters = {"Modality": modality} if modality else None
        found = self.client().search_for_instances(search_filters=filters, get_remaining=True)
        return {pydicom.Dataset.from_json(f).SOPInstanceUID for f in found}
