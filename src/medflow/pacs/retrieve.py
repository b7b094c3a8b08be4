"""WADO-RS retrieval of the pull into the raw folder, one shard of work at a time.

A shard is a list of items, each a whole series (nothing of it held yet: one series-level
request) or some instances of one. A shard runs its items on pacs.workers threads, in this
process, a worker process or a Dask worker (medflow.data.workers mappers), and writes each
instance atomically as raw/<t(study)>/<t(series)>/<t(sop)>.dcm, t a keyed HMAC token: file
names identify nobody. The stored transfer syntax is kept (no transcoding). Shards carry
UIDs and the key: they are never logged or persisted.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import threading
from collections.abc import Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import pydicom
from dicomweb_client import DICOMwebClient
from pydicom.errors import InvalidDicomError

from medflow.config import PacsParams
from medflow.errors import PacsError
from medflow.io import write_bytes_atomic
from medflow.pacs.client import call, connect, server_name

# keep the transfer syntax the PACS stores: no transcoding, compressed files stay compressed
ANY_TRANSFER_SYNTAX = (("application/dicom", "*"),)
SUFFIX = ".dcm"


def token(key: bytes, kind: str, uid: str) -> str:
    """The raw folder's name for a study, series or SOP instance UID (keyed HMAC-SHA256)."""
    return hmac.new(key, f"medflow/pacs/{kind}/{uid}".encode(), hashlib.sha256).hexdigest()[:24]


def series_folder(raw: Path, key: bytes, study_uid: str, series_uid: str) -> Path:
    return raw / token(key, "study", study_uid) / token(key, "series", series_uid)


@dataclass(frozen=True)
class Item:
    """One request's worth: a whole study (series_uid None), a whole series (sop_uids None),
    or these instances of a series."""

    study_uid: str
    series_uid: str | None
    sop_uids: tuple[str, ...] | None
    n_expected: int  # instances this item should give (progress; 0 when unknown)


@dataclass(frozen=True)
class RetrieveShard:
    pacs: PacsParams
    raw: str
    key: bytes
    items: tuple[Item, ...]

    @property
    def n_expected(self) -> int:
        return sum(item.n_expected for item in self.items)


@dataclass(frozen=True)
class RetrieveResult:
    """What a shard wrote (counts only: safe to log)."""

    n_files: int
    n_bytes: int
    n_expected: int


def _write(
    shard: RetrieveShard, ds: pydicom.Dataset, study_uid: str, series_uid: str | None
) -> int:
    """One retrieved instance, written atomically under its tokens; its size in bytes."""
    series_uid = series_uid or str(ds.get("SeriesInstanceUID", ""))
    if ds.get("StudyInstanceUID") != study_uid or ds.get("SeriesInstanceUID") != series_uid:
        raise PacsError(
            f"PACS {server_name(shard.pacs.url)}: a WADO-RS retrieval answered an instance of"
            " another study or series"
        )
    raw, key = Path(shard.raw), shard.key
    buffer = io.BytesIO()
    # the PACS's own file meta and preamble where it sent them, made complete where not
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    data = buffer.getvalue()
    folder = series_folder(raw, key, study_uid, series_uid)
    write_bytes_atomic(folder / f"{token(key, 'sop', str(ds.SOPInstanceUID))}{SUFFIX}", data)
    return len(data)


def _retrieve_item(client: DICOMwebClient, shard: RetrieveShard, item: Item) -> tuple[int, int]:
    """(files, bytes) the item gave."""
    pacs = shard.pacs
    files = size = 0
    if item.series_uid is None:

        def whole_study() -> None:
            nonlocal files, size
            for ds in client.iter_study(item.study_uid, media_types=ANY_TRANSFER_SYNTAX):
                size += _write(shard, ds, item.study_uid, None)
                files += 1

        call(pacs, "WADO-RS retrieval of a study", whole_study)
        return files, size
    if item.sop_uids is None:

        def whole_series() -> None:
            nonlocal files, size
            for ds in client.iter_series(
                item.study_uid, item.series_uid, media_types=ANY_TRANSFER_SYNTAX
            ):
                size += _write(shard, ds, item.study_uid, item.series_uid)
                files += 1

        call(pacs, "WADO-RS retrieval of a series", whole_series)
        return files, size
    for sop in item.sop_uids:
        ds = call(
            pacs,
            "WADO-RS retrieval of an instance",
            lambda s=sop: client.retrieve_instance(
                item.study_uid, item.series_uid, s, media_types=ANY_TRANSFER_SYNTAX
            ),
        )
        if ds.get("SOPInstanceUID") != sop:
            raise PacsError(
                f"PACS {server_name(pacs.url)}: a WADO-RS retrieval answered another instance"
            )
        size += _write(shard, ds, item.study_uid, item.series_uid)
        files += 1
    return files, size


def retrieve_shard(shard: RetrieveShard, env: Mapping[str, str] | None = None) -> RetrieveResult:
    """Retrieve the shard's items on pacs.workers threads; the first failure cancels the
    items not started and is raised (the files already written are complete and kept).

    Credentials come from `env` (default: this process's environment, also on a Dask worker).

    Raises:
        PacsError: a request failed after its retries (the message names the server).
    """
    env = os.environ if env is None else env
    local = threading.local()

    def run(item: Item) -> tuple[int, int]:
        if not hasattr(local, "client"):
            local.client = connect(shard.pacs, env)  # a session per thread
        try:
            return _retrieve_item(local.client, shard, item)
        except InvalidDicomError:
            raise PacsError(
                f"PACS {server_name(shard.pacs.url)}: a WADO-RS retrieval answered something"
                " that is not DICOM"
            ) from None

    files = size = 0
    with ThreadPoolExecutor(max(1, min(shard.pacs.workers, len(shard.items)))) as pool:
        futures = [pool.submit(run, item) for item in shard.items]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f.done() and f.exception() is not None]
        if failed:
            for future in futures:
                future.cancel()
            wait(futures)
            raise failed[0].exception()  # type: ignore[misc]
        for future in done:
            n, b = future.result()
            files, size = files + n, size + b
    return RetrieveResult(files, size, shard.n_expected)
