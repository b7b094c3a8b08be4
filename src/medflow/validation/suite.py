"""Great Expectations suites on the manifest, built in code, and the run that checks them.

Each suite runs on one table: the manifest itself, or a table derived from it
(`medflow.validation.tables`) so that a cross-row rule fails on one row naming the culprit.
Thresholds come from ValidateParams; nothing is read from a GX project folder.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
import pandas as pd
from great_expectations.checkpoint import UpdateDataDocsAction
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.data_context.types.base import ProgressBarsConfig
from great_expectations.expectations.row_conditions import Column

from medflow.config import DriftCheckParams, DriftParams, ValidateParams
from medflow.data.manifest import COLUMNS, IDENTIFYING_COLUMNS, SPLITS
from medflow.validation import docs_site
from medflow.validation.drift import CHECKS, SEGMENTATION
from medflow.validation.mask_files import FRACTION_TOLERANCE
from medflow.validation.tables import NEEDS, ROW_KEYS

DOCS_SITE = "medflow"
PARTIAL_UNEXPECTED_COUNT = 20

# Every later stage needs these: an image without one cannot be trained on or traced.
REQUIRED = ("image_id", "file", "patient_id", "label", "split", "content_hash")


@dataclass(frozen=True)
class SuiteSpec:
    """A named list of expectations and the table they run on."""

    name: str
    table: str
    expectations: list[gxe.Expectation]


@dataclass(frozen=True)
class SuiteRun:
    """GX results, one per suite that ran, and the expectations that could not run."""

    results: list[Any]  # ExpectationSuiteValidationResult
    skipped: list[dict[str, Any]] = field(default_factory=list)


def identifying_column_regex(names: Sequence[str] = IDENTIFYING_COLUMNS) -> str:
    """A case-insensitive regex matching exactly one of the identifying DICOM keywords."""
    return "(?i)^\\s*(?:" + "|".join(re.escape(n) for n in names) + ")\\s*$"


def build_suites(
    params: ValidateParams, class_names: Sequence[str], task: str = "classification"
) -> list[SuiteSpec]:
    """The validate stage's suites, one per table, in report order; segmentation (data.task)
    adds the mask rules.

    One suite per table is the GX layout (a suite describes one asset), and each suite costs a
    Data Docs page build, so rule groups are sections of a suite rather than suites.
    """
    segmentation = task == SEGMENTATION
    return [
        SuiteSpec("manifest", "manifest", _manifest_checks(params, class_names, segmentation)),
        *_integrity_suites(class_names),
        *_balance_suites(params),
        *(_mask_suites(params, class_names) if segmentation else []),
    ]


def _manifest_checks(
    params: ValidateParams, class_names: Sequence[str], segmentation: bool = False
) -> list[gxe.Expectation]:
    """The manifest suite: schema, completeness, value sets and ranges, uniqueness."""
    value_checks = [*_value_checks(params, class_names), *_image_statistics_checks(params)]
    if segmentation:
        value_checks += _mask_column_checks(params)
    # Set and range checks ignore nulls, so every column they check must also be non-null;
    # pixel_spacing alone may be absent (then NaN), up to min_pixel_spacing_present.
    checked = [c for e in value_checks for c in sorted(_columns_of(e))]
    not_null = dict.fromkeys([*REQUIRED, *(["mask_file"] if segmentation else []), *checked])
    return [
        # schema
        gxe.ExpectTableColumnsToMatchSet(column_set=list(COLUMNS), exact_match=False),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        # completeness
        *(gxe.ExpectColumnValuesToNotBeNull(column=c) for c in not_null),
        # value sets and ranges
        *value_checks,
        *_spacing_checks(params),
        # uniqueness
        *_uniqueness_checks(),
    ]


def _value_checks(params: ValidateParams, class_names: Sequence[str]) -> list[gxe.Expectation]:
    """Value sets and ranges of the label, split and DICOM attribute columns."""
    labels = list(range(len(class_names)))
    return [
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=labels),
        gxe.ExpectColumnValuesToBeInSet(column="label_name", value_set=list(class_names)),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
        gxe.ExpectColumnValuesToBeInSet(
            column="modality", value_set=list(params.allowed_modalities)
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="rows", min_value=params.min_rows, max_value=params.max_rows
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="columns", min_value=params.min_columns, max_value=params.max_columns
        ),
        gxe.ExpectColumnValuesToBeBetween(column="frames", min_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="frame", min_value=0),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="frames",
            column_B="frame",
            meta={"rule": "frame < frames"},
            notes="frame is a 0-based index into the file's frames.",
        ),
        gxe.ExpectColumnValuesToBeBetween(column="bits_stored", min_value=1, max_value=32),
    ]


def _image_statistics_checks(params: ValidateParams) -> list[gxe.Expectation]:
    """Image statistics: a blank, black or saturated frame, or a failed decode."""
    return [
        gxe.ExpectColumnValuesToBeBetween(
            column="pixel_std",
            min_value=0,
            strict_min=True,
            mostly=1.0,
            notes="A constant image (blank, or a failed decode) has pixel_std 0.",
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="pixel_constant_fraction",
            min_value=0,
            max_value=params.max_constant_fraction,
            mostly=1.0,
            notes="Share of pixels at the frame's min or max: 1.0 is blank; near 1 is a black,"
            " saturated or clipped image.",
        ),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="pixel_max",
            column_B="pixel_min",
            mostly=1.0,
            meta={"rule": "pixel_max > pixel_min"},
        ),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="pixel_mean",
            column_B="pixel_min",
            or_equal=True,
            mostly=1.0,
            meta={"rule": "pixel_mean >= pixel_min"},
            notes="A mean outside [min, max] means the statistics were computed wrongly.",
        ),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="pixel_max",
            column_B="pixel_mean",
            or_equal=True,
            mostly=1.0,
            meta={"rule": "pixel_max >= pixel_mean"},
        ),
    ]


def _mask_column_checks(params: ValidateParams) -> list[gxe.Expectation]:
    """Segmentation: the mask columns' ranges, their agreement, and the lesion area."""
    empty, lesion = Column("mask_fraction") == 0, Column("mask_fraction") > 0
    low, high = params.min_mask_fraction, params.max_mask_fraction
    return [
        gxe.ExpectColumnValuesToBeBetween(column="mask_fraction", min_value=0, max_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="mask_components", min_value=0),
        gxe.ExpectColumnValuesToBeInSet(
            column="mask_components",
            value_set=[0],
            row_condition=empty,
            meta={"rule": "mask_components 0 where mask_fraction is 0"},
            notes="An empty mask has no connected lesion.",
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="mask_components",
            min_value=1,
            row_condition=lesion,
            meta={"rule": "mask_components >= 1 where mask_fraction > 0"},
            notes="A non-empty mask has at least one connected lesion.",
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="mask_fraction",
            min_value=low,
            max_value=high,
            row_condition=lesion,
            meta={"rule": f"lesion area: {low} <= mask_fraction <= {high} where not empty"},
            notes="Share of the frame in any segment, of the non-empty masks (params"
            " validate.min_mask_fraction, max_mask_fraction): a mask covering nearly the whole"
            " frame is more often inverted or misplaced than a lesion.",
        ),
    ]


