"""Drift against the last accepted dataset: a compact profile, and its comparison as a table.

A passing run's profile (class and manufacturer shares, per-modality intensity statistics
and, for segmentation, the lesion area of the non-empty masks) becomes the reference;
`compare` gives one row per quantity with its change, which the drift suites check against
params. Plain pandas and JSON: no Great Expectations import.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

FORMAT = 1
SEGMENTATION = "segmentation"
# the checks of a classification dataset; a segmentation dataset adds lesion_area
CHECKS = ("label_balance", "manufacturer_mix", "intensity")
SEGMENTATION_CHECKS = (*CHECKS, "lesion_area")
UNKNOWN = "(unknown)"
QUANTILES = {"q05": 0.05, "q50": 0.5, "q95": 0.95}
# (statistic of the images, summary of it across images) compared per modality
INTENSITY = [
    ("pixel_mean", "mean"),
    ("pixel_mean", "q05"),
    ("pixel_mean", "q50"),
    ("pixel_mean", "q95"),
    ("pixel_std", "mean"),
]
# the same, of mask_fraction across the images whose mask is not empty
LESION_AREA = [("mask_fraction", "mean"), ("mask_fraction", "q50")]
# A change is standardised by the reference spread between images, but never by less than
# this share of the reference value: a near-constant reference would make any change huge.
MIN_RELATIVE_SCALE = 0.01


@dataclass(frozen=True)
class Comparison:
    """The drift table (check, quantity, reference, current, change, detail) and what was
    not compared, with the reason."""

    table: pd.DataFrame
    not_compared: list[str] = field(default_factory=list)


def checks(task: str) -> tuple[str, ...]:
    """The drift checks of a dataset of this task (data.task)."""
    return SEGMENTATION_CHECKS if task == SEGMENTATION else CHECKS


def profile(
    manifest: pd.DataFrame, class_names: Sequence[str], task: str = "classification"
) -> dict[str, Any]:
    """The manifest's compact profile: shares of classes and manufacturers, intensity stats;
    for segmentation also `lesion_area`, the statistics of mask_fraction over non-empty masks.
    """
    n = len(manifest)
    labels = pd.to_numeric(manifest["label"], errors="coerce")
    makers = manifest["manufacturer"].astype("string").fillna("").str.strip()
    makers = makers.mask(makers == "", UNKNOWN)
    intensity: dict[str, Any] = {}
    for modality, rows in manifest.groupby(manifest["modality"].astype("string"), sort=True):
        stats: dict[str, Any] = {"images": len(rows)}
        for column in ("pixel_mean", "pixel_std"):
            stats[column] = _statistics(pd.to_numeric(rows[column], errors="coerce").dropna())
        intensity[str(modality)] = stats
    extra: dict[str, Any] = {}
    if task == SEGMENTATION:
        fractions = pd.to_numeric(manifest["mask_fraction"], errors="coerce").dropna()
        lesions = fractions[fractions > 0]
        extra["lesion_area"] = {
            "images": len(fractions),
            "masked_images": len(lesions),
            "mask_fraction": _statistics(lesions),
        }
    return {
        "format": FORMAT,
        "images": n,
        "label_fractions": {
            name: (int((labels == i).sum()) / n if n else 0.0) for i, name in enumerate(class_names)
        },
        "manufacturer_fractions": {
            str(k): v / n for k, v in sorted(makers.value_counts().to_dict().items())
        },
        "intensity": intensity,
        **extra,
    }


def _statistics(values: pd.Series) -> dict[str, float | None]:
    """Mean, standard deviation and QUANTILES of values (None each when there are none)."""
    return {
        "mean": _float(values.mean()),
        "std": _float(values.std(ddof=0)),
        **{k: _float(values.quantile(q)) for k, q in QUANTILES.items()},
    }


def read_reference(path: Path) -> dict[str, Any] | None:
    """The stored reference profile, or None when there is none yet.

    Raises ValueError naming the file when it exists but is not a profile this code wrote.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        ref = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(_unusable(path, f"unreadable ({exc})")) from exc
    keys = ("label_fractions", "manufacturer_fractions", "intensity")
    if not isinstance(ref, dict) or ref.get("format") != FORMAT or not all(k in ref for k in keys):
        raise ValueError(_unusable(path, f"not a format-{FORMAT} reference profile"))
    return ref


