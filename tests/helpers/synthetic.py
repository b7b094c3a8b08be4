"""The small synthetic source the data tests share: its class names and synth params."""

from __future__ import annotations

from medflow.config import SynthParams

CLASSES = ["normal", "lesion"]
SMALL = SynthParams(n_patients=12, images_per_patient=2, lesion_prevalence=0.5, seed=3)