def _mask_suites(params: ValidateParams, class_names: Sequence[str]) -> list[SuiteSpec]:
    """Segmentation: each mask file against its row, and the share of empty masks per split."""
    planes = len(class_names) - 1
    return [
        SuiteSpec(
            "mask_files",
            "masks",
            [
                gxe.ExpectColumnValuesToBeNull(
                    column="mask_error",
                    meta={
                        "rule": "mask file readable: a (K, H, W) uint8 .npy in the ingest folder"
                    },
                    notes="One row per manifest row; mask_error says why its mask_file could"
                    " not be read (missing, not a .npy, wrong number of axes or dtype).",
                ),
                gxe.ExpectColumnValuesToBeInSet(
                    column="mask_planes",
                    value_set=[planes],
                    meta={"rule": f"{planes} mask plane(s): K = len(class_names) - 1"},
                    notes="One plane per segment: class_names[0] is the background.",
                ),
                gxe.ExpectColumnPairValuesToBeEqual(
                    column_A="mask_rows",
                    column_B="rows",
                    ignore_row_if="either_value_is_missing",
                    meta={"rule": "mask height = image rows"},
                    notes="The mask is in the image's own geometry: (K, rows, columns).",
                ),
                gxe.ExpectColumnPairValuesToBeEqual(
                    column_A="mask_columns",
                    column_B="columns",
                    ignore_row_if="either_value_is_missing",
                    meta={"rule": "mask width = image columns"},
                ),
                gxe.ExpectColumnValuesToBeInSet(
                    column="mask_values",
                    value_set=["0", "1", "0,1"],
                    meta={"rule": "mask values 0 and 1 only"},
                    notes="mask_values lists the distinct values in the file.",
                ),
                gxe.ExpectColumnPairValuesToBeEqual(
                    column_A="label",
                    column_B="mask_label",
                    ignore_row_if="either_value_is_missing",
                    meta={"rule": "label = highest class in the mask (plane k: k + 1; empty: 0)"},
                ),
                gxe.ExpectColumnValuesToBeBetween(
                    column="fraction_difference",
                    max_value=FRACTION_TOLERANCE,
                    meta={"rule": f"mask_fraction = the file's, within {FRACTION_TOLERANCE}"},
                    notes="|recorded mask_fraction - share of the file's pixels in any plane|.",
                ),
            ],
        ),
        SuiteSpec(
            "empty_masks",
            "empty_masks",
            [
                gxe.ExpectColumnValuesToBeBetween(
                    column="empty_fraction",
                    min_value=params.min_empty_mask_fraction,
                    max_value=params.max_empty_mask_fraction,
                    meta={
                        "rule": f"share of empty masks per split within"
                        f" [{params.min_empty_mask_fraction}, {params.max_empty_mask_fraction}]"
                    },
                    notes="One row per split; empty_fraction is the share of its images whose"
                    " mask is empty (mask_fraction 0).",
                )
            ],
        ),
    ]


