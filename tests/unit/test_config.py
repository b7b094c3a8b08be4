import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from medflow import config
from medflow.config import ConfigError, Params, load_params
from tests.helpers.docs import section

ROOT = Path(__file__).resolve().parents[2]


def test_repo_params_load_and_match_defaults_shape():
    p = load_params(ROOT / "params.yaml")
    assert isinstance(p, Params)
    assert p.data.source == "synthetic" and p.data.is_synthetic
    assert p.data.resolve_source(Path("/x/data")) == Path("/x/data/synthetic")


def test_absolute_source_is_kept(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("data: {source: /srv/export}\n")
    assert load_params(f).data.resolve_source(Path("data")) == Path("/srv/export")


def test_every_problem_reported_at_once(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("train: {max_epochs: 0, batch_size: -1}\nbogus: 1\npreprocess: {channels: 2}\n")
    with pytest.raises(ConfigError) as err:
        load_params(f)
    msg = str(err.value)
    for fragment in ("train.max_epochs", "train.batch_size", "bogus", "channels must be 1 or 3"):
        assert fragment in msg


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_split_fractions_must_leave_training_data(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("data: {split: {val_fraction: 0.5, test_fraction: 0.45}}\n")
    with pytest.raises(ConfigError, match="leaves too little for training"):
        load_params(f)


def test_deid_options_and_safe_private_tags(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text(
        "deid:\n  clean_descriptors: true\n  safe_private_tags:\n"
        "    - {group: 0x0019, creator: GEMS_ACQU_01, element: 0x18}\n"
    )
    deid = load_params(f).deid
    assert deid.clean_descriptors and deid.retain_modified_dates  # the rest are defaults
    assert [(t.group, t.creator, t.element) for t in deid.safe_private_tags] == [
        (0x19, "GEMS_ACQU_01", 0x18)
    ]
    f.write_text(
        "deid:\n  retain_dates: true\n"
        "  safe_private_tags: [{group: 0x0018, creator: X, element: 1}]\n"
    )
    with pytest.raises(ConfigError) as err:
        load_params(f)
    assert "retain_dates" in str(err.value) and "private groups are odd" in str(err.value)


# params.yaml and config.py: one set of values, every field explained once


def _sections() -> list[type[BaseModel]]:
    """Every model of medflow.config (sections and the models inside them)."""
    return [
        c
        for c in vars(config).values()
        if isinstance(c, type) and issubclass(c, BaseModel) and c.__module__ == config.__name__
    ]


def _section_of(field: FieldInfo) -> type[BaseModel] | None:
    """The model a field holds, when it holds one (not a list or dict of them)."""
    kind = field.annotation
    return kind if isinstance(kind, type) and issubclass(kind, BaseModel) else None


def _key_paths(raw: dict, model: type[BaseModel], prefix: str = "") -> set[str]:
    """Dotted paths of the keys of `raw`, descending into the keys that are sections."""
    fields = {f.alias or name: f for name, f in model.model_fields.items()}
    paths = set()
    for key, value in raw.items():
        paths.add(prefix + key)
        inner = _section_of(fields[key]) if key in fields else None
        if inner is not None and isinstance(value, dict):
            paths |= _key_paths(value, inner, f"{prefix}{key}.")
    return paths


def _field_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    paths = set()
    for name, field in model.model_fields.items():
        key = field.alias or name
        paths.add(prefix + key)
        inner = _section_of(field)
        if inner is not None:
            paths |= _field_paths(inner, f"{prefix}{key}.")
    return paths


def test_defaults_are_the_values_of_params_yaml():
    """A key deleted from params.yaml falls back to the same value: nothing loosens."""
    assert Params().model_dump() == load_params(ROOT / "params.yaml").model_dump()


def test_params_yaml_names_every_field_and_nothing_else():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    in_yaml, in_code = _key_paths(raw, Params), _field_paths(Params)
    assert in_code - in_yaml == set(), "fields missing from params.yaml"
    assert in_yaml - in_code == set(), "params.yaml keys that are no field"
    assert "validate.drift.label_balance.max_change" in in_code  # the walk goes deep


def test_a_missing_key_takes_the_params_yaml_value(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("gate: {min_auroc: 0.9}\nvalidate: {min_rows: 16}\n")
    p = load_params(f)
    assert p.gate.max_ece == 0.15 and p.gate.min_auroc_ci_low == 0.75
    assert p.gate.max_worse_than_champion["auroc"] == 0.02
    assert p.validate_.min_rows == 16 and "RF" in p.validate_.allowed_modalities


def test_validate_section_is_read_by_its_alias_and_its_field_name():
    rows = {"min_rows": 16}
    assert Params.model_validate({"validate": rows}).validate_.min_rows == 16
    assert Params(validate_=config.ValidateParams(**rows)).validate_.min_rows == 16
    assert "validate" in Params().model_dump(by_alias=True)


def test_every_field_is_explained_in_config_py():
    undescribed = [
        f"{model.__name__}.{name}"
        for model in _sections()
        for name, field in model.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert len(_sections()) > 15
    assert undescribed == []


def test_params_yaml_comments_are_short():
    """Explanations live in config.py; params.yaml keeps a one-line reminder per key."""
    lines = (ROOT / "params.yaml").read_text().splitlines()
    runs, run = [], 0
    for line in lines:
        run = run + 1 if line.lstrip().startswith("#") else 0
        runs.append(run)
    assert max(runs) <= 3, f"a comment of {max(runs)} lines at line {runs.index(max(runs)) + 1}"


def _defaults_table() -> dict[str, object]:
    """param -> default, from the table of docs/training.md's "## Parameters" section."""
    text = section(
        (ROOT / "docs" / "training.md").read_text(), "## Parameters (`train:` in params.yaml)"
    )
    table = {}
    for line in text.splitlines():
        row = re.match(r"\|\s*`([a-z_.]+)`\s*\|([^|]*)\|", line)
        if row:
            table[row.group(1)] = yaml.safe_load(row.group(2).strip().strip("`"))
    return table


def _flat(values: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[prefix + key] = value
    return out


def test_training_doc_lists_every_train_param_with_its_default():
    assert _defaults_table() == _flat(Params().train.model_dump())
