"""The no-key path end to end (docs/ingest.md): with neither MEDFLOW_DEID_KEY nor
MEDFLOW_DEID_KEY_FILE set, the synthetic demo is pseudonymised with the public demo key and a
warning says so; any other source stops before reading or writing anything, saying how to set a
key. Once through the `medflow ingest` command and once through `dvc repro` in a clone of the
session's reproduced copy (conftest.py `reproduced`), the rest of the session keeps its key.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medflow.data.deid import DEMO_KEY, KEY_ENV, KEY_FILE_ENV
from tests.helpers.hashing import tree_hashes
from tests.helpers.pipeline_copy import ROOT, clone, set_params

WARNING = "using the PUBLIC demo key"
# what the refusal must tell the user: why, and how to set a key (either way)
INSTRUCTIONS = (
    "no de-identification key",
    "never pseudonymised with the public demo key",
    f"set {KEY_ENV} to a secret",
    "openssl rand",
    KEY_FILE_ENV,
)
OTHER_KEY = "a-site-key-for-this-test-only-0123456789"


def _run(cmd: list[str], cwd: Path, key: str | None = None) -> subprocess.CompletedProcess[str]:
    """cmd with this venv first on PATH and no de-identification key but `key`."""
    env = {k: v for k, v in os.environ.items() if k not in (KEY_ENV, KEY_FILE_ENV)}
    if key is not None:
        env[KEY_ENV] = key
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _output(proc: subprocess.CompletedProcess[str]) -> str:
    return " ".join((proc.stdout + proc.stderr).split())  # rich wraps long lines


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small synthetic dataset (`medflow synth`) and a params file for it (data.source
    synthetic, the demo key allowed, as in params.yaml)."""
    tmp = tmp_path_factory.mktemp("no_key")
    params = tmp / "params.yaml"
    shutil.copy2(ROOT / "params.yaml", params)
    set_params(tmp, {"synth": {"n_patients": 12, "images_per_patient": 1}})
    proc = _run(["medflow", "synth", str(tmp / "synthetic"), "--params", str(params)], tmp)
    assert proc.returncode == 0, proc.stderr
    return tmp / "synthetic", params


def _folder_params(tmp: Path, params: Path, source: Path) -> Path:
    """A copy of params with data.source the folder `source` (not synthetic)."""
    folder = tmp / "folder_params"
    folder.mkdir()
    shutil.copy2(params, folder / "params.yaml")
    set_params(folder, {"data": {"source": str(source)}})
    return folder / "params.yaml"


def test_ingest_synthetic_uses_the_demo_key_with_a_warning(
    synthetic: tuple[Path, Path], tmp_path: Path
) -> None:
    source, params = synthetic
    cmd = ["medflow", "ingest", str(source), "{out}", "--params", str(params)]
    no_key = _run([c.replace("{out}", str(tmp_path / "no_key")) for c in cmd], tmp_path)
    assert no_key.returncode == 0, no_key.stderr
    assert WARNING in _output(no_key)
    assert "synthetic data only" in _output(no_key)
    # the pseudonyms are the demo key's: the same output as with that key given explicitly
    demo = _run(
        [c.replace("{out}", str(tmp_path / "demo_key")) for c in cmd], tmp_path, DEMO_KEY.decode()
    )
    assert demo.returncode == 0, demo.stderr
    assert WARNING not in _output(demo)
    manifest = (tmp_path / "no_key" / "manifest.csv").read_text()
    assert manifest == (tmp_path / "demo_key" / "manifest.csv").read_text()
    assert len(manifest.splitlines()) > 1


def test_ingest_of_a_folder_stops_with_instructions(
    synthetic: tuple[Path, Path], tmp_path: Path
) -> None:
    """A folder of DICOM files with labels.csv (as a site would bring): no key, no ingest."""
    source, params = synthetic
    site = tmp_path / "site"
    shutil.copytree(source, site)
    params = _folder_params(tmp_path, params, site)
    before = tree_hashes(site)

    out = tmp_path / "ingested"
    proc = _run(["medflow", "ingest", str(site), str(out), "--params", str(params)], tmp_path)
    assert proc.returncode != 0
    for part in INSTRUCTIONS:
        assert part in _output(proc), (part, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert not out.exists()
    assert tree_hashes(site) == before

    # an output from an earlier run with a key stays exactly as it was
    first = _run(
        ["medflow", "ingest", str(site), str(out), "--params", str(params)], tmp_path, OTHER_KEY
    )
    assert first.returncode == 0, first.stderr
    previous = tree_hashes(out)
    assert "manifest.csv" in previous
    again = _run(["medflow", "ingest", str(site), str(out), "--params", str(params)], tmp_path)
    assert again.returncode != 0
    assert INSTRUCTIONS[0] in _output(again)
    assert tree_hashes(out) == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["site", "folder_params", "ingested"]
    ), "something was written beside the output"


def _lock_without_pull(repo: Path) -> dict:
    """dvc.lock's stages but the pull, which runs on every repro (always_changed)."""
    stages = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {name: entry for name, entry in stages.items() if name != "pull"}


def test_dvc_repro_without_a_key(reproduced: tuple[Path, str], tmp_path: Path) -> None:
    """In a clone of the reproduced copy: on a folder source the ingest stage fails with the
    instructions and the previous outputs and dvc.lock stay; back on the synthetic demo, the
    stage runs again with the demo key and the warning."""
    repo = clone(reproduced[0], tmp_path / "repo")
    ingested = repo / "data" / "ingested"
    previous, lock = tree_hashes(ingested), _lock_without_pull(repo)
    assert "manifest.csv" in previous

    site = tmp_path / "site"  # outside the repository, as README.md asks of real data
    shutil.copytree(repo / "data" / "synthetic", site)
    set_params(repo, {"data": {"source": str(site)}})
    failed = _run(["dvc", "repro", "ingest"], repo)
    assert failed.returncode != 0
    for part in INSTRUCTIONS:
        assert part in _output(failed), (part, failed.stdout, failed.stderr)
    assert "Running stage 'ingest'" in failed.stdout + failed.stderr  # refused by medflow
    assert tree_hashes(ingested) == previous
    assert _lock_without_pull(repo) == lock  # the pull ran (it always does) and recorded it

    set_params(repo, {"data": {"source": "synthetic"}})
    passed = _run(["dvc", "repro", "--force", "--single-item", "ingest"], repo)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert WARNING in _output(passed)
    # re-ingested under the demo key: new pseudonyms, so new outputs, recorded in dvc.lock
    assert tree_hashes(ingested) != previous
    assert _lock_without_pull(repo) != lock
    status = _run(["dvc", "status", "ingest"], repo)
    assert status.returncode == 0 and "changed" not in status.stdout, status.stdout
