"""The files the evaluate and gate stages hand on: metrics.json, evaluation.json, baseline.json
and gate.json, one pydantic model each, read and written only through these models.

The JSON keys are the file format (DVC reads metrics.json as flat keys); docs/evaluation.md
describes them and docs/decisions/typed-handoffs.md says why they are checked as they are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    Tag,
    ValidationError,
    computed_field,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)

from medflow.config import EvaluateParams, GateParams, PreprocessParams
from medflow.io import write_json_atomic

# every metric is written with its bootstrap interval: <metric>, <metric>_ci_low, _ci_high
METRICS = ("auroc", "auprc", "accuracy", "sensitivity", "specificity", "f1", "brier", "ece")
# segmentation (data.task: segmentation): means over test images and segments, with intervals
SEGMENTATION_METRICS = ("dice", "iou", "hd95")

# what the evaluate stage found to compare the candidate with (baseline.json `status`)
COMPARED = "compared"
NO_CHAMPION = "no champion"
CLASSES_DIFFER = "class names differ"
UNAVAILABLE = "champion model unavailable"
TASK_DIFFERS = "task differs"  # a classifier champion for a segmentation candidate, or back
BaselineStatus = Literal[
    "compared", "no champion", "class names differ", "champion model unavailable", "task differs"
]

# a number as JSON writes it (NaN included), never a bool or a string
Number = Annotated[float, Field(strict=True)]
Count = Annotated[int, Field(strict=True, ge=0)]


class HandoffError(ValueError):
    """A hand-off file exists but does not hold what its model says (names file and fields)."""


# the tags of the metrics unions (AnyMetrics): pydantic puts them in an error's path
_TASK_TAGS = ("classification", "segmentation")


def _problems(exc: ValidationError) -> str:
    # field and problem only: values may be identifiers and never reach a message
    def where(loc: tuple[Any, ...]) -> str:
        return ".".join(str(p) for p in loc if p not in _TASK_TAGS) or "(top level)"

    return "; ".join(f"{where(e['loc'])}: {e['msg']}" for e in exc.errors())


class Handoff(BaseModel):
    """A file one stage writes and another reads: unknown keys are refused both ways."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())
    # what to do about a missing or malformed file, for the error message
    FIX: ClassVar[str] = "re-run the stage that writes it"

    @classmethod
    def parse(cls, raw: Any, path: Path) -> Self:
        """`raw` (loaded JSON) as this model; HandoffError naming `path` and every bad field."""
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise HandoffError(
                f"{path} is not a valid {cls.__name__} ({_problems(exc)}): {cls.FIX}"
            ) from None

    @classmethod
    def read(cls, path: Path) -> Self:
        """The file at `path`.

        Raises:
            FileNotFoundError: there is no file at `path`.
            HandoffError: it is not JSON, or not what this model holds.
        """
        return cls.parse(read_json(path, cls.FIX), Path(path))

    def write(self, path: Path) -> None:
        """Write atomically (NaN as JSON's NaN, keys sorted)."""
        write_json_atomic(Path(path), self.model_dump())


def read_json(path: Path, fix: str) -> Any:
    """The JSON of `path`; FileNotFoundError or HandoffError saying `fix` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {path.name} at {path}: {fix}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HandoffError(f"{path} is not valid JSON ({exc}): {fix}") from None


class ScoredMetrics(Handoff):
    """Every metric of METRICS with its bootstrap interval, at `threshold`, on `n_test` images."""

    FIX: ClassVar[str] = "re-run the evaluate stage"

    auroc: Number
    auroc_ci_low: Number
    auroc_ci_high: Number
    auprc: Number
    auprc_ci_low: Number
    auprc_ci_high: Number
    accuracy: Number
    accuracy_ci_low: Number
    accuracy_ci_high: Number
    sensitivity: Number
    sensitivity_ci_low: Number
    sensitivity_ci_high: Number
    specificity: Number
    specificity_ci_low: Number
    specificity_ci_high: Number
    f1: Number
    f1_ci_low: Number
    f1_ci_high: Number
    brier: Number
    brier_ci_low: Number
    brier_ci_high: Number
    ece: Number
    ece_ci_low: Number
    ece_ci_high: Number
    threshold: Number
    n_test: Count

    def interval(self, metric: str) -> tuple[float, float, float]:
        """(value, ci_low, ci_high) of `metric` (one of METRICS)."""
        if metric not in METRICS:
            raise KeyError(f"unknown metric {metric!r} (metrics: {', '.join(METRICS)})")
        return tuple(getattr(self, f"{metric}{end}") for end in ("", "_ci_low", "_ci_high"))

    def values(self) -> dict[str, float]:
        """Name -> number, as in the file: what the gate's rules look metrics up in."""
        return self.model_dump()