def _spacing_checks(params: ValidateParams) -> list[gxe.Expectation]:
    """pixel_spacing's range, and how often it may be absent."""
    spacing: list[gxe.Expectation] = [
        gxe.ExpectColumnValuesToBeBetween(
            column="pixel_spacing",
            min_value=params.min_pixel_spacing,
            max_value=params.max_pixel_spacing,
            notes="mm; files without PixelSpacing have NaN, which this range lets through.",
        )
    ]
    if params.min_pixel_spacing_present > 0:
        spacing.append(
            gxe.ExpectColumnValuesToNotBeNull(
                column="pixel_spacing", mostly=params.min_pixel_spacing_present
            )
        )
    return spacing


def _uniqueness_checks() -> list[gxe.Expectation]:
    """One row per image, per frame of a file, and per frame of a content."""
    return [
        gxe.ExpectColumnValuesToBeUnique(column="image_id"),
        gxe.ExpectCompoundColumnsToBeUnique(
            column_list=["sop_instance_id", "frame"],
            meta={"rule": "unique (sop_instance_id, frame) pairs"},
            notes="One row per frame of a file: the same frame twice is a duplicate sample.",
        ),
        gxe.ExpectCompoundColumnsToBeUnique(
            column_list=["content_hash", "frame"],
            meta={"rule": "unique (content_hash, frame) pairs"},
            notes="The same file twice is a duplicate image (a multi-frame file gives one row"
            " per frame, with one content hash).",
        ),
    ]


def _integrity_suites(class_names: Sequence[str]) -> list[SuiteSpec]:
    """Cross-row rules on derived tables: label names, identifying columns, patient leakage."""
    return [
        SuiteSpec(
            "label_names",
            "label_pairs",
            [
                gxe.ExpectColumnPairValuesToBeInSet(
                    column_A="label",
                    column_B="label_name",
                    value_pairs_set=[(i, name) for i, name in enumerate(class_names)],
                    notes="One row per distinct (label, label_name) pair in the manifest;"
                    " label_name must be class_names[label].",
                )
            ],
        ),
        SuiteSpec(
            "identifying_columns",
            "manifest_columns",
            [
                gxe.ExpectColumnValuesToNotMatchRegex(
                    column="column",
                    regex=identifying_column_regex(),
                    meta={"rule": "no identifying DICOM keyword, in any letter case"},
                    notes="One row per manifest column. No identifying DICOM keyword may be a"
                    " column, in any letter case: the manifest carries pseudonyms only.",
                )
            ],
        ),
        SuiteSpec(
            "patient_leakage",
            "patient_splits",
            [
                gxe.ExpectColumnValuesToBeBetween(
                    column="n_splits",
                    max_value=1,
                    notes="One row per patient pseudonym; n_splits counts the splits holding"
                    " the patient's images. More than one leaks the patient into evaluation.",
                )
            ],
        ),
    ]


def _balance_suites(params: ValidateParams) -> list[SuiteSpec]:
    """Class balance: images per (split, class), and each class's share of all images."""
    return [
        SuiteSpec(
            "class_balance",
            "class_balance",
            [
                gxe.ExpectColumnValuesToBeBetween(
                    column="n_images",
                    min_value=params.min_images_per_class_per_split,
                    notes="One row per (split, class), zero counts included.",
                )
            ],
        ),
        SuiteSpec(
            "class_fractions",
            "class_fractions",
            [
                gxe.ExpectColumnValuesToBeBetween(
                    column="fraction",
                    min_value=params.min_class_fraction,
                    max_value=params.max_class_fraction,
                    notes="One row per class; fraction is its share of all images.",
                )
            ],
        ),
    ]


DRIFT_SUITES = {"fail": "drift", "warn": "drift_warnings"}


