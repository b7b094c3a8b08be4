"""The service's settings: package.serve as carried in the Bento, overridden by the environment.

Resolved when the service module is imported, because BentoML reads workers, traffic and
batching from its decorators then.
"""

from __future__ import annotations

import json
import os
import typing
from collections.abc import Mapping
from typing import Any

from medflow.config import ServeParams

ENV_PREFIX = "MEDFLOW_SERVE_"


def resolve_serve_params(
    bento_arg: Mapping[str, Any] | str | None, environ: Mapping[str, str] = os.environ
) -> ServeParams:
    """ServeParams from defaults, the Bento argument, then the environment (later wins).

    Args:
        bento_arg: the Bento argument `serve` (package.serve from params.yaml, stored by
            medflow.registry.packaging at build time), a mapping, or JSON from a command line.
        environ: where `$MEDFLOW_SERVE_<FIELD>` overrides are read, e.g.
            MEDFLOW_SERVE_WORKERS=4 or MEDFLOW_SERVE_ALLOWED_MODALITIES=CT,MR (lists are
            comma-separated).

    Raises:
        ValueError: a value does not validate; the message names it.
    """
    if isinstance(bento_arg, str):
        bento_arg = json.loads(bento_arg) if bento_arg.strip() else {}
    data: dict[str, Any] = dict(bento_arg or {})
    for name, field in ServeParams.model_fields.items():
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is None:
            continue
        is_list = typing.get_origin(field.annotation) is list
        data[name] = [v for v in (p.strip() for p in raw.split(",")) if v] if is_list else raw
    try:
        return ServeParams.model_validate(data)
    except ValueError as exc:
        raise ValueError(
            f"invalid serve settings (Bento argument 'serve' or ${ENV_PREFIX}*): {exc}"
        ) from exc
