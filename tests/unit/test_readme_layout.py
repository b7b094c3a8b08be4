"""README.md's Layout section names the tree as it is, packages in their layer order."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "medflow"


def _layout_block() -> str:
    section = (ROOT / "README.md").read_text().split("## Layout\n", 1)[1]
    return section.split("```", 2)[1]


def test_top_level_entries_exist():
    names = re.findall(r"^(\S+)", _layout_block(), re.M)
    assert names, "no entries in README's Layout block"
    for name in names:
        assert (ROOT / name.rstrip("/")).exists(), f"README Layout names {name}: not in the tree"


def test_every_package_and_base_module_is_listed_in_layer_order():
    block = _layout_block().split("\nsrc/medflow/", 1)[1]
    listed = re.findall(r"^  (\w+)/ ", block, re.M)
    packages = sorted(p.name for p in SRC.iterdir() if (p / "__init__.py").is_file())
    assert sorted(listed) == packages
    modules = {p.name for p in SRC.glob("*.py") if p.name != "__init__.py"}
    base_line = next(line for line in block.splitlines() if line.strip().startswith("config.py"))
    assert set(re.findall(r"\w+\.py", base_line)) == modules
    # the order of the layers contract in pyproject.toml (high -> low)
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    order = [m.strip().split(".")[1] for layer in layers for m in re.split(r"[|:]", layer)]
    assert listed == [name for name in order if name in listed]
