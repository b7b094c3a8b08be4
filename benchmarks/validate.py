"""Validate-stage speed against the same rules in plain pandas, in one run on one manifest.

Measures, on a synthetic ingest manifest of --rows rows (realistic columns, 20 images per
patient on average, patient-disjoint splits, every rule met):

1. seconds of `run_validate` (its suites, Data Docs, summary.json and, when the stage takes a
   drift reference, the comparison with the previous dataset's profile), best of --repeat,
   split into Great Expectations' checks, its Data Docs build and the rest;
2. seconds of the same rules in vectorised pandas, from the same manifest.csv to a summary
   file, best of --repeat, and the ratio of 1 to 2;
3. the Great Expectations import, which `medflow validate` pays once per process on top of 1.

Target: 100,000 rows validated in <= 10 s on this machine; the ratio is for information.
It reports, it does not gate: the exit code is 0 whether the target is met or missed.

    .venv/bin/python benchmarks/validate.py                 # 100,000 rows
    .venv/bin/python benchmarks/validate.py --quick         # 10,000 rows
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import logging
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medflow.config import Params, SplitParams, ValidateParams, load_params
from medflow.data.manifest import (
    AGE_BANDS,
    COLUMNS,
    IDENTIFYING_COLUMNS,
    MANIFEST_FILE,
    SPLITS,
    read_manifest,
)
from medflow.data.splits import assign_splits
from medflow.errors import ValidationFailed

ROOT = Path(__file__).resolve().parents[1]

TARGET_SECONDS = 10.0  # for TARGET_ROWS rows, at most
TARGET_ROWS = 100_000
IMAGES_PER_PATIENT = 20  # on average
LESION_SHARE = 0.3  # images of the classes after the first, together
PARTIAL_UNEXPECTED = 20  # offending examples kept per rule, as the stage's result format


@dataclass(frozen=True)
class Modality:
    """What the images of one modality look like in a manifest."""

    share: float  # of studies
    shapes: list[tuple[int, int]]  # (rows, columns), one per series
    bits: list[int]
    photometric: list[str]
    spacing: tuple[float, float] | None  # mm; None: absent from the files (NaN)
    multi_frame: float  # share of multi-frame files (one row each: preprocess.frames first)
    low: tuple[float, float]  # range of the pixel minimum after the modality LUT
    high: tuple[float, float]  # range of the pixel maximum


MODALITIES = {
    "CT": Modality(0.40, [(512, 512)], [12, 16], ["MONOCHROME2"], (0.5, 0.98), 0.0,
                   (-3024, -1024), (1200, 3071)),
    "CR": Modality(0.15, [(2048, 2048), (2500, 2048), (2828, 2320)], [10, 12],
                   ["MONOCHROME1", "MONOCHROME2"], (0.1, 0.2), 0.0, (0, 60), (1023, 4095)),
    "DX": Modality(0.15, [(3000, 2500), (2880, 2880), (3072, 2560)], [14], ["MONOCHROME2"],
                   (0.139, 0.15), 0.0, (0, 200), (9000, 16383)),
    "MR": Modality(0.15, [(256, 256), (384, 384), (512, 512)], [12, 16], ["MONOCHROME2"],
                   (0.4, 1.2), 0.0, (0, 0), (400, 4000)),
    "MG": Modality(0.10, [(4096, 3328), (3328, 2560)], [12, 14], ["MONOCHROME1", "MONOCHROME2"],
                   (0.065, 0.1), 0.0, (0, 100), (3000, 16383)),
    "US": Modality(0.05, [(600, 800), (480, 640), (768, 1024)], [8],
                   ["MONOCHROME2", "RGB", "YBR_FULL_422"], None, 0.3, (0, 0), (200, 255)),
}  # fmt: skip

MANUFACTURERS = [
    "SIEMENS", "GE MEDICAL SYSTEMS", "Philips", "Canon Medical Systems",
    "FUJIFILM Corporation", "Agfa", "Carestream Health", "Hologic, Inc.",
]  # fmt: skip
N_SITES = 12


def _uids(rng: np.random.Generator, n: int) -> np.ndarray:
    """n distinct de-identified UIDs in dicognito's form, 2.25.<128-bit integer>."""
    high, low = (rng.integers(0, 2**63, n, dtype=np.uint64) for _ in range(2))
    uids = np.array([f"2.25.{(int(h) << 64) | int(lo)}" for h, lo in zip(high, low, strict=True)])
    if len(set(uids)) != n:  # 2^-70 odds; a benchmark that checks uniqueness needs it exact
        raise RuntimeError("UID collision in the synthetic manifest: change --seed")
    return uids


