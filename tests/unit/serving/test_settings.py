"""Serve settings: Bento argument, then $MEDFLOW_SERVE_* overrides."""

from __future__ import annotations

import json

import pytest

from medflow.config import ServeParams
from medflow.serving.settings import resolve_serve_params


def test_bento_argument_then_environment() -> None:
    arg = ServeParams(workers=2, allow_png_jpeg=True).model_dump()
    assert resolve_serve_params(arg, environ={}) == ServeParams(workers=2, allow_png_jpeg=True)
    env = {
        "MEDFLOW_SERVE_WORKERS": "4",
        "MEDFLOW_SERVE_ALLOW_PNG_JPEG": "false",
        "MEDFLOW_SERVE_ALLOWED_MODALITIES": "ct, mr",
        "UNRELATED": "x",
    }
    got = resolve_serve_params(json.dumps(arg), environ=env)  # JSON, as from `--arg serve=...`
    assert (got.workers, got.allow_png_jpeg, got.allowed_modalities) == (4, False, ["CT", "MR"])
    assert resolve_serve_params(None, environ={}) == ServeParams()


def test_bad_override_names_the_setting() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        resolve_serve_params({}, environ={"MEDFLOW_SERVE_MAX_BATCH_SIZE": "1"})
