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