def _hex(prefix: str, seed: int, n: int, chars: int) -> np.ndarray:
    return np.array(
        [hashlib.sha256(f"{prefix}/{seed}/{i}".encode()).hexdigest()[:chars] for i in range(n)]
    )


def synthetic_manifest(
    n_rows: int, class_names: Sequence[str], split: SplitParams, seed: int = 0
) -> pd.DataFrame:
    """An ingest manifest of n_rows images that meets every validate rule, as ingest writes it.

    About n_rows / 20 patients with a skewed number of images each (a few large CT series,
    many small studies); 1-3 studies per patient, one modality each; 1-2 series per study, one
    image size, bit depth, photometric and manufacturer each; one row per file
    (preprocess.frames: first, so frame 0 even for cine files); patient-level labels (30 % not
    the first class) and splits from the project's own assign_splits; pixel statistics in each
    modality's units, about 2 % of each image at its minimum or maximum; every hash and UID
    distinct; rows sorted by file, as ingest sorts them.
    """
    rng = np.random.default_rng(seed)
    n_patients = max(n_rows // IMAGES_PER_PATIENT, 1)
    # Every patient gets one image, the rest go by skewed weights: a few patients hold many.
    weights = rng.lognormal(0.0, 1.0, n_patients)
    extra = rng.choice(n_patients, n_rows - n_patients, p=weights / weights.sum())
    patient = np.sort(np.concatenate([np.arange(n_patients), extra]))
    study = patient * 3 + rng.integers(0, rng.integers(1, 4, n_patients)[patient])
    series = study * 2 + rng.integers(0, rng.integers(1, 3, 3 * n_patients)[study])

    names = list(MODALITIES)
    shares = np.array([MODALITIES[m].share for m in names])
    study_modality = rng.choice(len(names), 3 * n_patients, p=shares / shares.sum())
    modality = study_modality[study]
    series_modality = study_modality[np.arange(6 * n_patients) // 2]

    def per_series(choices_of: Callable[[Modality], Sequence[Any]]) -> np.ndarray:
        """One value per series, drawn from its modality's choices; returned per row."""
        out = np.empty(len(series_modality), dtype=object)
        for code, name in enumerate(names):
            choices = list(choices_of(MODALITIES[name]))
            at = np.flatnonzero(series_modality == code)
            out[at] = [choices[i] for i in rng.integers(0, len(choices), len(at))]
        return out[series]

    def per_row(range_of: Callable[[Modality], tuple[float, float] | None]) -> np.ndarray:
        """One uniform draw per row from its modality's range; NaN where there is none."""
        out = np.full(n_rows, np.nan)
        for code, name in enumerate(names):
            at = np.flatnonzero(modality == code)
            if (bounds := range_of(MODALITIES[name])) is not None:
                out[at] = rng.uniform(*bounds, len(at))
        return out

    shape = per_series(lambda m: m.shapes)
    multi = rng.random(n_rows) < np.array([MODALITIES[m].multi_frame for m in names])[modality]
    low, high = per_row(lambda m: m.low).round(), per_row(lambda m: m.high).round()
    span = high - low

    n_classes = len(class_names)
    p_label = [1 - LESION_SHARE] + [LESION_SHARE / (n_classes - 1)] * (n_classes - 1)
    patient_label = rng.choice(n_classes, n_patients, p=p_label)
    patient_ids = np.array(["PSN-" + h for h in _hex("patient", seed, n_patients, 16)])
    sites = np.array(["SITE-" + h for h in _hex("site", seed, N_SITES, 8)], dtype=object)
    patient_site = sites[rng.integers(0, N_SITES, n_patients)]
    patient_site[rng.random(n_patients) < 0.02] = ""  # no InstitutionName in the files
    patient_sex = rng.choice(np.array(["F", "M", "O", ""], dtype=object), n_patients,
                             p=[0.49, 0.48, 0.01, 0.02])  # fmt: skip
    bands = np.array([name for _, name in AGE_BANDS] + [""], dtype=object)
    patient_age_band = rng.choice(bands, n_patients, p=[0.05, 0.2, 0.3, 0.3, 0.13, 0.02])
    splits = assign_splits(pd.DataFrame({"patient_id": patient_ids, "label": patient_label}), split)

    sop = _uids(rng, n_rows)
    content_hash = _hex("file", seed, n_rows, 64)
    label = patient_label[patient]
    df = pd.DataFrame(
        {
            "image_id": sop,
            "file": [f"images/{h}.dcm" for h in content_hash],
            "frame": 0,
            "patient_id": patient_ids[patient],
            "study_id": _uids(rng, 3 * n_patients)[study],
            "series_id": _uids(rng, 6 * n_patients)[series],
            "sop_instance_id": sop,
            "modality": np.array(names)[modality],
            "manufacturer": per_series(lambda m: MANUFACTURERS),
            "site": patient_site[patient],
            # per patient, as the ingest writes them ("" where the files have none)
            "sex": patient_sex[patient],
            "age_band": patient_age_band[patient],
            "rows": [s[0] for s in shape],
            "columns": [s[1] for s in shape],
            "frames": np.where(multi, rng.integers(20, 121, n_rows), 1),
            "pixel_spacing": per_row(lambda m: m.spacing).round(4),
            "bits_stored": per_series(lambda m: m.bits),
            "photometric": per_series(lambda m: m.photometric),
            "label": label,
            "label_name": np.array(class_names)[label],
            "split": [splits[p] for p in patient_ids[patient]],
            "content_hash": content_hash,
            "pixel_mean": (low + span * rng.uniform(0.15, 0.55, n_rows)).round(3),
            "pixel_std": (span * rng.uniform(0.06, 0.22, n_rows)).round(3),
            "pixel_min": low,
            "pixel_max": high,
            "pixel_constant_fraction": rng.beta(2.0, 98.0, n_rows).clip(1e-6, 1.0).round(6),
        }
    )
    return df.sort_values(["file", "frame"], ignore_index=True).astype(COLUMNS)


def write_manifest(df: pd.DataFrame, ingest_dir: Path) -> Path:
    """Write df as ingest_dir/manifest.csv, the way the ingest stage leaves it."""
    ingest_dir.mkdir(parents=True, exist_ok=True)
    df.to_csv(ingest_dir / MANIFEST_FILE, index=False)
    return ingest_dir


# --- the baseline: the stage's rules in vectorised pandas -------------------------------------

# Every later stage needs these (the stage's REQUIRED), then every column a value rule checks:
# set and range rules ignore nulls, so each checked column is also checked for nulls.
REQUIRED = ("image_id", "file", "patient_id", "label", "split", "content_hash")
UNKNOWN_MAKER = "(unknown)"
QUANTILES = {"q05": 0.05, "q50": 0.5, "q95": 0.95}
# (image statistic, its summary across the images of a modality) compared for drift
INTENSITY = [("pixel_mean", s) for s in ("mean", *QUANTILES)] + [("pixel_std", "mean")]


def _mask(condition: pd.Series) -> np.ndarray:
    return condition.to_numpy(dtype=bool, na_value=False)


class _Checks:
    """One result per rule, as the stage's result format has it: how many rows were checked
    and unmet, up to PARTIAL_UNEXPECTED offending rows with their keys, and the verdict."""

    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []

    def add(
        self,
        group: str,
        rule: str,
        table: pd.DataFrame,
        bad: np.ndarray,
        keys: list[str],
        mostly: float = 1.0,
    ) -> None:
        n = int(bad.sum())
        rows = table.loc[bad, keys].head(PARTIAL_UNEXPECTED).to_dict("records") if n else []
        self.results.append(
            {
                "group": group,
                "rule": rule,
                "rows": len(table),
                "unexpected": n,
                "failed": n > (1 - mostly) * len(table),
                "offending": rows,
            }
        )

    def column(self, rule: str, m: pd.DataFrame, column: str, ok: pd.Series) -> None:
        """A column rule as Great Expectations counts it: nulls are neither met nor unmet."""
        bad = _mask(m[column].notna()) & ~_mask(ok)
        self.add("values", rule, m, bad, ["image_id", column])

    def pair(self, rule: str, m: pd.DataFrame, a: str, b: str, ok: pd.Series) -> None:
        """A column-pair rule: rows where both values are null are left out."""
        bad = _mask(m[a].notna() | m[b].notna()) & ~_mask(ok)
        self.add("values", rule, m, bad, ["image_id", a, b])


def _value_rules(m: pd.DataFrame, p: ValidateParams, class_names: Sequence[str]) -> list:
    """(rule, column or column pair, condition) for every set, range and pair rule."""
    name_of = pd.Series(list(class_names), dtype="string")
    return [
        ("label in set", "label", m["label"].isin(range(len(class_names)))),
        ("label_name in set", "label_name", m["label_name"].isin(list(class_names))),
        ("label_name == class_names[label]", ("label", "label_name"),
         m["label"].map(name_of) == m["label_name"]),
        ("split in set", "split", m["split"].isin(SPLITS)),
        ("modality in set", "modality", m["modality"].isin(p.allowed_modalities)),
        ("rows in range", "rows", m["rows"].between(p.min_rows, p.max_rows)),
        ("columns in range", "columns", m["columns"].between(p.min_columns, p.max_columns)),
        ("frames >= 1", "frames", m["frames"] >= 1),
        ("frame >= 0", "frame", m["frame"] >= 0),
        ("frames > frame", ("frames", "frame"), m["frames"] > m["frame"]),
        ("bits_stored in 1..32", "bits_stored", m["bits_stored"].between(1, 32)),
        ("pixel_std > 0", "pixel_std", m["pixel_std"] > 0),
        ("pixel_constant_fraction in range", "pixel_constant_fraction",
         m["pixel_constant_fraction"].between(0, p.max_constant_fraction)),
        ("pixel_max > pixel_min", ("pixel_max", "pixel_min"), m["pixel_max"] > m["pixel_min"]),
        ("pixel_mean >= pixel_min", ("pixel_mean", "pixel_min"),
         m["pixel_mean"] >= m["pixel_min"]),
        ("pixel_max >= pixel_mean", ("pixel_max", "pixel_mean"),
         m["pixel_max"] >= m["pixel_mean"]),
    ]  # fmt: skip


def pandas_profile(m: pd.DataFrame, class_names: Sequence[str]) -> dict[str, Any]:
    """What drift compares: class and manufacturer shares of all images, and per modality the
    mean, spread and quantiles of pixel_mean and pixel_std across its images."""
    n = len(m)
    labels = m["label"].value_counts().reindex(range(len(class_names)), fill_value=0)
    makers = m["manufacturer"].fillna("").str.strip().replace("", UNKNOWN_MAKER)
    by_modality = m.groupby("modality", sort=True)[["pixel_mean", "pixel_std"]]
    summaries = {"mean": by_modality.mean(), "std": by_modality.std(ddof=0)}
    summaries |= {k: by_modality.quantile(q) for k, q in QUANTILES.items()}
    intensity: dict[str, dict] = {}
    for stat, table in summaries.items():
        for modality, row in table.iterrows():
            for column, value in row.items():
                intensity.setdefault(modality, {}).setdefault(column, {})[stat] = value
    return {
        "label_fractions": dict(zip(class_names, (labels / n).tolist(), strict=True)),
        "manufacturer_fractions": makers.value_counts(normalize=True).sort_index().to_dict(),
        "intensity": intensity,
    }


def _drift(ref: dict, cur: dict, p: ValidateParams, checks: _Checks) -> None:
    """Every compared quantity's change against its check's max_change.

    label_balance: |change| of each class's share; manufacturer_mix: total variation distance
    of the manufacturer shares; intensity: per modality in both profiles, |change| of each
    INTENSITY summary in reference standard deviations between images.
    """
    shares = pd.DataFrame({"ref": ref["label_fractions"], "cur": cur["label_fractions"]})
    labels = (shares["cur"].fillna(0) - shares["ref"].fillna(0)).abs()
    mix = pd.DataFrame({"ref": ref["manufacturer_fractions"], "cur": cur["manufacturer_fractions"]})
    tvd = pd.Series(
        {"manufacturer mix": 0.5 * (mix["cur"].fillna(0) - mix["ref"].fillna(0)).abs().sum()}
    )
    intensity = {}
    for modality in sorted(set(ref["intensity"]) & set(cur["intensity"])):
        r, c = ref["intensity"][modality], cur["intensity"][modality]
        for column, stat in INTENSITY:
            scale = max(r[column]["std"], 0.01 * abs(r[column][stat]), 1e-12)
            intensity[f"{modality} {stat} of {column}"] = (
                abs(c[column][stat] - r[column][stat]) / scale
            )
    changes = {"label_balance": labels, "manufacturer_mix": tvd, "intensity": pd.Series(intensity)}
    for check, change in changes.items():
        rule = getattr(p.drift, check)
        table = change.rename("change").rename_axis("quantity").reset_index()
        bad = _mask(table["change"] > rule.max_change)
        checks.add(f"drift ({rule.action})", f"{check} change <= {rule.max_change}", table, bad,
                   ["quantity", "change"])  # fmt: skip


def pandas_validate(
    p: ValidateParams,
    class_names: Sequence[str],
    ingest_dir: Path,
    out_dir: Path,
    reference: Path | None = None,
) -> dict[str, Any]:
    """The stage's rules in vectorised pandas, from manifest.csv to a summary file.

    The same input (read_manifest), rules and thresholds, and result format (unexpected count,
    up to 20 offending rows with their keys); writes summary.json and, when every rule passes,
    the manifest's drift profile (the next reference). No Data Docs. Returns the summary.
    Unlike the stage it assumes every manifest column is present (a speed baseline, not a
    second validator): a missing column raises KeyError.
    """
    m = read_manifest(ingest_dir)
    checks = _Checks()

    # schema, and no identifying DICOM keyword as a column name, in any letter case
    missing = pd.DataFrame({"column": sorted(set(COLUMNS) - set(m.columns))})
    checks.add("schema", "manifest columns", missing, np.ones(len(missing), bool), ["column"])
    checks.add("schema", "rows >= 1", pd.DataFrame({"rows": [len(m)]}), np.array([m.empty]),
               ["rows"])  # fmt: skip
    names = pd.DataFrame({"column": [str(c) for c in m.columns]})
    keyword = "|".join(map(re.escape, IDENTIFYING_COLUMNS))
    named = _mask(names["column"].str.fullmatch(rf"(?i)\s*(?:{keyword})\s*"))
    checks.add("identifying columns", "no identifying column", names, named, ["column"])

    # completeness, value sets, ranges, image statistics
    rules = _value_rules(m, p, class_names)
    checked = [c for _, on, _ in rules for c in sorted([on] if isinstance(on, str) else on)]
    for column in dict.fromkeys([*REQUIRED, *checked]):
        checks.add("not null", f"{column} not null", m, _mask(m[column].isna()), ["image_id"])
    for rule, on, ok in rules:
        if isinstance(on, str):
            checks.column(rule, m, on, ok)
        else:
            checks.pair(rule, m, *on, ok)
    spacing = m["pixel_spacing"].between(p.min_pixel_spacing, p.max_pixel_spacing)
    checks.column("pixel_spacing in range", m, "pixel_spacing", spacing)
    if p.min_pixel_spacing_present > 0:
        absent = _mask(m["pixel_spacing"].isna())
        checks.add("not null", "pixel_spacing present", m, absent, ["image_id"],
                   mostly=p.min_pixel_spacing_present)  # fmt: skip

    # uniqueness
    dup = _mask(m["image_id"].notna() & m["image_id"].duplicated(keep=False))
    checks.add("unique", "image_id unique", m, dup, ["image_id"])
    for column in ("sop_instance_id", "content_hash"):
        dup = _mask(m.duplicated([column, "frame"], keep=False))
        checks.add("unique", f"({column}, frame) unique", m, dup,
                   ["image_id", column, "frame"])  # fmt: skip

    # patient leakage: a patient in more than one split
    splits = m[["patient_id", "split"]].dropna().groupby("patient_id")["split"].nunique()
    leaks = splits.rename("n_splits").reset_index()
    checks.add("patient leakage", "patient in one split", leaks, _mask(leaks["n_splits"] > 1),
               ["patient_id", "n_splits"])  # fmt: skip

    # images per class in every split (zero counts included), each class's share of all images
    grid = pd.MultiIndex.from_product([SPLITS, range(len(class_names))], names=["split", "label"])
    counts = m.groupby(["split", "label"]).size().reindex(grid, fill_value=0)
    balance = counts.rename("n_images").reset_index()
    few = _mask(balance["n_images"] < p.min_images_per_class_per_split)
    checks.add("class balance", "images per class and split", balance, few,
               ["split", "label", "n_images"])  # fmt: skip
    per_class = m["label"].value_counts().reindex(range(len(class_names)), fill_value=0)
    shares = (per_class / len(m)).rename("fraction").reset_index()
    odd = _mask(~shares["fraction"].between(p.min_class_fraction, p.max_class_fraction))
    checks.add("class balance", "class fraction in range", shares, odd, ["label", "fraction"])

    # drift against the last accepted dataset's profile; this one's is the next reference
    current = pandas_profile(m, class_names)
    if reference is not None:
        _drift(json.loads(reference.read_text()), current, p, checks)

    blocking = [c for c in checks.results if c["failed"] and c["group"] != "drift (warn)"]
    summary = {"success": not blocking, "rules": len(checks.results), "failures": blocking,
               "results": checks.results}  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, default=str))
    if not blocking:
        (out_dir / "profile.json").write_text(json.dumps(current))
    return summary


