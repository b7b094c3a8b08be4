"""The Bento's copy of medflow (deploy/bentofile.yaml `include`) holds every medflow module
that the served modules import, so that `bentoml serve` can import the service."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"


def _included() -> set[Path]:
    bentofile = yaml.safe_load((ROOT / "deploy" / "bentofile.yaml").read_text())
    return {path for pattern in bentofile["include"] for path in SRC.glob(pattern)}


def _medflow_imports(path: Path) -> set[str]:
    """Modules of medflow that `path` imports anywhere (at the top or inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n == "medflow" or n.startswith("medflow.")}


def _file_of(module: str) -> Path:
    base = SRC / Path(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def test_every_medflow_module_the_service_imports_is_in_the_bento() -> None:
    included = _included()
    assert SRC / "medflow" / "serving" / "service.py" in included
    missing = {
        f"{path.relative_to(SRC)} imports {module}"
        for path in included
        for module in _medflow_imports(path)
        if _file_of(module) not in included
    }
    assert not missing, sorted(missing)


def test_the_check_sees_a_missing_module(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from medflow.models.ensemble import Composite\n")
    assert _medflow_imports(probe) == {"medflow.models.ensemble"}
    assert _file_of("medflow.models.ensemble") == SRC / "medflow" / "models" / "ensemble.py"
