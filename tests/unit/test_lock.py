"""requirements.lock covers pyproject.toml's dependencies, and the Bento's packages
(deploy/bentofile.yaml) are pinned to the locked versions."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def _locked() -> dict[str, Version]:
    pins = re.findall(
        r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", (ROOT / "requirements.lock").read_text(), re.M
    )
    assert len(pins) > 100
    return {canonicalize_name(name): Version(version) for name, version in pins}


def test_the_lock_satisfies_every_declared_dependency() -> None:
    """Fails when pyproject.toml changed and `make lock` was not run."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    locked = _locked()
    requirements = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    stale = []
    for req in map(Requirement, requirements):
        if req.marker is not None and not req.marker.evaluate({"python_version": "3.11"}):
            continue
        version = locked.get(canonicalize_name(req.name))
        if version is None or not req.specifier.contains(version, prereleases=True):
            stale.append(f"{req} (locked: {version})")
    assert stale == [], "run `make lock`"


def test_the_bento_packages_are_pinned_to_the_locked_versions() -> None:
    bentofile = yaml.safe_load((ROOT / "deploy" / "bentofile.yaml").read_text())
    packages = bentofile["python"]["packages"]
    assert "torch==2.13.0" in packages
    locked = _locked()
    differ = []
    for req in map(Requirement, packages):
        (spec,) = req.specifier  # one pin per package
        assert spec.operator == "==", f"{req}: pin it to the locked version"
        version = locked.get(canonicalize_name(req.name))
        # a locked local build (torch 2.13.0+cpu) is pinned by its public version
        if version is None or Version(spec.version) != Version(version.public):
            differ.append(f"{req} (locked: {version})")
    assert differ == [], "pin them to requirements.lock's versions"
