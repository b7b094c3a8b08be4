"""Infra-validation, as TFX's InfraValidator does: start a Bento for real before it is champion.

`bentoml serve` runs on a free loopback port in its own process group. /readyz and /healthz
must answer 200, and the model's reference DICOM files (stored beside the weights by
medflow.registry.packaging) must get the probabilities evaluation scored, within REFERENCE_ATOL;
a segmentation model's go to /segment, and each segment's mask must match the stored one
(Dice >= REFERENCE_MIN_DICE).
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medflow.errors import StageFailed

logger = logging.getLogger(__name__)

# The service's bearer token, when it requires one; infra-validation sends it like a client.
API_TOKEN_ENV = "MEDFLOW_API_TOKEN"
PROBES = ("/readyz", "/healthz")
# What BentoML 1.4 logs when the service's __init__ raised: its arbiter then restarts the
# worker forever instead of exiting, so waiting for /readyz would only run into the timeout.
STARTUP_FAILED = "Application startup failed"


# The model store entry's reference: de-identified test-split DICOM files and expected.json,
# {"samples": [{"file": name, "probabilities": [one per class]}]}, as evaluate scored them.
REFERENCE_DIR = "reference"
REFERENCE_FILE = "expected.json"
# served vs evaluated probability: the same code and weights; float32 noise is ~1e-6
REFERENCE_ATOL = 1e-4
# segmentation: the reference is {"task": "segmentation", "samples": [{"file": name, "mask":
# "<name>_mask.npy"}]}, masks (K, rows, columns) uint8; a served mask must match each plane
# with at least this Dice (float32 noise may flip a pixel at the threshold, no more)
SEGMENTATION = "segmentation"
REFERENCE_MIN_DICE = 0.99


class InfraValidationFailed(StageFailed):
    """The built Bento did not start or did not answer as it must: it is not promoted."""


@dataclass(frozen=True)
class RunningBento:
    """A started `bentoml serve`: its base URL, process id and log file."""

    url: str
    pid: int
    log: Path


@dataclass(frozen=True)
class InfraReport:
    """What the validated server did: the model it said it serves and how fast it was."""

    bento_tag: str
    served_model_tag: str
    n_samples: int
    startup_seconds: float
    latencies_ms: list[float]


def free_port() -> int:
    """A TCP port free on the loopback interface just now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(log: Path, chars: int = 3000) -> str:
    text = log.read_text(errors="replace") if log.is_file() else ""
    return text[-chars:] or "(empty log)"