def compare(reference: Mapping[str, Any], current: Mapping[str, Any]) -> Comparison:
    """One row per compared quantity: its reference and current value and the change.

    label_balance: one row per class, change = |current share - reference share|.
    manufacturer_mix: one row, change = total variation distance of the manufacturer shares.
    intensity: per modality in both profiles, one row per INTENSITY statistic, change =
    |current - reference| / reference standard deviation between images.
    lesion_area (when the current profile has one): one row per LESION_AREA statistic of the
    non-empty masks, change as for intensity.
    """
    rows: list[dict[str, Any]] = []
    ref_labels, cur_labels = reference["label_fractions"], current["label_fractions"]
    for name in dict.fromkeys([*cur_labels, *ref_labels]):
        ref, cur = ref_labels.get(name, 0.0), cur_labels.get(name, 0.0)
        rows.append(_row("label_balance", f"share of class {name}", ref, cur, abs(cur - ref)))

    ref_makers, cur_makers = reference["manufacturer_fractions"], current["manufacturer_fractions"]
    changes = {
        m: cur_makers.get(m, 0.0) - ref_makers.get(m, 0.0)
        for m in sorted(set(ref_makers) | set(cur_makers))
    }
    tvd = 0.5 * sum(abs(d) for d in changes.values())
    largest = sorted(changes, key=lambda m: -abs(changes[m]))[:3]
    detail = "; ".join(
        f"{m} {ref_makers.get(m, 0.0):.2f}->{cur_makers.get(m, 0.0):.2f}"
        for m in largest
        if changes[m]
    )
    rows.append(
        # reference 0: the distance of the reference mix from itself
        _row("manufacturer_mix", "manufacturer mix, distance from reference", 0.0, tvd, tvd, detail)
    )

    not_compared = []
    ref_int, cur_int = reference["intensity"], current["intensity"]
    for modality in sorted(set(ref_int) | set(cur_int)):
        if modality not in ref_int or modality not in cur_int:
            where = "reference" if modality not in ref_int else "current dataset"
            not_compared.append(f"intensity of modality {modality}: no images in the {where}")
            continue
        rows += _standardised(
            "intensity", modality, ref_int[modality], cur_int[modality], INTENSITY, not_compared
        )
    if "lesion_area" in current:
        ref_area, cur_area = reference.get("lesion_area"), current["lesion_area"]
        if ref_area is None:
            not_compared.append("lesion area: the reference profile has none")
        elif not ref_area["masked_images"] or not cur_area["masked_images"]:
            where = "reference" if not ref_area["masked_images"] else "current dataset"
            not_compared.append(f"lesion area: no non-empty masks in the {where}")
        else:
            rows += _standardised(
                "lesion_area",
                "lesion area:",
                ref_area,
                cur_area,
                LESION_AREA,
                not_compared,
            )
    table = pd.DataFrame(rows)  # never empty: the manufacturer row is always there
    for column in ("check", "quantity", "detail"):
        table[column] = table[column].astype("string")
    return Comparison(table=table, not_compared=not_compared)


def _standardised(
    check: str,
    prefix: str,
    reference: Mapping[str, Any],
    current: Mapping[str, Any],
    statistics: Sequence[tuple[str, str]],
    not_compared: list[str],
) -> list[dict[str, Any]]:
    """One row per (column, statistic): |current - reference| in reference standard
    deviations between images, never less than MIN_RELATIVE_SCALE of the reference value.
    A statistic missing on either side is appended to not_compared instead."""
    rows = []
    for column, stat in statistics:
        ref_stats, cur_stats = reference[column], current[column]
        ref, cur = ref_stats[stat], cur_stats[stat]
        if ref is None or cur is None:
            not_compared.append(f"{prefix} {stat} of {column}: no values")
            continue
        scale = max(ref_stats["std"] or 0.0, MIN_RELATIVE_SCALE * abs(ref), 1e-12)
        rows.append(
            _row(
                check,
                f"{prefix} {stat} of {column}",
                ref,
                cur,
                abs(cur - ref) / scale,
                f"reference sd {ref_stats['std']:.4g}",
            )
        )
    return rows


def _row(
    check: str, quantity: str, reference: float, current: float, change: float, detail: str = ""
) -> dict[str, Any]:
    return {
        "check": check,
        "quantity": quantity,
        "reference": round(float(reference), 6),
        "current": round(float(current), 6),
        "change": round(float(change), 6),
        "detail": detail,
    }


def _float(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _unusable(path: Path, why: str) -> str:
    return (
        f"drift reference {path} is {why}; delete it to start afresh: the next run that passes"
        " writes a new reference (drift is not checked on that run)"
    )
