from pathlib import Path

import pytest

from medflow.config import ConfigError, Params, load_params

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
