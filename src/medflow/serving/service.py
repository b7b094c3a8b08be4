"""The BentoML service: POST /predict takes one DICOM file and returns the class probabilities.

The upload goes through medflow.preprocess, the same code that prepared the training data.
Which model it serves is fixed when the Bento is built (see `model_tag` and medflow.package).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import bentoml
import torch
from bentoml.exceptions import InvalidArgument
from pydantic import BaseModel

from medflow.config import PackageParams
from medflow.models.artifact import load_model
from medflow.preprocess import DicomError, PreprocessSummary, preprocess_dataset, read_dicom
from medflow.serving import MODEL_TAG_ARG

logger = logging.getLogger(__name__)

MODEL_TAG_ENV = "MEDFLOW_MODEL_TAG"


def model_tag() -> str:
    """The model store tag this service serves, first found of:

    1. the Bento argument `model_tag`: run_package passes the exact `name:version` it just
       saved, and BentoML stores it in the Bento, so a built Bento always serves the model it
       was built with, whatever is newer in the store;
    2. `$MEDFLOW_MODEL_TAG`, for serving from source (`bentoml serve medflow.serving.service`);
    3. `<package.model_name default>:latest`.
    """
    tag = getattr(bentoml.use_arguments(), MODEL_TAG_ARG, None) or os.environ.get(MODEL_TAG_ENV)
    return tag or f"{PackageParams().model_name}:latest"


def decide(probabilities: list[float], threshold: float) -> int:
    """Index of the predicted class.

    Two classes: the positive class (index 1) iff its probability reaches the threshold, as the
    evaluation stage scores it. More classes: the most probable one.
    """
    if len(probabilities) == 2:
        return int(probabilities[1] >= threshold)
    return max(range(len(probabilities)), key=probabilities.__getitem__)


class Prediction(BaseModel):
    label: str
    label_index: int
    probabilities: dict[str, float]
    # The decision threshold on p(positive class); None for more than two classes (argmax).
    threshold: float | None
    model_tag: str
    preprocessing: PreprocessSummary


@bentoml.service(name="medflow", resources={"cpu": "1"}, traffic={"timeout": 30})
class MedflowClassifier:
    """One DICOM image in, class probabilities out. No patient identifiers in or out of logs."""

    # A class attribute, so that `bentoml build` records (and later ships) this model.
    model_ref = bentoml.models.BentoModel(model_tag())

    def __init__(self) -> None:
        # The worker process is our entrypoint; BentoML's server logging passes WARNING+ only.
        logging.getLogger("medflow").setLevel(logging.INFO)
        stored = self.model_ref
        self.model_tag = str(stored.tag)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        net, self.spec = load_model(Path(stored.path))
        self.net = net.to(self.device)
        self.preprocess_params = self.spec.preprocess_params
        if len(self.spec.class_names) != self.spec.num_classes:
            raise ValueError(
                f"model {self.model_tag} has {self.spec.num_classes} outputs but"
                f" {len(self.spec.class_names)} class names: re-run the train stage"
            )
        logger.info(
            "serving %s (%s, classes %s) on %s",
            self.model_tag,
            self.spec.architecture,
            self.spec.class_names,
            self.device,
        )

    @bentoml.api
    def predict(self, file: Path) -> Prediction:
        """Classify one DICOM image (multipart field `file`)."""
        try:
            # Open it ourselves: the upload's file name is the client's and may name a patient,
            # and pydicom error messages can quote the path.
            with file.open("rb") as fh:
                ds = read_dicom(fh)
            image, summary = preprocess_dataset(ds, self.preprocess_params)
        except DicomError as exc:
            # A client error (HTTP 400), not a server fault; the message names the problem.
            # BentoML logs it with a traceback; `from None` keeps that to one.
            raise InvalidArgument(
                f"{exc}; send one DICOM image file as the form field 'file'"
            ) from None
        x = torch.from_numpy(image)[None].to(self.device)
        with torch.inference_mode():
            probs = torch.softmax(self.net(x).float(), dim=1)[0].cpu().tolist()
        binary = len(probs) == 2
        index = decide(probs, self.spec.threshold)
        names = self.spec.class_names
        logger.info(
            "predicted %s for a %dx%d %s image",
            names[index],
            *summary.original_shape,
            summary.photometric,
        )
        return Prediction(
            label=names[index],
            label_index=index,
            probabilities=dict(zip(names, probs, strict=True)),
            threshold=self.spec.threshold if binary else None,
            model_tag=self.model_tag,
            preprocessing=summary,
        )
