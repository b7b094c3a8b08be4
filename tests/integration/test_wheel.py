"""medflow as a wheel (`pip install .`, not editable): the CLI, the stages and the Prefect code
import from the installed package alone, with no source checkout on the path."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CHECK = """
import sys
sys.path.insert(0, sys.argv[1])
import medflow
assert medflow.__file__.startswith(sys.argv[1]), medflow.__file__
from typer.testing import CliRunner
from medflow.cli import app
import medflow.orchestration.pipeline, medflow.stages
for args in (["--help"], ["orchestrate", "--help"], ["flow", "--help"], ["--version"]):
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, (args, out.output)
print(list(medflow.stages.STAGES))
assert not any(p.endswith("/flows") or p == sys.argv[2] for p in sys.path), sys.path
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # built from a copy: a build in the checkout leaves build/ there, whose stale files a
    # later build would pack
    tree = tmp_path_factory.mktemp("tree")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "src", tree / "src", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(tree)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return next(out.glob("medflow-*.whl"))


def test_the_wheel_runs_the_cli_without_the_source_tree(wheel, tmp_path):
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(tmp_path / "site")
    proc = subprocess.run(
        [sys.executable, "-c", CHECK, str(tmp_path / "site"), str(ROOT)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "'synth', 'pull', 'ingest', 'validate', 'preprocess'" in proc.stdout


def test_the_wheel_carries_every_module_and_data_file_of_the_package(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    src = ROOT / "src"
    wanted = {
        str(p.relative_to(src))
        for p in (src / "medflow").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert wanted <= names, sorted(wanted - names)
