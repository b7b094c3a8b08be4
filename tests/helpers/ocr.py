"""Real tesseract on a decoded frame: the text a reader would see in the pixels."""

from __future__ import annotations

import io
import os
import subprocess

import numpy as np
from PIL import Image

from medflow.imaging.pixels import luminance


def read_text(frame: np.ndarray) -> str:
    """All the text tesseract reads in a decoded frame, at twice the size, no threshold."""
    grey = luminance(frame.astype(np.float64))
    span = max(float(grey.max() - grey.min()), 1.0)
    image = Image.fromarray(((grey - grey.min()) * (255 / span)).astype(np.uint8))
    image = image.resize((image.width * 2, image.height * 2), Image.LANCZOS)
    png = io.BytesIO()
    image.save(png, format="PNG")
    done = subprocess.run(
        ["tesseract", "stdin", "stdout", "--psm", "11"],
        input=png.getvalue(),
        capture_output=True,
        env={**os.environ, "OMP_THREAD_LIMIT": "1"},
        check=True,
    )
    return done.stdout.decode()
