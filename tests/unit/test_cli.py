"""The `medflow` command line: stages from the registry, help everywhere, exit codes as
README.md documents them."""

import json
import re
from importlib.metadata import version
from pathlib import Path

import click
import pytest
import typer
import yaml
from typer.testing import CliRunner

from medflow.cli import app
from medflow.cli.common import ExitCode
from medflow.stages import STAGES
from tests.helpers.handoffs import metrics_values

ROOT = Path(__file__).resolve().parents[2]
RUNNER = CliRunner()
# a complete metrics.json as the evaluate stage writes it, of a model the gate must refuse
REFUSED = metrics_values(auroc=0.6, auroc_ci_low=0.5, specificity=0.5)


def _commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    found = {}
    for name, cmd in group.commands.items():
        found[f"{prefix}{name}"] = cmd
        if isinstance(cmd, click.Group):
            found.update(_commands(cmd, f"{prefix}{name} "))
    return found


def test_stage_commands_are_the_registry_in_dvc_yaml_order():
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(STAGES) == list(dvc)
    commands = _commands(typer.main.get_command(app))
    for name, stage in dvc.items():
        assert name in commands, name
        assert stage["cmd"].split()[:2] == ["medflow", name], stage["cmd"]


def test_every_argument_and_option_has_help():
    missing = [
        f"{path}: {param.name}"
        for path, cmd in _commands(typer.main.get_command(app)).items()
        for param in cmd.params
        if param.name != "help" and not (getattr(param, "help", None) or "").strip()
    ]
    assert not missing, missing
    for path, cmd in _commands(typer.main.get_command(app)).items():
        assert (cmd.help or "").strip(), f"{path} has no help"


def test_version_is_the_installed_distribution():
    out = RUNNER.invoke(app, ["--version"])
    assert out.exit_code == 0 and out.output.strip() == f"medflow {version('medflow')}"


def _documented_exit_codes() -> dict[int, str]:
    """The README's "Exit codes" table: code -> meaning."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Exit codes", 1)[1].split("\n#", 1)[0]
    return {int(m[1]): m[2] for m in re.finditer(r"^\| (\d) \| ([^|]+) \|", section, re.M)}


def test_readme_lists_every_exit_code():
    assert set(_documented_exit_codes()) == {int(c) for c in ExitCode}


@pytest.mark.parametrize(
    ("case", "expected"),
    [("usage", ExitCode.USAGE), ("config", ExitCode.CONFIG), ("gate", ExitCode.GATE_REFUSED),
     ("missing input", ExitCode.FAILED)],
)  # fmt: skip
def test_failures_exit_with_their_documented_code(tmp_path, case, expected):
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps(REFUSED))
    args = {
        "usage": ["gate", "--no-such-option"],
        "config": ["gate", str(metrics), str(tmp_path / "g.json"), "-p", str(tmp_path / "x.yaml")],
        "gate": ["gate", str(metrics), str(tmp_path / "gate.json"), "-p", str(params)],
        "missing input": ["gate", str(tmp_path / "none.json"), str(tmp_path / "g.json"),
                          "-p", str(params)],
    }[case]  # fmt: skip
    out = RUNNER.invoke(app, args)
    assert out.exit_code == expected, out.output
    assert case != "gate" or json.loads((tmp_path / "gate.json").read_text())["passed"] is False
    documented = _documented_exit_codes()[int(expected)].lower()
    assert {"usage": "usage", "config": "params", "gate": "gate", "missing input": "stage"}[
        case
    ] in documented
