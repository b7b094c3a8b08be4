"""The manifest's coarse patient characteristics: sex and age band."""

from __future__ import annotations

import pytest

from medflow.data.manifest import age_band, sex


@pytest.mark.parametrize(
    ("age", "band"),
    [
        ("000D", "0-17"),
        ("011M", "0-17"),
        ("017Y", "0-17"),
        ("018Y", "18-39"),
        ("039Y", "18-39"),
        ("040Y", "40-59"),
        ("060Y", "60-79"),
        ("079Y", "60-79"),
        ("080Y", "80+"),
        ("104Y", "80+"),  # very old ages identify on their own: one open band
        ("240M", "18-39"),
        ("052W", "0-17"),
    ],
)
def test_age_strings_fall_in_their_band(age: str, band: str) -> None:
    assert age_band(age) == band


@pytest.mark.parametrize("age", [None, "", "45", "045", "045X", "4 5Y", "ABCY", "0045Y"])
def test_absent_or_malformed_ages_have_no_band(age: object) -> None:
    assert age_band(age) == ""


@pytest.mark.parametrize(
    ("value", "expected"),
    [("M", "M"), ("f", "F"), (" O ", "O"), ("", ""), (None, ""), ("U", ""), ("MALE", "")],
)
def test_sex_is_m_f_o_or_blank(value: object, expected: str) -> None:
    assert sex(value) == expected
