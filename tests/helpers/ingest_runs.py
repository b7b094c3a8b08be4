"""Running `medflow ingest` through its console script, and checking where every file went.

Every source file must end up in exactly one place, the manifest or quarantine.csv; no
original identifier may reach an output.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pydicom
import pytest
import yaml

from tests.helpers.broken_files import DUPLICATE, QUARANTINED, SKIPPED
from tests.helpers.hashing import tree_hashes
from tests.helpers.identifiers import identifying_values

CLASSES = ["normal", "lesion"]
OUTCOMES = {QUARANTINED, SKIPPED, DUPLICATE}
MANIFEST_COLUMNS = {
    "image_id",
    "file",
    "patient_id",
    "modality",
    "rows",
    "columns",
    "frames",
    "frame",
    "photometric",
    "label",
    "label_name",
    "split",
    "content_hash",
}
QUARANTINE_COLUMNS = {"path", "sha256", "outcome", "reason"}
PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
PYDICOM_MAX_BYTES = 40_000  # keeps the run small: about 60 files, 350 kB
PYDICOM_MAX_FILES = 60

# pydicom test files of image SOP classes that decode: ingested (or duplicates of an instance).
PYDICOM_IMAGES = (
    "693_J2KI.dcm",
    "CT_small.dcm",
    "ExplVR_BigEnd.dcm",
    "GDCMJ2K_TextGBR.dcm",
    "JPEG2000.dcm",
    "JPEGLSNearLossless_16.dcm",
    "JPGExtended.dcm",
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "SC_rgb_jpeg.dcm",
    "image_dfl.dcm",
)
# pydicom test files that are valid objects but not images: skipped, naming their SOP class.
PYDICOM_NOT_IMAGES = {
    "reportsi.dcm": "Basic Text SR Storage",
    "test-SR.dcm": "Comprehensive SR Storage",
    "rtplan.dcm": "RT Plan Storage",
    "rtstruct.dcm": "RT Structure Set Storage",
}


def medflow_cli() -> str:
    """The `medflow` console script of the environment running the tests."""
    beside = Path(sys.executable).parent / "medflow"
    found = str(beside) if beside.is_file() else shutil.which("medflow")
    if not found:
        pytest.fail(
            f"no `medflow` console script beside {sys.executable} or on PATH: pip install -e ."
        )
    return found


def write_params(
    folder: Path, source: Path, *, max_quarantine_fraction: float = 1.0, frames: str = "first"
) -> Path:
    params = {
        "data": {"source": str(source), "class_names": CLASSES},
        "ingest": {"max_quarantine_fraction": max_quarantine_fraction},
        "preprocess": {"frames": frames},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"params-{max_quarantine_fraction}-{frames}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def source_files(source: Path) -> dict[str, str]:
    """{relative POSIX path: sha256} of every regular file, labels.csv excluded."""
    return tree_hashes(source, exclude=("labels.csv",))


def write_labels(source: Path) -> dict[str, str]:
    """labels.csv giving every file, in path order, the labels normal, lesion, normal, ..."""
    rels = sorted(source_files(source))
    labels = {rel: CLASSES[i % 2] for i, rel in enumerate(rels)}
    pd.DataFrame({"path": list(labels), "label": list(labels.values())}).to_csv(
        source / "labels.csv", index=False
    )
    return labels


@dataclass(frozen=True)
class Run:
    source: Path
    out: Path
    proc: subprocess.CompletedProcess[str]

    @property
    def said(self) -> str:
        return (
            f"exit {self.proc.returncode}\nstdout:\n{self.proc.stdout}\nstderr:\n{self.proc.stderr}"
        )

    def manifest(self) -> pd.DataFrame:
        return pd.read_csv(self.out / "manifest.csv", dtype=str, keep_default_na=False)

    def quarantine(self) -> pd.DataFrame:
        """quarantine.csv, with each withheld path (it names a patient) found by its sha256."""
        q = pd.read_csv(self.out / "quarantine.csv", dtype=str, keep_default_na=False)
        named = set(q.path)
        by_sha: dict[str, list[str]] = {}
        for rel, sha in sorted(source_files(self.source).items()):
            if rel not in named:
                by_sha.setdefault(sha, []).append(rel)
        withheld = q.path.str.startswith("[withheld")
        q.loc[withheld, "path"] = [
            by_sha[sha].pop(0) if by_sha.get(sha) else path
            for path, sha in zip(q.path[withheld], q.sha256[withheld], strict=True)
        ]
        return q

    def outcome_of(self, rel: str) -> tuple[str, str] | None:
        """(outcome, reason) of rel in quarantine.csv, or None when it is not there."""
        q = self.quarantine()
        hits = q[q.path == rel]
        return None if hits.empty else (hits.outcome.iloc[0], hits.reason.iloc[0])


def ingest(source: Path, out: Path, params: Path, *, timeout: float = 240) -> Run:
    key = os.environ.get("MEDFLOW_DEID_KEY", "")
    assert len(key) >= 16, "tests/conftest.py should set MEDFLOW_DEID_KEY (>= 16 characters)"
    # A wide console keeps rich from wrapping the log lines this test reads.
    env = {**os.environ, "COLUMNS": "250"}
    proc = subprocess.run(
        [medflow_cli(), "ingest", str(source), str(out), "--params", str(params)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    return Run(source, out, proc)


def assert_succeeded(run: Run) -> None:
    assert run.proc.returncode == 0, run.said
    for name in ("manifest.csv", "quarantine.csv", "phi_audit.json", "ingest.log"):
        assert (run.out / name).is_file(), f"{name} missing in {run.out}\n{run.said}"
    assert (run.out / "ingest_state.json").is_file() and (run.out / "images").is_dir()


def assert_accounted(run: Run, entries: Collection[str] = ()) -> None:
    """Every source file once: in the manifest (by content hash) or in quarantine.csv (by path).

    `entries` are paths that are not files but must be reported (directory symlink loops).
    """
    files, entries = source_files(run.source), set(entries)
    manifest, quarantine = run.manifest(), run.quarantine()
    assert MANIFEST_COLUMNS <= set(manifest.columns), sorted(
        MANIFEST_COLUMNS - set(manifest.columns)
    )
    assert QUARANTINE_COLUMNS <= set(quarantine.columns), list(quarantine.columns)
    problems: list[str] = []
    repeated = quarantine.path[quarantine.path.duplicated()].tolist()
    if repeated:
        problems.append(f"listed more than once in quarantine.csv: {repeated}")
    listed = set(quarantine.path)
    unknown = listed - set(files) - entries
    if unknown:
        problems.append(f"quarantine.csv names paths that are not in the source: {sorted(unknown)}")
    bad_outcomes = set(quarantine.outcome) - OUTCOMES
    if bad_outcomes:
        problems.append(f"unknown outcomes {sorted(bad_outcomes)}; expected {sorted(OUTCOMES)}")
    problems += [f"{e} not reported in quarantine.csv" for e in sorted(entries - listed)]
    ingested_hashes = set(manifest.content_hash)
    kept: dict[str, str] = {}  # content hash -> the one path it was ingested from
    for row in quarantine.itertuples():
        sha = files.get(row.path)
        if sha is None:
            continue
        if row.sha256 and row.sha256 != sha:
            problems.append(f"{row.path}: quarantine sha256 {row.sha256} is not its sha256 {sha}")
        # a copy labelled differently is quarantined while the first path's copy is ingested
        if (
            row.outcome != DUPLICATE
            and row.category != "conflicting duplicate"
            and (sha in ingested_hashes)
        ):
            problems.append(f"{row.path}: {row.outcome} in quarantine.csv, yet in the manifest")
    for rel, sha in sorted(files.items()):
        if rel in listed:
            continue
        if sha not in ingested_hashes:
            problems.append(f"{rel}: neither in the manifest nor in quarantine.csv")
        elif sha in kept:
            problems.append(f"{rel} and {kept[sha]}: same bytes, both ingested")
        else:
            kept[sha] = rel
    stray = ingested_hashes - set(kept)
    if stray:
        problems.append(f"manifest content_hash values of no ingested source file: {sorted(stray)}")
    assert not problems, "\n".join(problems)


def assert_manifest_rows_sane(run: Run) -> None:
    manifest = run.manifest()
    assert not manifest.empty, run.said
    for row in manifest.itertuples():
        assert re.fullmatch(r"images/[^/]+\.dcm", row.file), row.file
        assert (run.out / row.file).is_file(), row.file
        assert row.patient_id.startswith("PSN-"), row.patient_id
        assert row.label_name == CLASSES[int(row.label)], (row.label, row.label_name)
        assert row.split in {"train", "val", "test"}, row.split
        assert int(row.frame) < int(row.frames), (row.frame, row.frames)
    assert manifest.image_id.is_unique


def assert_no_identifiers(run: Run) -> None:
    audit = json.loads((run.out / "phi_audit.json").read_text())
    assert audit["findings"] == 0, audit
    n_images = sum(1 for _ in (run.out / "images").iterdir())
    assert audit["files_scanned"] >= n_images > 0, audit
    values = identifying_values(run.source)
    assert values, "the test source should carry identifying values to look for"
    leaks = [
        f"{name}: {value!r}"
        for name in ("manifest.csv", "quarantine.csv", "ingest.log")
        for value in sorted(values)
        if value.encode() in (run.out / name).read_bytes()
    ]
    assert not leaks, f"original identifiers in the output: {leaks}"


def assert_ingested_or_duplicate(run: Run, rels: list[str]) -> None:
    """Each file ingested, or a duplicate / same-UID loser while its instance was ingested.

    DICOM names an instance by its SOPInstanceUID: the same instance re-encoded (emri_small
    in four transfer syntaxes) may count as one image, and a UID claimed by two different
    images (SC_rgb.dcm and SC_rgb_2frame.dcm) may keep only the first. Either way a file of
    that UID must be in the manifest.
    """
    files = source_files(run.source)
    ingested = set(run.manifest().content_hash)
    quarantine = run.quarantine().drop_duplicates("path").set_index("path")
    uid_of = {rel: sop_uid(run.source / rel) for rel in files}
    ingested_uids = {uid_of[rel] for rel, sha in files.items() if sha in ingested}
    problems = []
    for rel in rels:
        if files[rel] in ingested:
            continue
        if rel not in quarantine.index:
            problems.append(f"{rel}: neither in the manifest nor in quarantine.csv")
            continue
        row = quarantine.loc[rel]
        # The reason may be withheld (it named a path holding a word that is also some
        # patient's name): any column may say the UID was the cause.
        lost_to_uid = row.outcome == QUARANTINED and any(
            "SOPInstanceUID" in str(v) for v in row.values
        )
        if (row.outcome == DUPLICATE or lost_to_uid) and uid_of[rel] in ingested_uids:
            continue
        problems.append(f"{rel}: not ingested: {row.outcome}: {row.reason}")
    assert not problems, "\n".join(problems)


def sop_uid(path: Path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
            return str(ds.get("SOPInstanceUID", "") or "")
        except Exception:
            return ""


def pydicom_selection(exclude_uids: set[str]) -> list[Path]:
    """Small bundled pydicom test files, without instances the zoo holds too (the same UID)."""
    small = [
        p
        for p in sorted(PYDICOM_FILES.glob("*.dcm"))
        if p.stat().st_size <= PYDICOM_MAX_BYTES and sop_uid(p) not in exclude_uids
    ]
    # The files the tests name first, whatever the cap leaves of the rest.
    named = {*PYDICOM_IMAGES, *PYDICOM_NOT_IMAGES}
    first = [p for p in small if p.name in named]
    rest = [p for p in small if p.name not in named]
    return sorted(first + rest[: max(0, PYDICOM_MAX_FILES - len(first))])
