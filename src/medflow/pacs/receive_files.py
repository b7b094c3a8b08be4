"""Where a received DICOM instance goes: filed into the source folder under its label, or held.

The source folder's own label format decides the place: with `labels.csv` the file goes to
`received/<study>/<sop>.dcm` and gets a `path,label` row; without it, under the class folder
(`<class>/received/<study>/<sop>.dcm`). A study the labels CSV does not list yet waits in the
held folder (outside the source, so the ingest never quarantines it as unlabelled) and is
filed when its label appears. Names are keyed HMAC tokens of the UIDs, never the UIDs.

Every file is written under a temporary name in a folder next to (not inside) the source and
renamed into place: the watcher and the ingest hash and read everything under the source,
dot files included, so they must never see a file being written.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import hmac
import io
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from medflow.data.sources import LABELS_FILE
from medflow.errors import IngestFailed, PacsError
from medflow.pacs.labels import StudyLabels, read_study_labels

logger = logging.getLogger(__name__)

RECEIVED = "received"
TMP_FOLDER = ".medflow-receive-tmp"
_Signature = tuple[int, int, int] | None


def uid_token(key: bytes, uid: str) -> str:
    """A file-name token of a UID: keyed, so the name reveals nothing and cannot be guessed."""
    return hmac.new(key, f"medflow/receive/{uid}".encode(), hashlib.sha256).hexdigest()[:24]


def instance_name(key: bytes, study_uid: str, sop_uid: str) -> str:
    """`<t(study)>/<t(sop)>.dcm`: one folder per study, one file per SOP instance."""
    return f"{uid_token(key, study_uid)}/{uid_token(key, sop_uid)}.dcm"


def _signature(path: Path) -> _Signature:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _remove_stale(tmp: Path, older_than_s: float = 3600.0) -> None:
    """Temp files a killed receiver left (never visible in the source, but they take space);
    recent ones may belong to another receiver writing right now."""
    cutoff = time.time() - older_than_s
    for path in tmp.iterdir():
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < cutoff:
                path.unlink()


@dataclass(frozen=True)
class Targets:
    """Where the receiver writes (paths resolved by the command from params)."""

    source: Path  # data.source: the folder the ingest and the watcher read
    held: Path  # data/received-unlabelled: studies waiting for a label
    study_labels: Path | None  # the labels CSV by study; None: segmentation (no labels)
    class_names: tuple[str, ...]
    key: bytes  # the de-identification key (names are HMAC tokens)


class Filer:
    """Files received instances; thread-safe (pynetdicom runs each association in a thread)."""

    def __init__(self, targets: Targets) -> None:
        self.t = targets
        self._lock = threading.Lock()
        self._labels = StudyLabels()
        self._labels_sig: _Signature = None
        self._csv_cache: tuple[_Signature, list[str], list[list[str]]] | None = None
        for folder in (targets.source, targets.held):
            folder.mkdir(parents=True, exist_ok=True)
            tmp = self._tmp_of(folder)
            tmp.mkdir(exist_ok=True)
            if tmp.stat().st_dev != folder.stat().st_dev:
                raise PacsError(
                    f"{tmp} and {folder} are on different file systems: received files could"
                    " not be renamed into place atomically (use a source folder whose parent"
                    " folder is on the same disk)"
                )
            _remove_stale(tmp)
        if targets.study_labels is not None:
            self._load_labels(startup=True)

    # ------------------------------------------------------------------ labels
    def _load_labels(self, startup: bool = False) -> bool:
        """Re-read the study labels CSV if it changed; True when it did."""
        path = self.t.study_labels
        assert path is not None
        sig = _signature(path)
        if sig == self._labels_sig and not startup:
            return False
        if sig is None:
            if startup:
                logger.warning(
                    "no study labels file %s yet: every received study is held in %s until"
                    " that file lists it (StudyInstanceUID or AccessionNumber, label)",
                    path,
                    self.t.held,
                )
            self._labels, self._labels_sig = StudyLabels(), None
            return not startup
        try:
            labels = read_study_labels(path, list(self.t.class_names))
        except IngestFailed as exc:
            if startup:
                raise
            logger.warning(
                "the study labels file changed but cannot be used (%s): kept the last", exc
            )
            self._labels_sig = sig
            return False
        self._labels, self._labels_sig = labels, sig
        logger.info("study labels: %d keys from %s", len(labels), path)
        return True

    def refresh(self) -> int:
        """Re-read the labels if the file changed and file the held studies it now lists.
        Returns the number of instances moved from the held folder into the source."""
        if self.t.study_labels is None:
            return 0
        with self._lock:
            if not self._load_labels():
                return 0
            return self._refile()

    # ------------------------------------------------------------------ filing
    def store(self, data: bytes, study_uid: str, sop_uid: str, accession: str = "") -> bool:
        """Write one instance (a complete DICOM file's bytes) where it belongs.

        Returns True when filed into the source, False when held for a label.
        Raises OSError when it cannot be written (nothing partial is left visible).
        """
        name = instance_name(self.t.key, study_uid, sop_uid)
        self.refresh()
        # written outside the lock: only the rename and the labels row are serialised
        tmp = self._write_tmp(self.t.source, data)
        try:
            with self._lock:
                label = self._label_of(study_uid, accession)
                if self.t.study_labels is not None and label is None:
                    self._move(tmp, self.t.held, name)
                    return False
                self._place(tmp, name, label)
                return True
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _label_of(self, study_uid: str, accession: str) -> int | None:
        return self._labels.label_of(study_uid, accession)

    def _place(self, tmp: Path, name: str, label: int | None) -> None:
        """Rename a written temp file to its place in the source (lock held)."""
        source = self.t.source
        if label is None:  # segmentation: the masks come from SEG objects, no label needed
            rel = f"{RECEIVED}/{name}"
        elif (source / LABELS_FILE).is_file():
            rel = f"{RECEIVED}/{name}"
            # the row before the file: the ingest never sees the file without its label
            self._upsert_label_row(rel, self.t.class_names[label])
        else:
            rel = f"{self.t.class_names[label]}/{RECEIVED}/{name}"
            for other in self.t.class_names:  # relabelled study: no stale copy in another class
                if other != self.t.class_names[label]:
                    (source / other / RECEIVED / name).unlink(missing_ok=True)
        self._move(tmp, source, rel)
        (self.t.held / name).unlink(missing_ok=True)

    def _tmp_of(self, folder: Path) -> Path:
        return folder.resolve().parent / TMP_FOLDER

    def _write_tmp(self, folder: Path, data: bytes) -> Path:
        fd, tmp = tempfile.mkstemp(dir=self._tmp_of(folder), suffix=".dcm")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return Path(tmp)

    def _move(self, tmp: Path, root: Path, rel: str) -> None:
        """Rename tmp to root/rel; across file systems, copy to root's temp folder first."""
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            fd, near = tempfile.mkstemp(dir=self._tmp_of(root), suffix=".dcm")
            os.close(fd)
            try:
                shutil.copyfile(tmp, near)
                os.replace(near, dest)
            finally:
                Path(near).unlink(missing_ok=True)
            tmp.unlink(missing_ok=True)

    # ------------------------------------------------------------------ labels.csv rows
    def _upsert_label_row(self, rel: str, label: str) -> None:
        """Give rel its label in source/labels.csv: atomic rewrite, other columns kept."""
        path = self.t.source / LABELS_FILE
        sig = _signature(path)
        if self._csv_cache is None or self._csv_cache[0] != sig:
            text = path.read_text(encoding="utf-8")
            rows = list(csv.reader(io.StringIO(text)))
            header, body = (rows[0], rows[1:]) if rows else (["path", "label"], [])
        else:
            _, header, body = self._csv_cache
        if "path" not in header or "label" not in header:
            raise PacsError(
                f"{path} lacks the columns path,label (found {header}): received instances"
                " cannot be labelled there"
            )
        ip, il = header.index("path"), header.index("label")
        for row in body:
            if len(row) > max(ip, il) and row[ip].strip().removeprefix("./") == rel:
                if row[il] == label:
                    return
                row[il] = label
                break
        else:
            row = [""] * len(header)
            row[ip], row[il] = rel, label
            body.append(row)
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows([header, *body])
        tmp = self._write_tmp(self.t.source, out.getvalue().encode("utf-8"))
        os.replace(tmp, path)
        self._csv_cache = (_signature(path), header, body)

    # ------------------------------------------------------------------ held studies
    def _refile(self) -> int:
        """Move the held studies the labels now list into the source (lock held)."""
        moved = 0
        for study in sorted(p for p in self.t.held.iterdir() if p.is_dir()):
            files = sorted(study.glob("*.dcm"))
            if not files:
                continue
            try:
                head = pydicom.dcmread(
                    files[0],
                    stop_before_pixels=True,
                    specific_tags=["StudyInstanceUID", "AccessionNumber"],
                )
                label = self._label_of(
                    str(head.StudyInstanceUID), str(head.get("AccessionNumber", "") or "")
                )
            except (OSError, AttributeError, InvalidDicomError):
                logger.warning("a held study's file cannot be read; it stays held")
                continue
            if label is None:
                continue
            for path in files:
                self._place(path, f"{study.name}/{path.name}", label)
                moved += 1
            try:
                study.rmdir()
            except OSError:
                pass  # an instance arrived meanwhile; it is filed with its own store()
        if moved:
            logger.info("filed %d held instance(s) whose study is now labelled", moved)
        return moved

    def held_count(self) -> int:
        """Instances waiting in the held folder for their study's label."""
        return sum(1 for _ in self.t.held.glob("*/*.dcm"))
