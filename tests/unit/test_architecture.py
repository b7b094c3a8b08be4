"""The layers contract of pyproject.toml ([tool.importlinter]): kept by the code, and broken
by an upward import or an import cycle (so the check can fail)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).parent / "lint-imports"


def _lint(src: Path, config: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [str(LINT), "--config", str(config), "--no-cache"],
        cwd=config.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_code_keeps_the_layers_and_has_no_cycles():
    proc = _lint(ROOT / "src", ROOT / "pyproject.toml")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "2 kept, 0 broken" in proc.stdout


@pytest.fixture
def copy(tmp_path):
    shutil.copytree(ROOT / "src" / "medflow", tmp_path / "src" / "medflow")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # the imaging layer (what the Bento imports) reaching up to the registry
        ("imaging/pixels.py", "import medflow.registry.champion", "medflow layers"),
        # two sibling packages importing each other
        ("models/net.py", "import medflow.models.training", "no import cycles"),
    ],
)
def test_an_upward_import_or_a_cycle_breaks_the_contract(copy, module, line, broken):
    path = copy / "src" / "medflow" / module
    path.write_text(path.read_text() + f"\n{line}  # injected by the test\n")
    proc = _lint(copy / "src", copy / "pyproject.toml")
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert f"{broken}" in proc.stdout and "BROKEN" in proc.stdout, proc.stdout[-3000:]