class Metrics(ScoredMetrics):
    """metrics.json: the candidate's test metrics (DVC metrics: flat numbers only)."""

    val_sensitivity: Number
    val_specificity: Number
    n_test_patients: Count
    n_test_positive: Count | None = None  # two classes only; absent from the file otherwise

    @model_serializer(mode="wrap")
    def _flat(self, handler: Any) -> dict[str, Any]:
        out = handler(self)
        if out.get("n_test_positive") is None:
            out.pop("n_test_positive", None)
        return out


class SegmentScores(Handoff):
    """One segment's means over the test images (metrics.json `per_segment`)."""

    dice: Number
    iou: Number
    hd95: Number


class SegmentationMetrics(Handoff):
    """metrics.json of a segmentation model (task: segmentation), and the champion's scores
    on the same test split in baseline.json: means over test images and segments with their
    patient-bootstrap intervals, lesion detection, per segment (docs/evaluation.md)."""

    FIX: ClassVar[str] = "re-run the evaluate stage"
    NAMES: ClassVar[tuple[str, ...]] = SEGMENTATION_METRICS

    task: Literal["segmentation"] = "segmentation"
    dice: Number
    dice_ci_low: Number
    dice_ci_high: Number
    iou: Number
    iou_ci_low: Number
    iou_ci_high: Number
    hd95: Number  # mm; model-space pixels when the images carry no PixelSpacing
    hd95_ci_low: Number
    hd95_ci_high: Number
    detection_sensitivity: Number  # detected / true lesions (NaN: no true lesion)
    false_positives_per_image: Number  # unmatched predicted lesions / images
    per_segment: dict[str, SegmentScores]  # segment name (data.class_names[1:]) -> means
    threshold: Number  # the probability from which a pixel is in a segment (served)
    n_images: Count
    n_patients: Count
    n_lesions: Count  # true lesions (connected components) over images and segments

    def interval(self, metric: str) -> tuple[float, float, float]:
        """(value, ci_low, ci_high) of `metric` (one of SEGMENTATION_METRICS)."""
        if metric not in SEGMENTATION_METRICS:
            raise KeyError(
                f"unknown metric {metric!r} (metrics: {', '.join(SEGMENTATION_METRICS)})"
            )
        return tuple(getattr(self, f"{metric}{end}") for end in ("", "_ci_low", "_ci_high"))

    def values(self) -> dict[str, Any]:
        """Name -> number, as in the file: what the gate's rules look metrics up in."""
        return self.model_dump()


def _task_of(value: Any) -> str:
    # classification files carry no `task` key (their format predates segmentation)
    if isinstance(value, dict):
        return str(value.get("task", "classification"))
    return str(getattr(value, "task", "classification"))


# metrics.json, either task (GateReport.metrics)
AnyMetrics = Annotated[
    Annotated[Metrics, Tag("classification")] | Annotated[SegmentationMetrics, Tag("segmentation")],
    Discriminator(_task_of),
]
# a champion's scores on the candidate's test split, either task (baseline.json, gate.json)
AnyScoredMetrics = Annotated[
    Annotated[ScoredMetrics, Tag("classification")]
    | Annotated[SegmentationMetrics, Tag("segmentation")],
    Discriminator(_task_of),
]


def read_metrics(path: Path) -> Metrics | SegmentationMetrics:
    """metrics.json of either task: SegmentationMetrics when it says `task: segmentation`,
    Metrics otherwise (FileNotFoundError / HandoffError as Handoff.read)."""
    raw = read_json(path, Metrics.FIX)
    model = SegmentationMetrics if _task_of(raw) == "segmentation" else Metrics
    return model.parse(raw, Path(path))


# --- evaluation.json ---------------------------------------------------------------------


class ThresholdChoice(Handoff):
    policy: Literal["fixed", "target_sensitivity", "youden"]
    value: Number
    chosen_on: Literal["val", "params"]
    applies: str  # the decision rule in words, e.g. "p(positive) >= threshold"


class BootstrapSetup(Handoff):
    unit: Literal["patient", "image"]  # what is resampled
    n: Count
    level: Number
    seed: int


class SubgroupCoverage(Handoff):
    reported: list[str]
    missing: list[str]  # asked for in evaluate.subgroups, absent from the manifest


class DataSummary(Handoff):
    data_hash: str
    counts: dict[str, int]  # images per split
    class_counts: dict[str, dict[str, int]]  # split -> class name -> images
    preprocess: PreprocessParams


class ModelSummary(Handoff):
    architecture: str
    class_names: list[str]
    num_classes: int
    provenance: dict[str, Any]  # model.json's provenance (medflow.models.artifact.ModelSpec)


class Versions(Handoff):
    git_revision: str | None
    library_versions: dict[str, str]


