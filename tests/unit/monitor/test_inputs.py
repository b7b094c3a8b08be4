"""Input drift: production profiles judged by the validate stage's own drift suites (real Great
Expectations runs, Data Docs on disk)."""

from pathlib import Path

import pandas as pd
import pytest

from medflow.config import DriftCheckParams, DriftParams
from medflow.monitor.inputs import judge_inputs, production_profile
from medflow.validation import drift
from tests.helpers.manifest_factory import CLASS_NAMES, shifted_manifest, valid_manifest


def _window(manifest: pd.DataFrame) -> pd.DataFrame:
    """Prediction-log rows from manifest rows: the predicted class in label_index."""
    return manifest.rename(columns={"label": "label_index"})[
        ["label_index", "manufacturer", "modality", "pixel_mean", "pixel_std"]
    ]


REFERENCE = drift.profile(valid_manifest(), CLASS_NAMES)


def _judge(window: pd.DataFrame, tmp_path: Path, params: DriftParams | None = None):
    return judge_inputs(
        REFERENCE,
        production_profile(window, CLASS_NAMES),
        params or DriftParams(),
        tmp_path / "docs",
    )


def test_the_training_distribution_breaks_nothing(tmp_path: Path) -> None:
    result = _judge(_window(valid_manifest()), tmp_path)
    assert [(r.name, r.judged, r.broken) for r in result.rules] == [
        ("manufacturer_mix", True, False),
        ("intensity", True, False),
    ]
    assert set(result.table["check"]) == {"manufacturer_mix", "intensity"}  # no label_balance
    assert not result.table["broken"].any() and result.failures == []
    assert (tmp_path / "docs" / "index.html").is_file()


@pytest.mark.parametrize(
    ("manufacturer", "intensity", "broken"),
    [
        (True, False, {"manufacturer_mix"}),
        (False, True, {"intensity"}),
        (True, True, {"manufacturer_mix", "intensity"}),
    ],
)
def test_a_shifted_site_breaks_its_rules(tmp_path: Path, manufacturer, intensity, broken) -> None:
    window = _window(shifted_manifest(labels=True, manufacturer=manufacturer, intensity=intensity))
    result = _judge(window, tmp_path)
    assert {r.name for r in result.rules if r.broken} == broken
    flagged = set(result.table.loc[result.table["broken"], "check"])
    assert flagged == broken  # the rows GX found out of bounds, per check
    assert {f["rule"].split()[0] for f in result.failures} == broken
    by_name = {r.name: r for r in result.rules}
    if "manufacturer_mix" in broken:
        rule = by_name["manufacturer_mix"]
        assert rule.score == pytest.approx(0.5) and rule.threshold == 0.25
        assert "Other Vendor 0.00->0.50" in rule.detail
    if "intensity" in broken:
        assert by_name["intensity"].score >= 40  # +500 with a reference spread of ~6
        assert "5 of 5 compared quantities above 1" in by_name["intensity"].detail
    # what the suites failed on is in their Data Docs too
    pages = "".join(p.read_text() for p in (tmp_path / "docs").rglob("*.html"))
    assert "drift_warnings" in pages


def test_either_action_breaks_the_rule_and_thresholds_are_validates(tmp_path: Path) -> None:
    window = _window(shifted_manifest(labels=False, manufacturer=True, intensity=False))
    strict = DriftParams(manufacturer_mix=DriftCheckParams(max_change=0.25, action="fail"))
    assert {r.name for r in _judge(window, tmp_path / "a", strict).rules if r.broken} == {
        "manufacturer_mix"
    }
    lenient = DriftParams(manufacturer_mix=DriftCheckParams(max_change=0.6))
    assert not any(r.broken for r in _judge(window, tmp_path / "b", lenient).rules)


def test_a_modality_the_training_data_lacks_is_not_compared(tmp_path: Path) -> None:
    window = _window(valid_manifest()).assign(modality="MR")
    result = _judge(window, tmp_path)
    intensity = next(r for r in result.rules if r.name == "intensity")
    assert not intensity.judged and not intensity.broken
    assert "intensity of modality CR: no images in the current dataset" in intensity.detail
    assert "intensity of modality MR: no images in the reference" in intensity.detail


def test_the_profile_needs_the_logged_columns() -> None:
    with pytest.raises(ValueError, match=r"lack columns \['pixel_std'\]"):
        production_profile(_window(valid_manifest()).drop(columns="pixel_std"), CLASS_NAMES)
