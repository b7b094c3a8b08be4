"""pyproject.toml declares what medflow's code imports, and imports (or explains) what it
declares: a module that arrives only through another package's dependencies can vanish or
change under us with that package's next release."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"

# Runtime dependencies that no module under src/ imports, and why they are declared.
NOT_IMPORTED = {
    "pylibjpeg": "pydicom's JPEG/JPEG 2000/RLE decoders, plugins pydicom finds itself",
    "python-multipart": "Starlette's multipart parser (medflow.serving.guard) imports it",
    "fastapi": "a ceiling for Prefect's server",
    "psycopg": "SQLAlchemy's PostgreSQL driver for the prediction log (postgresql+psycopg://)",
    "uvloop": "uvicorn's event loop under bentoml serve",
    "httptools": "uvicorn's HTTP parser under bentoml serve",
    "uv": "bentoml build runs the uv program",
    "dicognito": "benchmarks/ingest.py's hand-written loop",
}


def _name(requirement: str) -> str:
    """The PEP 503 normalised project name of a requirement string."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group()).lower()


def _runtime_dependencies() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {_name(r) for r in project["dependencies"]}


def _third_party_imports() -> dict[str, list[str]]:
    """Top-level module -> the files under src/ importing it (stdlib and medflow aside)."""
    found: dict[str, list[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top not in sys.stdlib_module_names and top != "medflow":
                    found.setdefault(top, []).append(str(path.relative_to(ROOT)))
    return found


def test_every_imported_module_is_a_declared_dependency() -> None:
    declared = _runtime_dependencies()
    distributions = packages_distributions()
    imports = _third_party_imports()
    assert {"torch", "pydicom", "starlette", "great_expectations"} <= imports.keys()
    undeclared = {
        module: files[0]
        for module, files in imports.items()
        if not {_name(d) for d in distributions.get(module, [])} & declared
    }
    assert undeclared == {}, "add these to pyproject.toml's dependencies"


def test_every_declared_dependency_is_imported_or_explained() -> None:
    distributions = packages_distributions()
    imported = {_name(d) for m in _third_party_imports() for d in distributions.get(m, [])}
    declared = _runtime_dependencies()
    unexplained = declared - imported - NOT_IMPORTED.keys()
    assert unexplained == set(), "unused: drop them, or say why in NOT_IMPORTED"
    assert NOT_IMPORTED.keys() <= declared
    assert NOT_IMPORTED.keys().isdisjoint(imported), "imported now: remove from NOT_IMPORTED"