class EvaluationContext(Handoff):
    """evaluation.json: what the model card needs besides the numbers."""

    FIX: ClassVar[str] = "re-run the evaluate stage"

    params: EvaluateParams
    threshold: ThresholdChoice
    bootstrap: BootstrapSetup
    subgroups: SubgroupCoverage
    data: DataSummary
    model: ModelSummary
    plots: dict[str, str]  # plot name -> path relative to the reports folder
    evaluated_with: Versions
    # segmentation: the unit of HD95 (mm, or model pixels when an image lacks PixelSpacing);
    # absent from the file of a classifier
    hd95_unit: Literal["mm", "pixel"] | None = None

    @model_serializer(mode="wrap")
    def _no_unit_for_classifiers(self, handler: Any) -> dict[str, Any]:
        out = handler(self)
        if out.get("hd95_unit") is None:
            out.pop("hd95_unit", None)
        return out


# --- baseline.json -----------------------------------------------------------------------


class DatasetRef(Handoff):
    """A dataset as medflow.data.dataset.Dataset.as_dict() writes it."""

    key: str
    source: str | None = None
    class_names: list[str] | None = None
    task: str | None = None


class BaselineChampion(Handoff):
    """The champion.json entries a baseline keeps (no local paths)."""

    model_tag: str
    bento_tag: str | None = None
    data_hash: str | None = None
    promoted_at: str | None = None
    promoted_by: str | None = None


class EvaluatedOn(Handoff):
    """How the champion was scored on the candidate's test split."""

    split: Literal["test"]
    n_test: Count
    data_hash: str | None
    inputs: str  # the arrays, or the DICOM files through the champion's own preprocessing
    preprocess: PreprocessParams


def _empty_is_none(value: Any) -> Any:
    return None if value == {} else value


class Baseline(Handoff):
    """baseline.json: what the gate's change rules compare with; `metrics` and `evaluated_on`
    exactly when status is compared."""

    FIX: ClassVar[str] = "re-run the evaluate stage"

    status: BaselineStatus
    reason: str
    dataset: DatasetRef | None = None
    champion: BaselineChampion | None = None
    metrics: AnyScoredMetrics | None = None
    evaluated_on: EvaluatedOn | None = None  # {} in the file when there is none

    _evaluated_on_in = field_validator("evaluated_on", mode="before")(_empty_is_none)

    @field_serializer("evaluated_on")
    def _evaluated_on_out(self, value: EvaluatedOn | None) -> dict[str, Any]:
        return value.model_dump() if value is not None else {}

    @computed_field  # type: ignore[prop-decorator]
    @property
    def same_split(self) -> bool:
        return self.status == COMPARED

    @model_validator(mode="before")
    @classmethod
    def _derived(cls, data: Any) -> Any:
        # same_split is written for readers of the file; it follows from status
        if isinstance(data, dict) and "same_split" in data:
            data = dict(data)
            if data.pop("same_split") != (data.get("status") == COMPARED):
                raise ValueError("same_split must be true exactly when status is compared")
        return data

    @model_validator(mode="after")
    def _compared_has_metrics(self) -> Baseline:
        compared = self.status == COMPARED
        if compared != (self.metrics is not None) or compared != (self.evaluated_on is not None):
            raise ValueError("metrics and evaluated_on are given exactly when status is compared")
        return self


# --- gate.json ---------------------------------------------------------------------------


class GateRule(Handoff):
    """One rule of the gate with what was observed: passed when `observed op threshold`."""

    rule: str  # the params key, e.g. gate.min_auroc
    metric: str  # what was measured, e.g. auroc, or site=SITE-1 (n=40) auroc
    observed: float | None  # None: missing from the metrics
    threshold: float
    op: Literal[">=", "<="]
    passed: StrictBool
    message: str  # why it failed; "" when it passed


class ChampionComparison(Handoff):
    """gate.json's `champion`: what the change rules compared with, or why they did not run."""

    status: BaselineStatus
    reason: str
    same_split: StrictBool = False
    dataset: str | None = None  # the dataset key
    model_tag: str | None = None
    evaluated_on: EvaluatedOn | None = None  # {} in the file when there is none
    metrics: AnyScoredMetrics | None = None  # the champion's, when compared
    file: str | None = None  # the baseline.json read

    _evaluated_on_in = field_validator("evaluated_on", mode="before")(_empty_is_none)

    @field_serializer("evaluated_on")
    def _evaluated_on_out(self, value: EvaluatedOn | None) -> dict[str, Any]:
        return value.model_dump() if value is not None else {}


class GateReport(Handoff):
    """gate.json: the decision, every rule with its observed value, and what it judged."""

    FIX: ClassVar[str] = "re-run the gate stage"

    passed: StrictBool
    decision: Literal["accepted", "refused"]
    failures: list[str]
    rules: list[GateRule]
    champion: ChampionComparison
    thresholds: GateParams
    metrics: AnyMetrics

    @model_validator(mode="after")
    def _consistent(self) -> GateReport:
        if self.decision != ("accepted" if self.passed else "refused"):
            raise ValueError(f"decision {self.decision!r} contradicts passed={self.passed}")
        if self.passed and self.failures:
            raise ValueError("a passed gate lists no failures")
        return self
