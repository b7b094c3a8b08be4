"""The orchestration's pure helpers: the watcher's content hash (flows/watch.py) and which
errors the pipeline flow retries (flows/pipeline.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from dvc.lock import LockError

from medflow.errors import GateFailed
from medflow.orchestration.pipeline import is_transient
from medflow.orchestration.watch import hash_source


def _tree(root: Path) -> Path:
    (root / "a").mkdir(parents=True)
    (root / "a" / "1.dcm").write_bytes(b"first image")
    (root / "2.dcm").write_bytes(b"second image")
    (root / "labels.csv").write_text("path,label\n")
    return root


def test_the_hash_depends_on_content_and_names_only(tmp_path: Path) -> None:
    one, two = _tree(tmp_path / "one"), _tree(tmp_path / "two")
    h1, h2 = hash_source(one), hash_source(two)
    assert h1.n_files == 3 and sorted(h1.files) == ["2.dcm", "a/1.dcm", "labels.csv"]
    assert h1.digest == h2.digest  # other folder, other mtimes, same content

    (two / "2.dcm").write_bytes(b"second imagE")  # same size, new content
    assert hash_source(two).digest != h1.digest
    (two / "2.dcm").write_bytes(b"second image")
    assert hash_source(two).digest == h1.digest
    (two / "2.dcm").rename(two / "3.dcm")  # same bytes under another name: a change
    assert hash_source(two).digest != h1.digest
    (two / "3.dcm").rename(two / "2.dcm")
    (two / "a" / "new.dcm").write_bytes(b"")  # a new (empty) file: a change
    renewed = hash_source(two)
    assert renewed.n_files == 4 and renewed.digest != h1.digest


def test_unchanged_size_and_mtime_reuse_the_known_digest(tmp_path: Path) -> None:
    root = _tree(tmp_path / "src")
    first = hash_source(root)
    # A stale record with the files' size and mtime is trusted (no read): shown by a digest
    # that is not the file's. Any other size or mtime makes it read the file again.
    known = {rel: [size, mtime, "0" * 64] for rel, (size, mtime, _) in first.files.items()}
    assert hash_source(root, known).files["2.dcm"][2] == "0" * 64
    st = (root / "2.dcm").stat()
    os.utime(root / "2.dcm", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert hash_source(root, known).files["2.dcm"][2] == first.files["2.dcm"][2]


def test_a_single_file_and_a_missing_source(tmp_path: Path) -> None:
    npz = tmp_path / "data.npz"
    npz.write_bytes(b"arrays")
    single = hash_source(npz)
    assert single.n_files == 1 and list(single.files) == ["data.npz"]
    missing = hash_source(tmp_path / "nothing")
    assert missing.n_files == 0 and missing.digest != single.digest


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (ConnectionResetError("peer"), True),
        (TimeoutError("slow NFS"), True),
        (OSError(5, "Input/output error"), True),
        (LockError("Unable to acquire lock"), True),
        (FileNotFoundError("data/x.dcm"), False),
        (PermissionError("models/"), False),
        (IsADirectoryError("reports"), False),
        (ValueError("bad params"), False),
        (GateFailed(["auroc 0.6 < 0.85"]), False),
        (KeyboardInterrupt(), False),
    ],
)
def test_only_transient_errors_are_retried(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient
