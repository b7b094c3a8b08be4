"""Typed configuration: one pydantic model per params.yaml section.

`load_params()` is the only place that reads params.yaml; every stage receives its own typed
section. The defaults here are the values of params.yaml (tests/unit/test_config.py keeps them
equal), and each field's description (a docstring under it, or `Field(description=...)`) is
where its meaning is written down; params.yaml only carries a short reminder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SYNTHETIC = "synthetic"
PACS = "pacs"  # data.source: retrieve from the DICOMweb server of params `pacs`

# The Modality values accepted by validation and served by the Bento.
MODALITIES = ("CR", "DX", "CT", "MR", "US", "OT", "NM", "XA", "MG", "PX", "RF", "SC")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class SplitParams(_Section):
    val_fraction: float = Field(0.15, gt=0, lt=1)
    """share of the patients in the validation split"""
    test_fraction: float = Field(0.25, gt=0, lt=1)
    """share of the patients in the test split"""
    seed: int = 42
    """a patient's split follows from a hash of this seed and its pseudonym, so patients
    added later do not move anyone (small classes aside: medflow.data.splits)"""

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
    """where the images come from, relative to data/ or absolute: `synthetic` (data/synthetic,
    written by the synth stage); `pacs` (the DICOMweb server of params `pacs`, retrieved by the
    pull stage into data/pacs); a folder of DICOM files (any names, read recursively) with a
    labels.csv (columns path,label) or one sub-folder per class; or a MedMNIST-style .npz
    archive, whose own train/val/test splits are kept"""
    class_names: list[str] = Field(default_factory=lambda: ["normal", "lesion"], min_length=2)
    """the labels, in order: a label's index is its class; binary: the second is the positive
    class"""
    split: SplitParams = SplitParams()
    """the patient-level train/val/test split (a .npz source keeps its own)"""
    task: Literal["classification", "segmentation"] = "classification"
    """classification: one label per image; segmentation: a mask per image, from DICOM SEG
    objects referencing the images, `path,mask` rows of labels.csv (PNG or NIfTI masks) or
    the `*_masks` arrays of a .npz (docs/segmentation.md). For segmentation the first class
    name is the background and each other one a segment; an image's label is the highest
    class its mask holds (0: empty mask), which the split and the class-balance rules use"""

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

    @property
    def is_pacs(self) -> bool:
        return self.source == PACS


class SynthParams(_Section):
    n_patients: int = Field(240, ge=6)
    """synthetic patients; 240 gives a val split of about 100 images to fit the temperature on
    (160 gave 69, and a test ECE of 0.062 against the 0.05 target; docs/training.md)"""
    images_per_patient: int = Field(3, ge=1, le=50)
    """images written per patient"""
    lesion_prevalence: float = Field(0.5, gt=0, lt=1)
    """chance that an image shows a lesion"""
    seed: int = 7
    """the same seed gives the same pixels, labels and UIDs"""


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
    """OCR of text burned into the pixels (docs/ingest.md, "Burned-in text"); needs
    tesseract-ocr (make system-deps)."""

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
    """the pseudonymisation key comes from $MEDFLOW_DEID_KEY or the file named by
    $MEDFLOW_DEID_KEY_FILE; true: the synthetic demo (only) may fall back to a public demo key"""
    allow_burned_in_annotation: bool = False
    """images with BurnedInAnnotation YES may show a name in their pixels: quarantined unless
    true (for a source known to be clean, e.g. the annotation was masked upstream)"""
    burned_in_text: BurnedInTextParams = BurnedInTextParams()
    """OCR of the pixels for text burned in without BurnedInAnnotation (ultrasound, secondary
    captures, screenshots...)"""
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
    workers: int = Field(2, ge=1, le=256)
    """worker processes on this machine; 1 decodes in the calling process. A cluster goes
    through Prefect's Dask task runner instead (src/medflow/orchestration/ingest_dask.py)"""
    shard_size: int = Field(64, ge=1)
    """files per unit of work sent to a worker"""
    max_quarantine_fraction: float = Field(0.05, ge=0, le=1)
    """the stage fails when more than this fraction of the source files cannot be used
    (unreadable, undecodable, refused); skipped non-images and duplicates do not count"""


class DriftCheckParams(_Section):
    """One drift check: the largest change accepted, and what exceeding it does."""

    max_change: float = Field(gt=0)
    """the largest change accepted (its unit depends on the check)"""
    action: Literal["warn", "fail"] = "warn"
    """warn: logged and listed in summary.json, the run passes; fail: the stage fails"""


class DriftParams(_Section):
    """Drift against the last dataset of the same source and class names that passed
    validation: its reference profile, data/reference/<dataset key>/profile.json
    (docs/validation.md)."""

    label_balance: DriftCheckParams = DriftCheckParams(max_change=0.15, action="fail")
    """largest absolute change of one class's share of all images (0.15 = 15 points)"""
    manufacturer_mix: DriftCheckParams = DriftCheckParams(max_change=0.25)
    """total variation distance between the manufacturer mixes (0: same mix, 1: disjoint)"""
    intensity: DriftCheckParams = DriftCheckParams(max_change=1.0)
    """per modality: change of the mean/quantiles of pixel_mean and the mean of pixel_std, in
    reference standard deviations between images"""
    lesion_area: DriftCheckParams = DriftCheckParams(max_change=0.5)
    """segmentation: change of the mean and the median of mask_fraction over the non-empty
    masks, in reference standard deviations between those masks"""


class ValidateParams(_Section):
    """The dataset's rules; their reasons are in docs/validation.md."""

    allowed_modalities: list[str] = Field(default_factory=lambda: list(MODALITIES))
    """DICOM Modality values accepted"""
    min_images_per_class_per_split: int = Field(2, ge=1)
    """images each class needs in every split"""
    min_class_fraction: float = Field(0.05, ge=0, le=1)
    """least share of all images any class may have"""
    max_class_fraction: float = Field(0.95, ge=0, le=1)
    """largest share of all images any class may have"""
    min_rows: int = Field(8, ge=1)
    """image height in pixels, at least"""
    max_rows: int = Field(8192, ge=1)
    """image height in pixels, at most"""
    min_columns: int = Field(8, ge=1)
    """image width in pixels, at least"""
    max_columns: int = Field(8192, ge=1)
    """image width in pixels, at most"""
    min_pixel_spacing: float = Field(0.01, gt=0)
    """pixel spacing in mm, at least; files without PixelSpacing have NaN, which the range
    check lets through"""
    max_pixel_spacing: float = Field(10.0, gt=0)
    """pixel spacing in mm, at most"""
    min_pixel_spacing_present: float = Field(0.0, ge=0, le=1)
    """share of images that must carry a pixel spacing (0: none need to)"""
    max_constant_fraction: float = Field(0.9, gt=0, le=1)
    """share of a frame's pixels at its min or max (1.0: blank) above which the frame is
    taken for blank, black or saturated (mammograms and collimated X-rays have large black
    borders)"""
    min_empty_mask_fraction: float = Field(0.0, ge=0, le=1)
    """segmentation: least share of each split's images whose mask is empty (0: none need
    be; images without a lesion teach the model where not to segment)"""
    max_empty_mask_fraction: float = Field(0.9, ge=0, le=1)
    """segmentation: largest share of each split's images whose mask is empty (all empty: no
    lesion to learn or to score Dice on)"""
    min_mask_fraction: float = Field(0.0, ge=0, le=1)
    """segmentation: least share of the frame a non-empty mask covers (0: any lesion passes;
    e.g. 1e-4 flags specks of under 26 pixels on 512 x 512 images)"""
    max_mask_fraction: float = Field(0.9, gt=0, le=1)
    """segmentation: largest share of the frame a mask may cover (a mask of nearly the whole
    frame is more often inverted or misplaced than a lesion)"""
    drift: DriftParams = DriftParams()
    """drift checks against the reference profile"""

    @model_validator(mode="after")
    def _ranges_are_ordered(self) -> ValidateParams:
        pairs = [
            ("min_rows", "max_rows"),
            ("min_columns", "max_columns"),
            ("min_pixel_spacing", "max_pixel_spacing"),
            ("min_class_fraction", "max_class_fraction"),
            ("min_empty_mask_fraction", "max_empty_mask_fraction"),
            ("min_mask_fraction", "max_mask_fraction"),
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
    """A VOI window (DICOM Window Center and Width) given for one modality."""

    center: float
    """window centre, in the modality's units after the modality LUT (CT: HU)"""
    width: float = Field(gt=0)
    """window width, in the same units"""


class PreprocessParams(_Section):
    """The one preprocessing path of training, evaluation and serving (medflow.imaging)."""

    image_size: int = Field(64, ge=8, le=1024)
    """side in pixels of the square model input: each frame is padded square, then resized"""
    follow_source_size: bool = True
    """when the source's images are smaller than image_size (the median longer side of the
    train split), the model input is that side rounded up to a multiple of 8 instead:
    upsampling adds pixels, not information, and costs training time. The side used is in
    the arrays' meta.json and model.json; serving resizes to it"""
    channels: int = Field(1)
    """1: colour becomes luminance; 3: grey is repeated, colour stays RGB"""
    frames: Literal["first", "middle", "all"] = "first"
    """multi-frame files: the first frame, the middle one, or every frame as its own sample"""
    max_frame_pixels: int = Field(64 * 1024 * 1024, ge=1)
    """decompression-bomb guard: frames with more pixels than this are refused, from the
    header, before decoding"""
    windows: dict[str, WindowParams] = Field(default_factory=dict)
    """a VOI window per modality (e.g. CT: {center: 40, width: 400}) that overrides the
    file's own; without one: the file's VOI LUT or window, else the percentiles"""
    percentile_low: float = Field(0.5, ge=0, lt=50)
    """without any window, intensities between the image's percentile_low and percentile_high
    percentiles are scaled to [0, 1], those outside clipped"""
    percentile_high: float = Field(99.5, gt=50, le=100)
    """see percentile_low"""

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

    max_shift: int = Field(4, ge=0)
    """translation in pixels, each way (zero fill)"""
    max_rotation: float = Field(10.0, ge=0, le=180)
    """rotation in degrees, either way"""
    max_scale: float = Field(0.1, ge=0, lt=1)
    """zoom in or out by up to this fraction"""
    brightness: float = Field(0.1, ge=0, le=1)
    """offset added to the image, up to this (images are in [0, 1])"""
    contrast: float = Field(0.1, ge=0, lt=1)
    """gain around the image mean, 1 +- this"""
    horizontal_flip: bool = False
    """off by default: left and right carry meaning (laterality) in chest and many other
    images"""


class TrainParams(_Section):
    """The classifier and its fit (docs/training.md: resuming, DDP, GPUs)."""

    seed: int = 42
    """seeds initialisation, shuffling, augmentation and dropout"""
    architecture: Literal[
        "smallcnn",
        "resnet",
        "monai_resnet18",
        "monai_resnet34",
        "monai_densenet121",
        "monai_efficientnet_b0",
    ] = "smallcnn"
    """smallcnn: VGG-style; resnet: a small ResNet (residual blocks, batch norm, global
    pooling), cheaper per image on a CPU; monai_*: MONAI's standard ResNet-18/34, DenseNet-121
    and EfficientNet-B0 in 2-D, their stems adapted to small images (docs/training.md), their
    widths standard (`width` does not apply)"""
    pretrained_weights: str | None = None
    """a local file of weights (a state_dict of the same architecture, or a medflow
    checkpoint) loaded into the network before training; relative to the project root; never
    downloaded. Tensors of another shape (the classifier head of another class count) are
    skipped and reported; its sha256 goes into model.json and the model card. null: random
    initialisation"""
    time_budget_minutes: float | None = Field(6.0, gt=0)
    """the training time to plan for: the epochs per member and the members of the ensemble
    are chosen from the measured speed of the first steps (models.budget, docs/training.md);
    null: one network of `max_epochs` epochs"""
    target_steps: int = Field(2400, ge=1)
    """optimiser steps a member is given when the budget allows (epochs = steps / batches
    per epoch, at most max_epochs)"""
    ensemble_max: int = Field(5, ge=1)
    """the most networks (seeds seed, seed+1, ...) the budget may train; their mean logits,
    calibrated as a whole, are the model"""
    tta: bool = False
    """test-time augmentation: average over the views the training augmentations allow
    (a half shift either way; a horizontal flip only with augment.horizontal_flip); off by
    default: on PneumoniaMNIST it halved val NLL and raised test ECE (docs/decisions/tta.md)"""
    max_epochs: int = Field(60, ge=1)
    """the most epochs of a member; without a time budget, the epochs of the run"""
    batch_size: int = Field(32, ge=1)
    """images per batch, per device"""
    learning_rate: float = Field(1e-3, gt=0)
    """peak of the one-cycle schedule (AdamW)"""
    weight_decay: float = Field(1e-4, ge=0)
    """AdamW's weight decay"""
    width: int = Field(24, ge=4)
    """channels of the network's first stage"""
    dropout: float = Field(0.1, ge=0, lt=1)
    """dropout before the linear head"""
    monitor: Literal["val_loss", "val_auroc"] = "val_loss"
    """the validation metric that early stopping and the kept (best) checkpoint follow"""
    early_stopping_patience: int = Field(6, ge=1)
    """epochs without improvement of `monitor` before stopping"""
    imbalance: Literal["none", "weighted_loss", "balanced_sampler"] = "balanced_sampler"
    """none; weighted_loss: cross-entropy weighted by inverse train class frequency;
    balanced_sampler: batches drawn with replacement (seeded) so that classes come up equally
    often"""
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    """the training loss's targets mixed with the uniform distribution by this share (0:
    none); val loss and calibration use the true labels"""
    calibration: Literal["auto", "temperature", "platt", "none"] = "auto"
    """fitted on val and folded into the last layer of every member (the same ranking and
    AUROC): temperature: logits / T; platt (two classes): sigmoid(a * margin + b), which
    also moves the class prior to val's; auto: of none and temperature, the lower NLL
    cross-fitted over folds of val; none: the raw softmax"""
    strategy: str = "auto"
    """Lightning Trainer's strategy: auto, ddp, ddp_spawn, ..."""
    devices: Literal["auto"] | int = "auto"
    """auto or a count: GPUs on a GPU machine, processes on a CPU"""
    num_nodes: int = Field(1, ge=1)
    """machines for multi-node DDP"""
    num_workers: int = Field(0, ge=0)
    """DataLoader worker processes (the arrays are already in memory)"""
    augment: AugmentParams = AugmentParams()
    """augmentations of the training batches"""
    unet_channels: list[int] = Field(default_factory=lambda: [16, 32, 64, 128], min_length=2)
    """segmentation: the MONAI U-Net's channels per level (each level halves the side)"""
    dice_weight: float = Field(1.0, ge=0)
    """segmentation: weight of the soft Dice term of the loss"""
    ce_weight: float = Field(1.0, ge=0)
    """segmentation: weight of the (binary, per segment) cross-entropy term of the loss"""
    unet_batch_size: int = Field(16, ge=1)
    """segmentation: batch_size of the U-Net (per device)"""
    unet_max_epochs: int = Field(150, ge=1)
    """segmentation: max_epochs of the U-Net; on the synthetic data 60 epochs gave test Dice
    0.913 (0.826 on the images with a lesion), the 93 that train.target_steps then plans
    0.927 (0.846), in 3 min 47 s for the whole dvc repro"""
    unet_learning_rate: float = Field(0.01, gt=0)
    """segmentation: learning_rate of the U-Net (the one-cycle peak); on the synthetic data
    the classifier's 0.001 with batches of 32 left it at test Dice 0.29, 0.01 with 16 reached
    0.89"""

    @field_validator("devices")
    @classmethod
    def _positive_devices(cls, value: str | int) -> str | int:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"devices must be 'auto' or a count >= 1, got {value}")
        return value


# Metrics where higher is better / lower is better (the gate's champion deltas need the sign).
HIGHER_IS_BETTER = (
    "auroc",
    "auprc",
    "accuracy",
    "sensitivity",
    "specificity",
    "f1",
    "dice",
    "iou",
    "detection_sensitivity",
)
LOWER_IS_BETTER = ("brier", "ece", "hd95", "false_positives_per_image")


class EvaluateParams(_Section):
    """How the test split is scored (docs/evaluation.md)."""

    threshold_policy: Literal["fixed", "target_sensitivity", "youden"] = "target_sensitivity"
    """how the operating threshold on p(positive) is chosen on the validation split (binary
    only; multi-class predicts the argmax) and written to metrics.json, which the Bento
    serves: fixed -> `threshold`; target_sensitivity -> the highest threshold whose val
    sensitivity reaches `target_sensitivity`; youden -> max(tpr - fpr)"""
    threshold: float = Field(0.5, gt=0, lt=1)
    """the threshold of the fixed policy"""
    target_sensitivity: float = Field(0.9, gt=0, le=1)
    """the val sensitivity the target_sensitivity policy reaches"""
    n_bins: int = Field(10, ge=2, le=100)
    """equal-width probability bins of the expected calibration error and reliability
    diagram"""
    n_bootstrap: int = Field(1000, ge=0, le=100_000)
    """resamples of the percentile bootstrap intervals; patients are resampled (all their
    test images together); 0: no intervals"""
    ci_level: float = Field(0.95, gt=0.5, lt=1)
    """the intervals' level"""
    seed: int = 0
    """seeds the bootstrap"""
    subgroups: list[str] = Field(
        default_factory=lambda: ["site", "manufacturer", "sex", "age_band"]
    )
    """manifest columns to slice the test split by; absent columns are reported as missing"""
    min_subgroup_n: int = Field(30, ge=1)
    """subgroups with fewer test images are reported but flagged small (and not gated)"""
    mask_threshold: float = Field(0.5, gt=0, lt=1)
    """segmentation: a pixel belongs to a segment where its probability reaches this"""
    detection_min_iou: float = Field(0.1, gt=0, le=1)
    """segmentation: a true lesion (connected component) counts as detected when a predicted
    component overlaps it with at least this IoU; unmatched predicted components are false
    positives"""


class GateParams(_Section):
    """The evaluation gate (docs/evaluation.md): value rules on the candidate's own test
    metrics, and change rules against the champion."""

    min_auroc: float = Field(0.85, ge=0, le=1)
    """test AUROC, at least"""
    min_auroc_ci_low: float = Field(0.75, ge=0, le=1)
    """lower end of the AUROC's bootstrap interval, at least: refuses a model that is good
    only by luck of the test draw"""
    min_sensitivity: float = Field(0.7, ge=0, le=1)
    """sensitivity at the operating threshold, at least"""
    min_specificity: float = Field(0.7, ge=0, le=1)
    """specificity at the operating threshold, at least"""
    max_ece: float = Field(0.15, ge=0, le=1)
    """expected calibration error, at most"""
    min_subgroup_auroc: float = Field(0.75, ge=0, le=1)
    """AUROC of every subgroup not flagged small (evaluate.min_subgroup_n), at least; 0: off"""
    min_dice: float = Field(0.8, ge=0, le=1)
    """segmentation: mean test Dice over images and segments, at least"""
    min_dice_ci_low: float = Field(0.7, ge=0, le=1)
    """segmentation: lower end of the Dice's patient-bootstrap interval, at least"""
    max_hd95: float = Field(10.0, gt=0)
    """segmentation: mean 95th-percentile Hausdorff distance in mm (pixels where the images
    carry no PixelSpacing), at most"""
    max_worse_than_champion: dict[str, float] = Field(
        default_factory=lambda: {
            "auroc": 0.02,
            "sensitivity": 0.05,
            "specificity": 0.05,
            "ece": 0.05,
            "dice": 0.02,
            "hd95": 2.0,
        }
    )
    """largest change for the worse against the champion (the last model packaged on the same
    source and class names, scored by evaluate on the candidate's test split), per metric:
    auroc 0.02 lets the candidate be at most 0.02 below it, ece 0.05 at most 0.05 above.
    Without a champion (or one of other class names, or gone from the store): value rules
    only"""

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
    """The Bento's HTTP service (POST /predict, /predict_batch; docs/serving.md). Carried into
    the Bento at package time; where it is served, $MEDFLOW_SERVE_<FIELD> overrides a field
    (lists: commas; e.g. MEDFLOW_SERVE_WORKERS=4)."""

    max_upload_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    """request bodies above this are refused (413) before they are parsed"""
    max_image_pixels: int = Field(256 * 1024 * 1024, ge=1)
    """decompression-bomb guard: rows x columns x frames x samples from the header, checked
    before any decoding (preprocess.max_frame_pixels still caps the one frame decoded)"""
    allow_png_jpeg: bool = False
    """accept PNG and JPEG besides DICOM (they carry no modality, window or photometric tags
    to check)"""
    allowed_modalities: list[str] = Field(default_factory=lambda: list(MODALITIES), min_length=1)
    """DICOM Modality values served; anything else is refused (422)"""
    max_batch_size: int = Field(16, ge=2, le=1024)
    """batching of concurrent requests (medflow.serving.batcher): the most images per forward
    pass, also the most files one /predict_batch takes"""
    max_latency_ms: int = Field(5000, ge=10)
    """the longest an image may wait for the model before its request is refused with 503
    (overloaded: retry later or add workers)"""
    workers: int = Field(1, ge=1, le=64)
    """worker processes, each with its own copy of the network"""
    timeout_s: int = Field(30, ge=1)
    """BentoML's request timeout (traffic.timeout), in seconds"""
    api_token_env: str = Field("MEDFLOW_API_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """the bearer token of /predict* is read from this environment variable where the Bento
    runs (never stored in the Bento); unset or empty: no authentication. Health stays open"""
    trace_predictions: bool = False
    """OpenTelemetry spans for /predict and /predict_batch (BentoML's tracing, collected only
    where a BentoML config sets an exporter and a sample rate). Off, those routes skip the
    tracing middleware: about 0.7 ms less per request (docs/serving.md)"""
    prediction_log: bool = True
    """record every classification in the prediction log (docs/monitoring.md): time, model,
    a keyed hash of the SOP Instance UID, modality, manufacturer, image size and intensity,
    probabilities, decision, latency; never an identifier. false: nothing is recorded and
    POST /feedback answers 409"""
    prediction_log_url: str = "sqlite:///monitoring/predictions.sqlite"
    """the prediction log's database: SQLite (a relative path is from the server's working
    directory) or PostgreSQL, postgresql://user@host:5432/dbname, its password from
    $PGPASSWORD or ~/.pgpass (never here); `medflow monitor` reads the same database"""
    prediction_log_retention_days: int = Field(90, ge=1)
    """predictions (and their feedback) older than this many days are deleted"""

    @field_validator("allowed_modalities")
    @classmethod
    def _upper_modalities(cls, value: list[str]) -> list[str]:
        return [v.strip().upper() for v in value]


_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_QIDO_KEY = r"^[A-Za-z][A-Za-z0-9]*$"


class PacsReceiveParams(_Section):
    """`medflow receive`: a DICOM C-STORE/C-ECHO SCP (DIMSE) writing into data.source
    (docs/pacs.md). Command-line options override these."""

    ae_title: str = Field("MEDFLOW", min_length=1, max_length=16, pattern=r"^[ -~]*[!-~][ -~]*$")
    """the receiver's own AE title (the called AE title senders must use)"""
    port: int = Field(11112, ge=1, le=65535)
    """the TCP port it listens on"""
    host: str = "0.0.0.0"
    """the address it listens on (127.0.0.1: this machine only)"""
    allowed_calling_ae_titles: list[str] = Field(default_factory=list)
    """the AE titles of the modalities/PACS allowed to send; an association from any other
    is rejected. Empty: every association is rejected (list the senders)"""
    labels: str = ""
    """a CSV (relative to data/) with the column StudyInstanceUID or AccessionNumber and the
    column label: a received instance of a listed study is filed under its label; others wait
    in data/received-unlabelled until their study is listed. "": the pacs labels CSV"""


class PacsInferParams(_Section):
    """`medflow infer` and the PACS inference flow: new images from the PACS to the served
    model, its result back to the PACS as a DICOM SR (and SEG) by STOW-RS (docs/pacs.md)."""

    bento_url: str = "http://127.0.0.1:3000"
    """the served champion Bento (`make serve`); its token: $MEDFLOW_API_TOKEN"""
    filters: dict[str, str] = Field(default_factory=dict)
    """QIDO-RS matching of the images to infer on (same keys as pacs.filters; SR/SEG/PR
    instances are never sent). Empty: pacs.filters"""
    lookback_days: int = Field(2, ge=0)
    """only studies whose StudyDate is within this many days of today (0: any date)"""
    cron: str = "*/15 * * * *"
    """the inference deployment's schedule (cron, orchestration.timezone); "": none"""


class PacsParams(_Section):
    """A PACS or any DICOMweb server as the data source (data.source: pacs), a DICOM receiver,
    and results sent back (docs/pacs.md). Credentials are never here: they come from the
    environment variables named below."""

    url: str = ""
    """the DICOMweb service root (QIDO-RS, WADO-RS, STOW-RS), e.g.
    http://orthanc:8042/dicom-web or https://pacs.example.org/dcm4chee-arc/aets/DCM4CHEE/rs"""
    filters: dict[str, str] = Field(default_factory=dict)
    """QIDO-RS matching keys and values of the images to pull: study level (StudyDate as
    YYYYMMDD or a range YYYYMMDD-YYYYMMDD, StudyDescription with * wildcards, AccessionNumber,
    ModalitiesInStudy) and series level (Modality, BodyPartExamined, SeriesDescription)"""
    labels: str = "pacs_labels.csv"
    """a CSV (relative to data/) with the column StudyInstanceUID or AccessionNumber, and the
    column label (a class name or its index): studies not in it are not retrieved"""
    user_env: str = Field("MEDFLOW_PACS_USER", pattern=_ENV_NAME)
    """the environment variable holding the HTTP basic-auth user (with password_env)"""
    password_env: str = Field("MEDFLOW_PACS_PASSWORD", pattern=_ENV_NAME)
    """the environment variable holding the basic-auth password"""
    token_env: str = Field("MEDFLOW_PACS_TOKEN", pattern=_ENV_NAME)
    """the environment variable holding a bearer token (used instead of basic auth when set)"""
    ca_bundle_env: str = Field("MEDFLOW_PACS_CA_BUNDLE", pattern=_ENV_NAME)
    """the environment variable naming a CA bundle file for an https server with a private CA"""
    workers: int = Field(4, ge=1, le=64)
    """concurrent retrievals (threads per worker process; the shards go to ingest.workers
    processes or a Dask cluster)"""
    timeout_seconds: float = Field(60.0, gt=0)
    """one HTTP request's connect and read timeout"""
    retries: int = Field(4, ge=0, le=20)
    """retries of a failed request (connection refused or reset, timeouts, 502/503/504), with
    exponential backoff; then the run stops with an error naming the server"""
    backoff_seconds: float = Field(0.5, ge=0)
    """the first retry's wait; each next one doubles it"""
    receive: PacsReceiveParams = PacsReceiveParams()
    """the DIMSE receiver (`medflow receive`)"""
    infer: PacsInferParams = PacsInferParams()
    """inference on new PACS images, results stored back (`medflow infer`)"""

    @field_validator("filters")
    @classmethod
    def _qido_keys(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if not re.match(_QIDO_KEY, k)]
        if bad:
            raise ValueError(f"filters keys must be DICOM keywords (e.g. Modality), got {bad}")
        return {k: str(v) for k, v in value.items()}


class MonitorParams(_Section):
    """`medflow monitor` and its deployment: the served model's recent inputs and outputs
    against its training data, and its live performance from feedback (docs/monitoring.md).
    The input drift rules are validate.drift's (manufacturer_mix, intensity)."""

    window_hours: float = Field(24.0, gt=0)
    """the predictions of the last this many hours are compared"""
    min_predictions: int = Field(100, ge=1)
    """fewer predictions in the window: drift is not judged (the report says so)"""
    psi_bins: int = Field(10, ge=2, le=100)
    """bins of the predicted-probability distribution (quantiles of the reference's)"""
    max_psi: float = Field(0.25, gt=0)
    """population stability index of the predicted probabilities above this breaks a rule
    (0.1-0.25 is commonly read as a moderate shift, above 0.25 as a large one)"""
    min_feedback: int = Field(30, ge=1)
    """fewer predictions with feedback in the window: live performance is not judged"""
    max_auroc_drop: float = Field(0.1, gt=0, le=1)
    """live AUROC below the model's evaluated test AUROC minus this breaks a rule"""
    cron: str = "0 * * * *"
    """the monitoring deployment's schedule (cron, orchestration.timezone); "": none"""


class PackageParams(_Section):
    model_name: str = Field("medflow-classifier", pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    """the name of the model in the BentoML model store and of the Bento"""
    serve: ServeParams = ServeParams()
    """baked into the Bento (as its `serve` argument), so a change rebuilds it"""


class OrchestrationParams(_Section):
    """Prefect deployments of the pipeline (docs/orchestration.md: `medflow orchestrate
    serve`, `make deployments`); read by flows/ only."""

    cron: str = "0 3 * * 1"
    """the training deployment's schedule (cron, in `timezone`); "": no schedule"""
    timezone: str = "UTC"
    """the time zone of `cron`"""
    watch_interval_seconds: int = Field(60, ge=5)
    """how often the watcher hashes data.source; a new hash emits medflow.data.changed"""
    retries: int = Field(2, ge=0, le=10)
    """retries of a stage on transient errors only (OSError, timeouts, a busy DVC lock),
    never on data errors"""
    retry_delay_seconds: float = Field(10.0, ge=0)
    """wait before each retry"""
    stage_timeout_seconds: int = Field(6 * 3600, ge=1)
    """a stage that runs longer fails (Prefect's task timeout)"""
    collision_strategy: Literal["ENQUEUE", "CANCEL_NEW"] = "ENQUEUE"
    """one training run at a time; another trigger waits (ENQUEUE) or is dropped
    (CANCEL_NEW)"""
    notify_block: str = ""
    """a saved Prefect notification block ("<block-type-slug>/<name>", e.g.
    "slack-webhook/medflow-ops") that failed runs notify through; "": none"""


class Params(_Section):
    """The whole of params.yaml: one section per stage."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, use_attribute_docstrings=True
    )

    data: DataParams = DataParams()
    """the source of the images and its split (read by ingest and the stages after it)"""
    synth: SynthParams = SynthParams()
    """the synthetic demo data (the synth stage)"""
    deid: DeidParams = DeidParams()
    """de-identification at ingest"""
    ingest: IngestParams = IngestParams()
    """the ingest stage's work and failure threshold"""
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    """the validate stage's rules (key `validate` in params.yaml)"""
    preprocess: PreprocessParams = PreprocessParams()
    """DICOM to model input, for training, evaluation and serving alike"""
    train: TrainParams = TrainParams()
    """the train stage"""
    evaluate: EvaluateParams = EvaluateParams()
    """the evaluate stage"""
    gate: GateParams = GateParams()
    """the gate stage"""
    package: PackageParams = PackageParams()
    """the package stage and the Bento it builds"""
    orchestration: OrchestrationParams = OrchestrationParams()
    """the Prefect deployments"""
    pacs: PacsParams = PacsParams()
    """the PACS: DICOMweb source (data.source: pacs), receiver, results sent back"""
    monitor: MonitorParams = MonitorParams()
    """production monitoring of the served model (`medflow monitor`)"""


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
