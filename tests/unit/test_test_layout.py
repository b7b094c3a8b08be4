"""The tests' own layout: shared helpers live in tests/helpers, never in a test module or conftest.

pytest finds fixtures in conftest.py files by itself; anything imported by name comes from
tests/helpers. Importing a test module runs it twice under two names and hides its tests'
dependencies; importing a conftest gives a second copy of its fixtures' module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
HELPERS = TESTS / "helpers"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_test_or_conftest(module: str) -> bool:
    return any(p == "conftest" or p.startswith("test_") for p in module.split("."))


def forbidden_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """The imports in `source` (the text of `module`) that name a test module or a conftest.

    Relative imports are resolved against `module`; `from pkg import test_x` counts too.
    """
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            origin = ".".join([*base, *([node.module] if node.module else [])])
            names = [f"{origin}.{alias.name}" for alias in node.names]
            targets = [origin] if _is_test_or_conftest(origin) else names
        else:
            continue
        found += [f"line {node.lineno}: {t}" for t in targets if _is_test_or_conftest(t)]
    return found


def _python_files() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts)


def test_no_file_under_tests_imports_a_test_module_or_a_conftest() -> None:
    problems = []
    for path in _python_files():
        module = _module_name(path)
        found = forbidden_imports(path.read_text(), module, path.name == "__init__.py")
        problems += [f"{path.relative_to(ROOT)} {f}" for f in found]
    assert not problems, "move what these import into tests/helpers:\n" + "\n".join(problems)


def test_helper_modules_live_in_tests_helpers() -> None:
    """Every module under tests/ is a test module, a conftest, a package, or in tests/helpers."""
    stray = [
        str(p.relative_to(ROOT))
        for p in _python_files()
        if not p.is_relative_to(HELPERS)
        and not p.name.startswith("test_")
        and p.name not in {"conftest.py", "__init__.py"}
    ]
    assert not stray, f"helper modules outside tests/helpers: {stray}"


@pytest.mark.parametrize(
    ("source", "module", "expected"),
    [
        ("from tests.unit.test_pixels import image_dataset", "tests.unit.test_x", 1),
        ("from tests.conftest import SHARED_DATA", "tests.unit.test_x", 1),
        ("from tests.unit import test_pixels", "tests.unit.test_x", 1),
        ("import tests.integration.conftest", "tests.unit.test_x", 1),
        ("from .conftest import CLASSES", "tests.unit.data.test_x", 1),
        ("from . import test_pixels", "tests.unit.test_x", 1),
        ("def f():\n    from ..test_pixels import write_dicom", "tests.unit.data.test_x", 1),
        ("from tests.helpers.dicom_files import image_dataset", "tests.unit.test_x", 0),
        ("from tests.helpers import broken_files", "tests.unit.test_x", 0),
        ("from medflow.data.ingest import run_ingest", "tests.unit.test_x", 0),
        ("from . import dicom_files", "tests.helpers.ocr", 0),
    ],
)
def test_forbidden_imports_are_found(source: str, module: str, expected: int) -> None:
    assert len(forbidden_imports(source, module)) == expected, forbidden_imports(source, module)