def build_drift_suites(params: DriftParams, checks: Sequence[str] = CHECKS) -> list[SuiteSpec]:
    """The drift checks (`medflow.validation.drift.checks(task)`) on the drift table, split by
    action: "drift" (its failures fail the stage) and "drift_warnings" (reported only). A
    suite with no checks is left out."""
    by_action: dict[str, list[gxe.Expectation]] = {a: [] for a in DRIFT_SUITES}
    for check in checks:
        rule: DriftCheckParams = getattr(params, check)
        by_action[rule.action].append(
            gxe.ExpectColumnValuesToBeBetween(
                column="change",
                max_value=rule.max_change,
                row_condition=Column("check") == check,
                meta={"rule": f"{check} change <= {rule.max_change}", "check": check},
                notes=f"{check}: one row per compared quantity (params validate.drift.{check}).",
            )
        )
    return [
        SuiteSpec(name, "drift", by_action[action])
        for action, name in DRIFT_SUITES.items()
        if by_action[action]
    ]


def _columns_of(expectation: gxe.Expectation) -> set[str]:
    names = [getattr(expectation, a, None) for a in ("column", "column_A", "column_B")]
    names += list(getattr(expectation, "column_list", None) or [])
    return {n for n in names if isinstance(n, str)}


def _context(docs_dir: Path) -> Any:
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    # An ephemeral context would write its docs under a random $TMPDIR folder; pin them.
    ctx.add_data_docs_site(site_name=DOCS_SITE, site_config=docs_site.site_config(docs_dir))
    return ctx


def run_suites(
    suites: Sequence[SuiteSpec], tables: Mapping[str, pd.DataFrame | None], docs_dir: Path
) -> SuiteRun:
    """Run every suite on its table with one checkpoint per table; Data Docs go to docs_dir.

    An expectation whose column is absent, or a suite whose derived table could not be built
    (None), is not run but listed in `skipped`; the manifest's column-set check fails then too.
    """
    ctx = _context(docs_dir)
    source = ctx.data_sources.add_pandas(name="manifest_tables")
    run_id = RunIdentifier(run_name="validate", run_time=datetime.now(UTC))
    results: dict[str, Any] = {}
    skipped: list[dict[str, Any]] = []

    for table in dict.fromkeys(s.table for s in suites):
        df = tables.get(table)
        on_table = [s for s in suites if s.table == table]
        if df is None:
            reason = f"table {table} needs manifest column(s) {', '.join(NEEDS.get(table, ()))}"
            skipped += [_skip(s.name, e, reason) for s in on_table for e in s.expectations]
            continue
        batch = source.add_dataframe_asset(name=table).add_batch_definition_whole_dataframe("whole")
        definitions = []
        for spec in on_table:
            suite = ctx.suites.add(gx.ExpectationSuite(name=spec.name))
            for e in spec.expectations:
                missing = _columns_of(e) - set(df.columns)
                if missing:
                    skipped.append(_skip(spec.name, e, f"missing column(s) {sorted(missing)}"))
                else:
                    suite.add_expectation(e)
            definitions.append(
                ctx.validation_definitions.add(
                    gx.ValidationDefinition(name=spec.name, data=batch, suite=suite)
                )
            )
        keys = [k for k in ROW_KEYS.get(table, []) if k in df.columns]
        result_format: dict[str, Any] = {
            "result_format": "SUMMARY",
            "partial_unexpected_count": PARTIAL_UNEXPECTED_COUNT,
        }
        if keys:
            result_format["unexpected_index_column_names"] = keys
        checkpoint = ctx.checkpoints.add(
            gx.Checkpoint(
                name=table,
                validation_definitions=definitions,
                actions=[UpdateDataDocsAction(name="update_data_docs", site_names=[DOCS_SITE])],
                result_format=result_format,
            )
        )
        outcome = checkpoint.run(batch_parameters={"dataframe": df}, run_id=run_id)
        for vr in outcome.run_results.values():
            # GX groups results by metric; report them in declaration order (schema first).
            order = {e.id: i for i, e in enumerate(ctx.suites.get(vr.suite_name).expectations)}
            vr.results.sort(key=lambda r: order.get(r.expectation_config.id, len(order)))
            results[vr.suite_name] = vr

    ordered = [results[s.name] for s in suites if s.name in results]
    return SuiteRun(results=ordered, skipped=skipped)


def _skip(suite: str, expectation: gxe.Expectation, reason: str) -> dict[str, Any]:
    columns = sorted(_columns_of(expectation))
    return {
        "suite": suite,
        "expectation": expectation.expectation_type,
        "column": ", ".join(columns) or None,
        "reason": reason,
    }
