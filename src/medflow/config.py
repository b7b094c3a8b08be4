"""Typed configuration: pydantic models mirroring params.yaml.

`load_params()` is the only place that reads params.yaml. Every stage receives
its own typed section, never the raw file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SYNTHETIC = "synthetic"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitParams(_Section):
    val_fraction: float = Field(0.15, gt=0, lt=1)
    test_fraction: float = Field(0.25, gt=0, lt=1)
    seed: int = 42

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> SplitParams:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction:.2f}"
                " leaves too little for training; keep the sum below 0.9"
            )
        return self


class DataParams(_Section):
    source: str = SYNTHETIC
    class_names: list[str] = Field(default_factory=lambda: ["normal", "lesion"], min_length=2)
    split: SplitParams = SplitParams()

    @model_validator(mode="after")
    def _unique_classes(self) -> DataParams:
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class_names must be unique, got {self.class_names}")
        return self

    def resolve_source(self, data_dir: Path) -> Path:
        """The source as a path: `synthetic` is data_dir/synthetic; relative ones in data_dir."""
        path = Path(self.source).expanduser()
        return path if path.is_absolute() else data_dir / path

    @property
    def is_synthetic(self) -> bool:
        return self.source == SYNTHETIC


class SynthParams(_Section):
    n_patients: int = Field(240, ge=6)
    images_per_patient: int = Field(3, ge=1, le=50)
    lesion_prevalence: float = Field(0.5, gt=0, lt=1)
    seed: int = 7


class SafePrivateTagParams(_Section):
    """One private element kept by the Retain Safe Private Option (deid.safe_private_tags)."""

    group: int = Field(ge=0x0009, le=0xFFFF, description="its (odd) group, e.g. 0x0019")
    creator: str = Field(
        min_length=1, description="the private creator that reserves its block, e.g. GEMS_ACQU_01"
    )
    element: int = Field(
        ge=0, le=0xFF, description="its element within the block: 0x18 for (0019,xx18)"
    )

    @field_validator("group")
    @classmethod
    def _odd_group(cls, group: int) -> int:
        if group % 2 == 0:
            raise ValueError(f"group {group:#06x} is even: private groups are odd")
        return group


class BurnedInTextParams(_Section):
    """OCR of text burned into the pixels (docs/ingest.md, "Burned-in text")."""

    action: Literal["redact", "quarantine", "off"] = Field(
        "redact",
        description="what a screened image with text in its pixels becomes: redact (the"
        " word boxes are filled in every frame, DICOM code 113101 Clean Pixel Data is"
        " recorded), quarantine, or off (no OCR)",
    )
    modalities: list[str] = Field(
        default_factory=lambda: ["US", "IVUS", "SC", "OT", "XC", "ES", "GM", "OP"],
        description="Modality values whose images are OCR'd: those that usually carry"
        " burned-in text without setting BurnedInAnnotation",
    )
    secondary_capture: bool = Field(
        True,
        description="also OCR every Secondary Capture Image Storage image (single or"
        " multi-frame), whatever its Modality (screenshots, dose reports)",
    )
    min_confidence: float = Field(
        70,
        ge=0,
        le=100,
        description="tesseract word confidence (0-100) from which a word counts as text"
        " (other words on its line count too); lower finds more text and reads more noise"
        " as words (ultrasound speckle reaches 60-70 at times)",
    )
    min_confidence_bright: float = Field(
        50,
        ge=0,
        le=100,
        description="the same, in the readings of a frame with its dim pixels hidden (little"
        " noise is left there to read as words, and small fonts read with low confidence)",
    )
    min_chars: int = Field(
        3, ge=1, description="letters or digits a word needs to count as text (noise is short)"
    )
    margin: int = Field(3, ge=0, le=64, description="pixels added around each redacted box")
    upscale: int = Field(
        2,
        ge=1,
        le=4,
        description="the bright parts of a frame are also read enlarged this many times (small"
        " fonts are read far better); 1: not enlarged",
    )
    max_frames: int = Field(
        4,
        ge=1,
        description="frames OCR'd per image, spread evenly, first and last included (about"
        " 0.5 s for 640 x 480, 2 s for 1024 x 768 on one core); the boxes found in any of"
        " them are redacted in every frame (overlays of a cine loop stay put)",
    )

    @field_validator("modalities")
    @classmethod
    def _upper(cls, modalities: list[str]) -> list[str]:
        return [m.strip().upper() for m in modalities]


class DeidParams(_Section):
    """De-identification: DICOM PS3.15 Annex E Basic Application Level Confidentiality
    Profile, and which of its options apply (docs/ingest.md, "De-identification")."""

    allow_demo_key_for_synthetic: bool = True
    # Pixels with burned-in text (BurnedInAnnotation YES) may show a name: quarantined unless
    # the source is known to be clean (e.g. the annotation was masked upstream).
    allow_burned_in_annotation: bool = False
    # OCR of the pixels of ultrasound, secondary captures, screenshots... (BurnedInTextParams)
    burned_in_text: BurnedInTextParams = BurnedInTextParams()
    retain_modified_dates: bool = Field(
        True,
        description="Retain Longitudinal Temporal Information with Modified Dates Option:"
        " dates move back by a per-patient number of days derived from the key (intervals"
        " within a patient kept, times of day kept); off: dates are removed or emptied",
    )
    retain_patient_characteristics: bool = Field(
        True,
        description="Retain Patient Characteristics Option: PatientSex, PatientAge,"
        " PatientSize, PatientWeight, EthnicGroup, PregnancyStatus, SmokingStatus and"
        " PatientSexNeutered are kept (subgroup analysis by sex and age needs them)",
    )
    retain_device_identity: bool = Field(
        False,
        description="Retain Device Identity Option: StationName, DeviceSerialNumber,"
        " DetectorID, DeviceUID and other device identifiers are kept. Off by default:"
        " Manufacturer and ManufacturerModelName (drift, subgroups) are kept anyway, and a"
        " station name often names the hospital",
    )
    clean_descriptors: bool = Field(
        False,
        description="Clean Descriptors Option: StudyDescription, SeriesDescription,"
        " ProtocolName, ImageComments, PatientComments, RequestAttributesSequence and other"
        " descriptions and comments are kept when clean (no value the profile removed from"
        " the file, no title before a name, phone number, e-mail, date, digit run of 5 or"
        " more, street address or postcode), else removed. Off: always removed",
    )
    safe_private_tags: list[SafePrivateTagParams] = Field(
        default_factory=list,
        description="Retain Safe Private Option: private elements kept (every other private"
        " element is removed); list only elements known to hold no identifying value",
    )


class IngestParams(_Section):
    # Worker processes; 1 decodes in the calling process. A cluster goes through Prefect's
    # Dask task runner instead (src/medflow/orchestration/ingest_dask.py).
    workers: int = Field(2, ge=1, le=256)
    shard_size: int = Field(64, ge=1)  # files per unit of work sent to a worker
    # Fail the stage when more than this fraction of the files had to be quarantined.
    max_quarantine_fraction: float = Field(0.05, ge=0, le=1)


class DriftCheckParams(_Section):
    """One drift check: the largest change accepted, and what exceeding it does."""

    max_change: float = Field(gt=0)
    # warn: logged and listed in summary.json, the run passes; fail: the stage fails.
    action: Literal["warn", "fail"] = "warn"


class DriftParams(_Section):
    """Drift against the last dataset that passed validation (its reference profile)."""

    # largest absolute change of one class's share of all images (0.15 = 15 points)
    label_balance: DriftCheckParams = DriftCheckParams(max_change=0.15, action="fail")
    # total variation distance between the manufacturer mixes (0: same mix, 1: disjoint)
    manufacturer_mix: DriftCheckParams = DriftCheckParams(max_change=0.25)
    # per modality: change of the mean/quantiles of pixel_mean and the mean of pixel_std, in
    # reference standard deviations between images
    intensity: DriftCheckParams = DriftCheckParams(max_change=1.0)


class ValidateParams(_Section):
    allowed_modalities: list[str] = Field(
        default_factory=lambda: ["CR", "DX", "CT", "MR", "US", "OT", "NM", "XA", "MG", "PX"]
    )
    min_images_per_class_per_split: int = Field(2, ge=1)
    # each class's share of all images
    min_class_fraction: float = Field(0.05, ge=0, le=1)
    max_class_fraction: float = Field(0.95, ge=0, le=1)
    min_rows: int = Field(8, ge=1)
    max_rows: int = Field(8192, ge=1)
    min_columns: int = Field(8, ge=1)
    max_columns: int = Field(8192, ge=1)
    # mm; files without PixelSpacing have NaN, which the range check lets through
    min_pixel_spacing: float = Field(0.01, gt=0)
    max_pixel_spacing: float = Field(10.0, gt=0)
    # share of images that must carry a pixel spacing (0: none need to)
    min_pixel_spacing_present: float = Field(0.0, ge=0, le=1)
    # share of pixels at the frame's min or max: 1.0 is a blank image
    max_constant_fraction: float = Field(0.9, gt=0, le=1)
    drift: DriftParams = DriftParams()

    @model_validator(mode="after")
    def _ranges_are_ordered(self) -> ValidateParams:
        pairs = [
            ("min_rows", "max_rows"),
            ("min_columns", "max_columns"),
            ("min_pixel_spacing", "max_pixel_spacing"),
            ("min_class_fraction", "max_class_fraction"),
        ]
        problems = [
            f"{low} ({getattr(self, low)}) is above {high} ({getattr(self, high)})"
            for low, high in pairs
            if getattr(self, low) > getattr(self, high)
        ]
        if problems:
            raise ValueError("; ".join(problems) + ": swap or fix the values")
        return self


class WindowParams(_Section):
    center: float
    width: float = Field(gt=0)


class PreprocessParams(_Section):
    image_size: int = Field(64, ge=8, le=1024)
    channels: int = Field(1)
    # Multi-frame files: the first frame, the middle one, or every frame as its own sample.
    frames: Literal["first", "middle", "all"] = "first"
    # Decompression-bomb guard, checked on the header before decoding: pixels per frame.
    max_frame_pixels: int = Field(64 * 1024 * 1024, ge=1)
    # VOI window per modality (e.g. CT: {center: 40, width: 400}); overrides the file's own.
    windows: dict[str, WindowParams] = Field(default_factory=dict)
    percentile_low: float = Field(0.5, ge=0, lt=50)
    percentile_high: float = Field(99.5, gt=50, le=100)

    @field_validator("windows")
    @classmethod
    def _modality_keys(cls, value: dict[str, WindowParams]) -> dict[str, WindowParams]:
        return {k.strip().upper(): v for k, v in value.items()}

    @model_validator(mode="after")
    def _channels(self) -> PreprocessParams:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        return self


class AugmentParams(_Section):
    """Augmentations applied to each training batch on its device, seeded (docs/training.md)."""

    max_shift: int = Field(4, ge=0)  # pixels, translation in each direction (zero fill)
    max_rotation: float = Field(10.0, ge=0, le=180)  # degrees, either way
    max_scale: float = Field(0.1, ge=0, lt=1)  # zoom in or out by up to this fraction
    brightness: float = Field(0.1, ge=0, le=1)  # added offset, up to this (images in [0, 1])
    contrast: float = Field(0.1, ge=0, lt=1)  # gain around the image mean, 1 +- this
    # Off by default: left/right carries meaning in chest and many other images.
    horizontal_flip: bool = False


class TrainParams(_Section):
    seed: int = 42
    # smallcnn: VGG-style; resnet: a small ResNet (residual blocks, BN, global pooling)
    architecture: Literal["smallcnn", "resnet"] = "smallcnn"
    max_epochs: int = Field(12, ge=1)
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    width: int = Field(32, ge=4)
    dropout: float = Field(0.1, ge=0, lt=1)
    # early stopping and the kept (best) checkpoint follow this validation metric
    monitor: Literal["val_loss", "val_auroc"] = "val_loss"
    early_stopping_patience: int = Field(4, ge=1)
    # none; weighted_loss: cross-entropy weighted by inverse train class frequency;
    # balanced_sampler: batches drawn with replacement so that classes come up equally often
    imbalance: Literal["none", "weighted_loss", "balanced_sampler"] = "none"
    # temperature: one scalar fitted on val and folded into the last layer (calibrated
    # probabilities, same ranking); none: the raw softmax
    calibration: Literal["temperature", "none"] = "temperature"
    # Lightning Trainer: "auto" | "ddp" | "ddp_spawn" | ...; devices "auto" or a count
    strategy: str = "auto"
    devices: Literal["auto"] | int = "auto"
    num_nodes: int = Field(1, ge=1)
    num_workers: int = Field(0, ge=0)  # DataLoader worker processes
    augment: AugmentParams = AugmentParams()

    @field_validator("devices")
    @classmethod
    def _positive_devices(cls, value: str | int) -> str | int:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"devices must be 'auto' or a count >= 1, got {value}")
        return value


# Metrics where higher is better / lower is better (the gate's champion deltas need the sign).
HIGHER_IS_BETTER = ("auroc", "auprc", "accuracy", "sensitivity", "specificity", "f1")
LOWER_IS_BETTER = ("brier", "ece")


class EvaluateParams(_Section):
    """How the test split is scored (docs/evaluation.md)."""

    # The operating threshold on p(positive), chosen on the validation split (binary only;
    # multi-class predicts the argmax): fixed -> `threshold`; target_sensitivity -> the highest
    # threshold whose val sensitivity reaches `target_sensitivity`; youden -> max(tpr - fpr).
    threshold_policy: Literal["fixed", "target_sensitivity", "youden"] = "target_sensitivity"
    threshold: float = Field(0.5, gt=0, lt=1)
    target_sensitivity: float = Field(0.9, gt=0, le=1)
    # equal-width probability bins of the expected calibration error and reliability diagram
    n_bins: int = Field(10, ge=2, le=100)
    # percentile bootstrap 95% intervals; resamples patients (all their test images together)
    n_bootstrap: int = Field(1000, ge=0, le=100_000)
    ci_level: float = Field(0.95, gt=0.5, lt=1)
    seed: int = 0
    # manifest columns to slice the test split by; absent columns are reported as missing
    subgroups: list[str] = Field(
        default_factory=lambda: ["site", "manufacturer", "sex", "age_band"]
    )
    # subgroups with fewer test images are reported but flagged small (and not gated)
    min_subgroup_n: int = Field(30, ge=1)


class GateParams(_Section):
    """The evaluation gate (docs/evaluation.md): value rules and changes against the champion."""

    min_auroc: float = Field(0.85, ge=0, le=1)
    # lower end of the bootstrap interval: a model that is good only by luck of the test draw
    min_auroc_ci_low: float = Field(0.0, ge=0, le=1)
    min_sensitivity: float = Field(0.7, ge=0, le=1)
    min_specificity: float = Field(0.7, ge=0, le=1)
    max_ece: float = Field(1.0, ge=0, le=1)
    # every subgroup that is not flagged small (evaluate.min_subgroup_n)
    min_subgroup_auroc: float = Field(0.0, ge=0, le=1)
    # Largest change for the worse against the current champion, per metric (AUROC 0.02:
    # the candidate may be at most 0.02 below the champion; ECE 0.02: at most 0.02 above).
    # Without a champion (the first model) only the value rules apply.
    max_worse_than_champion: dict[str, float] = Field(default_factory=dict)

    @field_validator("max_worse_than_champion")
    @classmethod
    def _known_metrics(cls, value: dict[str, float]) -> dict[str, float]:
        known = HIGHER_IS_BETTER + LOWER_IS_BETTER
        problems = [f"unknown metric {k!r}" for k in value if k not in known]
        problems += [f"{k}: {v} is negative" for k, v in value.items() if v < 0]
        if problems:
            raise ValueError("; ".join(problems) + f" (metrics: {', '.join(known)})")
        return value


class ServeParams(_Section):
    """The Bento's HTTP service (docs/serving.md). Carried into the Bento at package time;
    each field can be overridden where it is served by $MEDFLOW_SERVE_<FIELD> (lists: commas)."""

    # request bodies above this are refused (413) before they are parsed
    max_upload_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    # decompression-bomb guard on the header, before decoding: rows x columns x frames x samples
    max_image_pixels: int = Field(256 * 1024 * 1024, ge=1)
    # accept PNG and JPEG besides DICOM (they carry no modality, window or photometric tags)
    allow_png_jpeg: bool = False
    # DICOM Modality values served; anything else is refused (422)
    allowed_modalities: list[str] = Field(
        default_factory=lambda: ["CR", "DX", "CT", "MR", "US", "OT", "NM", "XA", "MG", "PX"],
        min_length=1,
    )
    # batching of concurrent requests (medflow.serving.batcher): the most images per forward
    # pass, also the most files one /predict_batch takes; and the longest an image may wait
    # for the model before it is refused with 503 (overloaded)
    max_batch_size: int = Field(16, ge=2, le=1024)
    max_latency_ms: int = Field(5000, ge=10)
    # worker processes, each with its own copy of the network
    workers: int = Field(1, ge=1, le=64)
    timeout_s: int = Field(30, ge=1)
    # the bearer token is read from this environment variable where the Bento runs; unset or
    # empty: no authentication
    api_token_env: str = Field("MEDFLOW_API_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # OpenTelemetry spans for /predict and /predict_batch (BentoML's tracing, collected only
    # where a BentoML config sets an exporter and a sample rate). Off, those routes skip the
    # tracing middleware: about 0.7 ms less per request (docs/serving.md)
    trace_predictions: bool = False

    @field_validator("allowed_modalities")
    @classmethod
    def _upper_modalities(cls, value: list[str]) -> list[str]:
        return [v.strip().upper() for v in value]


class PackageParams(_Section):
    model_name: str = Field("medflow-classifier", pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    # baked into the Bento (as its `serve` argument), so a change rebuilds it
    serve: ServeParams = ServeParams()


class OrchestrationParams(_Section):
    """Prefect deployments of the pipeline (docs/orchestration.md); read by flows/ only."""

    # the training deployment's schedule (cron, in `timezone`); "" : no schedule
    cron: str = "0 3 * * 1"
    timezone: str = "UTC"
    # how often the watcher hashes the data source; a new hash emits medflow.data.changed
    watch_interval_seconds: int = Field(60, ge=5)
    # stage retries on transient errors only (OSError, timeouts, DVC lock): never data errors
    retries: int = Field(2, ge=0, le=10)
    retry_delay_seconds: float = Field(10.0, ge=0)
    stage_timeout_seconds: int = Field(6 * 3600, ge=1)
    # one training run at a time; another trigger waits (ENQUEUE) or is dropped (CANCEL_NEW)
    collision_strategy: Literal["ENQUEUE", "CANCEL_NEW"] = "ENQUEUE"
    # a saved Prefect notification block ("<block-type-slug>/<name>", e.g.
    # "slack-webhook/medflow-ops"); "" : no failure notifications
    notify_block: str = ""


class Params(_Section):
    data: DataParams = DataParams()
    synth: SynthParams = SynthParams()
    deid: DeidParams = DeidParams()
    ingest: IngestParams = IngestParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    preprocess: PreprocessParams = PreprocessParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    gate: GateParams = GateParams()
    package: PackageParams = PackageParams()
    orchestration: OrchestrationParams = OrchestrationParams()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ConfigError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message lists every problem."""


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and validate params.yaml, reporting every problem at once."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path.resolve()} (run from the project root)")
    try:
        raw: Any = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = "\n".join(
            f"  - {'.'.join(str(p) for p in err['loc'])}: {err['msg']} (got {err.get('input')!r})"
            for err in exc.errors()
        )
        raise ConfigError(f"{path} has {exc.error_count()} problem(s):\n{problems}") from exc