# --- the stage ------------------------------------------------------------------------------


def _stage_takes_reference() -> bool:
    from medflow.validation.stage import run_validate

    return "reference" in inspect.signature(run_validate).parameters


@contextmanager
def _phase_clock() -> Iterator[dict[str, float]]:
    """Seconds spent in GX's checks (ValidationDefinition.run) and in its Data Docs build
    (UpdateDataDocsAction.run) while the block runs: both are wrapped, not altered."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    spent = {"checks": 0.0, "docs": 0.0}
    targets = {"checks": gx.ValidationDefinition, "docs": UpdateDataDocsAction}
    originals = {phase: cls.__dict__["run"] for phase, cls in targets.items()}

    def timed(phase: str, run: Callable) -> Callable:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return run(*args, **kwargs)
            finally:
                spent[phase] += time.perf_counter() - start

        return wrapper

    for phase, cls in targets.items():
        cls.run = timed(phase, originals[phase])
    try:
        yield spent
    finally:
        for phase, cls in targets.items():
            cls.run = originals[phase]


def stage_once(
    p: ValidateParams,
    class_names: Sequence[str],
    ingest_dir: Path,
    out_dir: Path,
    reference: Path | None,
) -> dict[str, Any]:
    """One run_validate into a fresh out_dir: seconds, phases, expectations, verdict."""
    from medflow.validation.stage import run_validate

    kwargs = {"reference": reference} if reference is not None else {}
    with _phase_clock() as phases:
        start = time.perf_counter()
        try:
            result = run_validate(p, class_names, ingest_dir, out_dir, **kwargs)
            success, text, stats = True, result.summary_text, result.statistics
        except ValidationFailed as exc:
            success, text = False, str(exc)
            stats = json.loads((out_dir / "summary.json").read_text())["statistics"]
        seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "checks_s": phases["checks"],
        "docs_s": phases["docs"],
        "expectations": stats["evaluated_expectations"],
        "success": success,
        "summary": text,
    }


def time_stage(
    p: ValidateParams,
    class_names: Sequence[str],
    ingest_dir: Path,
    scratch: Path,
    reference: Path | None,
    repeat: int,
) -> dict[str, Any]:
    """Best of `repeat` stage runs, each from the same drift reference (a passing run would
    replace it with this manifest's profile)."""
    saved = reference.read_bytes() if reference is not None and reference.exists() else None
    runs = []
    for i in range(repeat):
        if saved is not None:
            reference.write_bytes(saved)
        runs.append(stage_once(p, class_names, ingest_dir, scratch / f"validate-{i}", reference))
        shutil.rmtree(scratch / f"validate-{i}")
    if saved is not None:
        reference.write_bytes(saved)
    return min(runs, key=lambda r: r["seconds"])


def time_pandas(
    p: ValidateParams,
    class_names: Sequence[str],
    ingest_dir: Path,
    scratch: Path,
    reference: Path | None,
    repeat: int,
) -> dict[str, Any]:
    best: dict[str, Any] = {"seconds": float("inf")}
    for i in range(repeat):
        start = time.perf_counter()
        summary = pandas_validate(p, class_names, ingest_dir, scratch / f"pandas-{i}", reference)
        seconds = time.perf_counter() - start
        if seconds < best["seconds"]:
            best = {"seconds": seconds, "rules": summary["rules"], "success": summary["success"],
                    "failures": summary["failures"]}  # fmt: skip
    return best


def time_read(ingest_dir: Path, repeat: int) -> float:
    """Seconds of read_manifest alone: the floor both candidates pay."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        read_manifest(ingest_dir)
        best = min(best, time.perf_counter() - start)
    return best


def profile_stage(
    p: ValidateParams,
    class_names: Sequence[str],
    ingest_dir: Path,
    scratch: Path,
    reference: Path | None,
    out: Path,
    lines: int = 15,
) -> None:
    """cProfile of one more stage run (a separate run: profiling slows it down)."""
    import cProfile
    import pstats

    saved = reference.read_bytes() if reference is not None and reference.exists() else None
    profiler = cProfile.Profile()
    profiler.runcall(stage_once, p, class_names, ingest_dir, scratch / "validate-prof", reference)
    if saved is not None:
        reference.write_bytes(saved)
    profiler.dump_stats(out)
    pstats.Stats(str(out), stream=sys.stderr).sort_stats("cumulative").print_stats(lines)


# --- report ---------------------------------------------------------------------------------


def _verdict(seconds: float, rows: int) -> str:
    if rows != TARGET_ROWS:
        return f"n/a (target is for {TARGET_ROWS:,} rows)"
    return "PASS" if seconds <= TARGET_SECONDS else "MISS"


def report(results: dict) -> str:
    """The figures as a table: value, ratio, target, PASS/MISS."""
    setup, stage, pandas = results["setup"], results["stage"], results["pandas"]
    rows, total = setup["rows"], stage["seconds"]
    rest = total - stage["checks_s"] - stage["docs_s"]
    cold = total + results["gx_import_s"]

    def share(seconds: float) -> str:
        return f"{seconds / total:.0%} of the stage"

    table = [
        ("", "measured", "ratio", "target", ""),
        ("read_manifest alone", f"{results['read_s']:.2f} s", "", "", ""),
        (f"pandas: the same {pandas['rules']} rules, from the csv", f"{pandas['seconds']:.2f} s",
         "", "", ""),
        (f"run_validate: {stage['expectations']} expectations", f"{total:.2f} s",
         f"{results['ratio']:.1f}x pandas", f"<= {TARGET_SECONDS:.0f} s", _verdict(total, rows)),
        ("  GX checks (ValidationDefinition.run)", f"{stage['checks_s']:.2f} s",
         share(stage["checks_s"]), "", ""),
        ("  Data Docs (UpdateDataDocsAction.run)", f"{stage['docs_s']:.2f} s",
         share(stage["docs_s"]), "", ""),
        ("  the rest: read, derived tables, drift, GX set-up, summary", f"{rest:.2f} s",
         share(rest), "", ""),
        ("GX import, once per process", f"{results['gx_import_s']:.2f} s", "", "", ""),
        ("run_validate + GX import (a fresh `medflow validate`)", f"{cold:.2f} s", "", "", ""),
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    drift = "with drift against a reference" if setup["drift"] else "no drift reference"
    lines = [
        f"medflow validate benchmark: {rows:,} rows ({setup['patients']:,} patients,"
        f" {setup['csv_mib']:.0f} MiB csv), {drift}, best of {setup['repeat']};"
        f" {setup['cpus']} CPU(s), Python {setup['python']}, great_expectations"
        f" {setup['great_expectations']}, pandas {setup['pandas']}",
        "",
        *("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in table),
        "",
        f"{rows / total:,.0f} rows/s through the stage; {rows / pandas['seconds']:,.0f} rows/s"
        " through the pandas rules",
    ]
    return "\n".join(line.rstrip() for line in lines)


def _warn(message: str) -> None:
    print(f"WARNING: {message}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=TARGET_ROWS, help="manifest rows")
    parser.add_argument("--repeat", type=int, default=1, help="best of n for each candidate")
    parser.add_argument("--quick", action="store_true", help="smoke run: 10,000 rows")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic manifest")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--profile", type=Path, help="write a cProfile of one more stage run here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # GX raises some of its loggers to INFO
        handler.setLevel(logging.WARNING)
    if args.quick:
        args.rows = 10_000
    if args.rows < 1 or args.repeat < 1:
        parser.error(f"need --rows >= 1 and --repeat >= 1, got {args.rows}, {args.repeat}")
    params: Params = load_params(args.params)
    p, class_names = params.validate_, params.data.class_names

    with tempfile.TemporaryDirectory(prefix="medflow-bench-validate-") as tmp:
        scratch = Path(tmp)
        start = time.perf_counter()
        manifest = synthetic_manifest(args.rows, class_names, params.data.split, args.seed)
        ingest_dir = write_manifest(manifest, scratch / "ingested")
        # The previous accepted dataset: another draw, a tenth of the size (a profile is shares
        # and per-modality statistics, so its size does not change the work of a comparison).
        previous = synthetic_manifest(
            max(args.rows // 10, 100), class_names, params.data.split, args.seed + 1
        )
        previous_dir = write_manifest(previous, scratch / "previous")
        print(
            f"manifests: {args.rows:,} + {len(previous):,} rows written in"
            f" {time.perf_counter() - start:.1f} s under {scratch}",
            file=sys.stderr,
        )

        start = time.perf_counter()
        import great_expectations  # noqa: F401 (the stage imports it on its first call)

        gx_import = time.perf_counter() - start
        # The warm-up validates the previous dataset: it sets GX up and, when the stage keeps
        # a drift reference, writes it; every timed run then compares against it.
        reference = scratch / "reference" / "profile.json" if _stage_takes_reference() else None
        print("warm-up: validating the previous dataset ...", file=sys.stderr)
        warm = stage_once(p, class_names, previous_dir, scratch / "warm-up", reference)
        if not warm["success"]:
            _warn(f"the previous dataset failed validation:\n{warm['summary']}")
        if reference is not None and not reference.exists():
            _warn("no drift reference was written: the timed runs do not check drift")
            reference = None
        pandas_reference = scratch / "reference" / "pandas-profile.json" if reference else None
        if pandas_reference is not None:
            profile = pandas_profile(read_manifest(previous_dir), class_names)
            pandas_reference.write_text(json.dumps(profile))

        print(f"measuring run_validate, best of {args.repeat} ...", file=sys.stderr)
        stage = time_stage(p, class_names, ingest_dir, scratch, reference, args.repeat)
        print(f"measuring pandas, best of {args.repeat} ...", file=sys.stderr)
        pandas = time_pandas(p, class_names, ingest_dir, scratch, pandas_reference, args.repeat)
        read_s = time_read(ingest_dir, args.repeat)
        if not stage["success"]:
            # A faster stage that rejects the data is not what is measured: make that loud.
            _warn(f"the benchmark manifest failed validation:\n{stage['summary']}")
        if stage["success"] != pandas["success"]:
            _warn(
                f"run_validate says {'pass' if stage['success'] else 'fail'}, the pandas rules"
                f" say {'pass' if pandas['success'] else 'fail'} ({pandas['failures']}): the"
                " baseline no longer computes the stage's rules"
            )
        if stage["expectations"] != pandas["rules"]:
            _warn(
                f"the stage evaluated {stage['expectations']} expectations, the pandas baseline"
                f" {pandas['rules']} rules: the suites changed, update the baseline"
            )
        if args.profile:
            print("profiling one more run_validate ...", file=sys.stderr)
            profile_stage(p, class_names, ingest_dir, scratch, reference, args.profile)
        csv_mib = (ingest_dir / MANIFEST_FILE).stat().st_size / 2**20

    results = {
        "setup": {
            "rows": args.rows,
            "patients": int(manifest["patient_id"].nunique()),
            "csv_mib": csv_mib,
            "drift": reference is not None,
            "repeat": args.repeat,
            "seed": args.seed,
            "cpus": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "great_expectations": great_expectations.__version__,
            "pandas": pd.__version__,
        },
        "gx_import_s": gx_import,
        "warm_up": {k: v for k, v in warm.items() if k != "summary"},
        "stage": {k: v for k, v in stage.items() if k != "summary"},
        "pandas": {k: v for k, v in pandas.items() if k != "failures"},
        "read_s": read_s,
        "ratio": stage["seconds"] / pandas["seconds"],
    }
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
