"""medflow: DICOM in; a de-identified, validated dataset, a gated model and a BentoML Bento out."""

__version__ = "0.1.0"
