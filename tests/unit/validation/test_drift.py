"""The drift profile and its comparison, in plain pandas (no Great Expectations run)."""

from __future__ import annotations

import json

import pytest

from medflow.validation.drift import MIN_RELATIVE_SCALE, compare, profile, read_reference
from tests.helpers.manifest_factory import CLASS_NAMES, shifted_manifest, valid_manifest


def _changes(reference: dict, current: dict) -> dict[str, float]:
    table = compare(reference, current).table
    return dict(zip(table["quantity"], table["change"], strict=True))


def test_profile_is_json_and_compares_equal_to_itself() -> None:
    p = profile(valid_manifest(), CLASS_NAMES)
    assert json.loads(json.dumps(p)) == p
    assert set(_changes(p, p).values()) == {0.0}


def test_label_shift_is_the_change_of_each_class_share() -> None:
    ref = profile(valid_manifest(), CLASS_NAMES)
    cur = profile(shifted_manifest(manufacturer=False, intensity=False), CLASS_NAMES)
    changes = _changes(ref, cur)
    assert changes["share of class lesion"] == pytest.approx(0.2)
    assert changes["share of class normal"] == pytest.approx(0.2)
    assert changes["manufacturer mix, distance from reference"] == 0


def test_manufacturer_mix_is_the_total_variation_distance() -> None:
    ref = profile(valid_manifest(), CLASS_NAMES)
    cur = profile(shifted_manifest(labels=False, intensity=False), CLASS_NAMES)
    table = compare(ref, cur).table
    row = table[table["check"] == "manufacturer_mix"].iloc[0]
    assert row["change"] == pytest.approx(0.5)
    assert "Other Vendor 0.00->0.50" in row["detail"]


def test_intensity_change_is_in_reference_standard_deviations() -> None:
    ref = profile(valid_manifest(), CLASS_NAMES)
    cur = profile(shifted_manifest(labels=False, manufacturer=False), CLASS_NAMES)
    stats = ref["intensity"]["CR"]["pixel_mean"]
    # the spread (~5.8) is below 1% of the mean (~1010): the floor is the scale
    scale = max(stats["std"], MIN_RELATIVE_SCALE * stats["mean"])
    assert scale == MIN_RELATIVE_SCALE * stats["mean"]
    assert _changes(ref, cur)["CR mean of pixel_mean"] == pytest.approx(500 / scale, rel=1e-4)
    wide = valid_manifest().assign(pixel_mean=lambda d: 1000.0 + 100 * (d.index % 3))
    ref = profile(wide, CLASS_NAMES)
    cur = profile(wide.assign(pixel_mean=wide["pixel_mean"] + 50), CLASS_NAMES)
    sd = ref["intensity"]["CR"]["pixel_mean"]["std"]
    assert _changes(ref, cur)["CR mean of pixel_mean"] == pytest.approx(50 / sd, rel=1e-4)


def test_a_modality_on_one_side_only_is_listed_not_compared() -> None:
    ref = profile(valid_manifest(), CLASS_NAMES)
    df = valid_manifest()
    df.loc[df.index[:4], "modality"] = "CT"
    comparison = compare(ref, profile(df, CLASS_NAMES))
    assert comparison.not_compared == ["intensity of modality CT: no images in the reference"]
    assert not comparison.table["quantity"].str.startswith("CT ").any()


def test_read_reference_absent_none_and_foreign_file_refused(tmp_path) -> None:
    path = tmp_path / "profile.json"
    assert read_reference(path) is None
    path.write_text('{"format": 99}')
    with pytest.raises(ValueError, match="not a format-1 reference profile"):
        read_reference(path)