def stop_process_group(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM the process group of `proc` (a server and its workers), SIGKILL if it lingers."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass


@contextmanager
def serve_bento(
    bento_tag: str,
    *,
    workdir: Path,
    timeout: float = 120,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[RunningBento]:
    """`bentoml serve bento_tag` on a loopback port until the block ends; ready on entry.
    `env`: the server's whole environment (default: this process's).

    Raises InfraValidationFailed when the server exits or is not ready within `timeout` s.
    workdir holds the server log and is its cwd (`bentoml serve` puts its cwd on sys.path, so
    it must not be the project: the Bento's own copy of medflow must be what runs).
    """
    import httpx

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "server.log"
    port = port or free_port()
    cmd = [sys.executable, "-m", "bentoml", "serve", bento_tag]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=None if env is None else dict(env),
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise InfraValidationFailed(
                    f"bentoml serve {bento_tag} exited with code {proc.returncode} before it"
                    f" was ready; server log:\n{_tail(log)}"
                )
            if STARTUP_FAILED in log.read_text(errors="replace"):
                raise InfraValidationFailed(
                    f"bentoml serve {bento_tag} could not start its service (a worker failed"
                    f" in start-up: the model or code in the Bento is broken); server log:\n"
                    f"{_tail(log)}"
                )
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise InfraValidationFailed(
                    f"bentoml serve {bento_tag} was not ready after {timeout:.0f} s;"
                    f" server log:\n{_tail(log)}"
                )
            time.sleep(0.3)
        yield RunningBento(url=url, pid=proc.pid, log=log)
    finally:
        stop_process_group(proc)


def sample_dicoms(folder: Path) -> list[Path]:
    """A few valid DICOM files unlike each other: one per synthetic site (12/8/16 bits,
    MONOCHROME1, rescale, window) and pydicom's bundled CT slice. No patient data."""
    import pydicom.examples

    from medflow.config import SynthParams
    from medflow.data.synthetic import SITES, run_synth

    folder = Path(folder)
    synth = folder / "synthetic"
    params = SynthParams(n_patients=max(6, len(SITES)), images_per_patient=1, seed=20261124)
    run_synth(params, ["normal", "lesion"], synth)
    files = sorted(p for p in synth.rglob("*") if p.is_file() and p.name.startswith("IM"))
    ct = folder / "ct.dcm"
    pydicom.examples.ct.save_as(ct)
    return files[: len(SITES)] + [ct]


def stored_reference(model_tag: str) -> tuple[list[Path], list[list[float]]] | None:
    """The reference samples stored with `model_tag` in the BentoML model store and the
    probabilities evaluated for each; None when it has none (packaged without them)."""
    import bentoml

    folder = Path(bentoml.models.get(model_tag).path) / REFERENCE_DIR
    if not (folder / REFERENCE_FILE).is_file():
        return None
    rows = json.loads((folder / REFERENCE_FILE).read_text())["samples"]
    return [folder / r["file"] for r in rows], [list(r["probabilities"]) for r in rows]


def model_task(model_tag: str) -> str:
    """The task of `model_tag` in the BentoML model store: its model.json's (ModelSpec)."""
    import bentoml

    card = Path(bentoml.models.get(model_tag).path) / "model.json"
    spec = json.loads(card.read_text()) if card.is_file() else {}
    return str(spec.get("task", "classification"))


def stored_seg_reference(model_tag: str) -> tuple[list[Path], list[Any]] | None:
    """A segmentation model's reference samples and the masks (K, rows, columns) stored for
    each; None when it has none."""
    import bentoml
    import numpy as np

    folder = Path(bentoml.models.get(model_tag).path) / REFERENCE_DIR
    if not (folder / REFERENCE_FILE).is_file():
        return None
    rows = json.loads((folder / REFERENCE_FILE).read_text())["samples"]
    return [folder / r["file"] for r in rows], [np.load(folder / r["mask"]) for r in rows]


def dice(a: Any, b: Any) -> float:
    """Dice of two binary masks; 1.0 when both are empty."""
    import numpy as np

    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def check_segmentation(
    status: int,
    body: Any,
    expected_model_tag: str,
    segment_names: list[str],
    expected: Any | None = None,
) -> list[str]:
    """Every way one /segment answer is wrong (empty when it is right); with `expected`, the
    masks (K, rows, columns) stored for that image, which each served mask must match with
    Dice >= REFERENCE_MIN_DICE."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    if status != 200:
        return [f"HTTP {status} (expected 200): {str(body)[:300]}"]
    if not isinstance(body, dict):
        return [f"answer is not a JSON object: {str(body)[:300]}"]
    problems = []
    if body.get("model_tag") != expected_model_tag:
        problems.append(
            f"served model_tag {body.get('model_tag')!r}, expected {expected_model_tag!r}"
        )
    segments = body.get("segments")
    names = [s.get("name") for s in segments] if isinstance(segments, list) else segments
    if names != list(segment_names):
        return [*problems, f"segments {names}, expected one per segment {segment_names}"]
    for k, segment in enumerate(segments):
        try:
            with Image.open(io.BytesIO(base64.b64decode(segment["mask_png"]))) as im:
                mask = np.asarray(im) > 0
        except Exception as exc:  # whatever the server sent, say what is wrong with it
            problems.append(f"segment {segment['name']!r}: mask_png unreadable ({exc})")
            continue
        if int(mask.sum()) != segment.get("area_px"):
            problems.append(
                f"segment {segment['name']!r}: area_px {segment.get('area_px')} but its mask"
                f" holds {int(mask.sum())} pixels"
            )
        if expected is not None:
            want = np.asarray(expected)[k]
            if mask.shape != want.shape:
                problems.append(
                    f"segment {segment['name']!r}: mask {mask.shape}, expected {want.shape}"
                )
            elif (score := dice(mask, want)) < REFERENCE_MIN_DICE:
                problems.append(
                    f"segment {segment['name']!r}: Dice {score:.4f} against the stored mask,"
                    f" below {REFERENCE_MIN_DICE}: the Bento does not answer as the packaged"
                    " model"
                )
    return problems


def check_prediction(
    status: int,
    body: Any,
    expected_model_tag: str,
    class_names: list[str],
    expected: list[float] | None = None,
) -> list[str]:
    """Every way one /predict answer is wrong (empty when it is right); with `expected`, the
    probabilities evaluated for that image, which the answer must repeat."""
    if status != 200:
        return [f"HTTP {status} (expected 200): {str(body)[:300]}"]
    if not isinstance(body, dict):
        return [f"answer is not a JSON object: {str(body)[:300]}"]
    problems = []
    if body.get("model_tag") != expected_model_tag:
        problems.append(
            f"served model_tag {body.get('model_tag')!r}, expected {expected_model_tag!r}"
        )
    probs = body.get("probabilities")
    if not isinstance(probs, dict) or list(probs) != list(class_names):
        shown = list(probs) if isinstance(probs, dict) else probs
        problems.append(f"probabilities for {shown}, expected one per class {class_names}")
    else:
        values = list(probs.values())
        if not all(isinstance(v, int | float) and 0 <= v <= 1 for v in values):
            problems.append(f"probabilities outside [0, 1]: {values}")
        elif not math.isclose(sum(values), 1.0, abs_tol=1e-4):
            problems.append(f"probabilities sum to {sum(values):.6f}, expected 1")
        if expected is not None and not problems:
            worst = max(abs(v - e) for v, e in zip(values, expected, strict=True))
            if worst > REFERENCE_ATOL:
                problems.append(
                    f"probabilities {[round(v, 6) for v in values]} differ from the evaluated"
                    f" {[round(e, 6) for e in expected]} by {worst:.2g}"
                    f" (tolerance {REFERENCE_ATOL:g}): the Bento does not answer as the"
                    " evaluated model"
                )
    if body.get("label") not in class_names:
        problems.append(f"label {body.get('label')!r} is not one of {class_names}")
    return problems


def infra_validate(
    bento_tag: str,
    expected_model_tag: str,
    class_names: list[str],
    *,
    samples: list[Path] | None = None,
    timeout: float = 120,
) -> InfraReport:
    """Serve `bento_tag`, probe it and predict each sample; raise InfraValidationFailed if any
    answer is wrong.

    The model's stored reference samples (stored_reference) are always sent, and their answers
    must be the evaluated probabilities; `samples`, extra files, are checked for shape only.
    Without `samples`, a model packaged without a reference is refused: nothing would show
    that its Bento answers as the evaluated model. A segmentation model (its model.json's
    task) is asked /segment, and its stored masks are compared (check_segmentation).
    """
    import httpx

    headers = {}
    if token := os.environ.get(API_TOKEN_ENV):
        headers["Authorization"] = f"Bearer {token}"
    files: list[Path] = list(samples or [])
    expected: list[Any] = [None] * len(files)
    segmenting = model_task(expected_model_tag) == SEGMENTATION
    route = "/segment" if segmenting else "/predict"
    reference = (stored_seg_reference if segmenting else stored_reference)(expected_model_tag)
    if reference is not None:
        files += reference[0]
        expected += reference[1]
    elif samples is None:
        raise InfraValidationFailed(
            f"{expected_model_tag} has no reference samples in the model store"
            f" ({REFERENCE_DIR}/): nothing shows that its Bento answers as the evaluated"
            " model; package it again (dvc repro package stores them), or pass --samples to"
            " check the answers' shape only"
        )
    with tempfile.TemporaryDirectory(prefix="medflow-infraval-") as tmp:
        t0 = time.monotonic()
        with serve_bento(bento_tag, workdir=Path(tmp) / "serve", timeout=timeout) as server:
            startup = time.monotonic() - t0
            problems: list[str] = []
            for probe in PROBES:
                status = httpx.get(server.url + probe, timeout=10).status_code
                if status != 200:
                    problems.append(f"GET {probe}: HTTP {status} (the Kubernetes probes need 200)")
            latencies, served = [], set()
            for i, path in enumerate(files):
                t1 = time.perf_counter()
                with path.open("rb") as fh:
                    # the sample's index, not its name: upload names never carry meaning
                    resp = httpx.post(
                        f"{server.url}{route}",
                        files={"file": (f"sample{i}.dcm", fh)},
                        headers=headers,
                        timeout=60,
                    )
                latencies.append((time.perf_counter() - t1) * 1000)
                try:
                    body: Any = resp.json()
                except ValueError:
                    body = resp.text
                if isinstance(body, dict):
                    served.add(str(body.get("model_tag")))
                check = check_segmentation if segmenting else check_prediction
                for problem in check(
                    resp.status_code,
                    body,
                    expected_model_tag,
                    class_names[1:] if segmenting else class_names,
                    expected[i],
                ):
                    problems.append(f"sample {i} ({path.name}): {problem}")
            if problems:
                listed = "\n  - ".join(problems)
                raise InfraValidationFailed(
                    f"bento {bento_tag} failed infra-validation ({len(problems)} problems):\n"
                    f"  - {listed}\nserver log (end):\n{_tail(server.log, 1500)}"
                )
    logger.info(
        "infra-validation of %s passed: ready in %.1f s, %d samples, %s",
        bento_tag,
        startup,
        len(files),
        ", ".join(sorted(served)),
    )
    return InfraReport(
        bento_tag=bento_tag,
        served_model_tag=expected_model_tag,
        n_samples=len(files),
        startup_seconds=startup,
        latencies_ms=latencies,
    )
