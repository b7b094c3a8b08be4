"""`medflow receive`: the PACS and modalities push DICOM to medflow (docs/pacs.md)."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from medflow.config import Params, load_params
from medflow.errors import PacsError
from medflow.stages.layout import Layout
from medflow.stages.stage import ParamsOpt

HELD = "received-unlabelled"  # under data/: studies waiting for their label


def _receive_source(params: Params, data: Path, override: str | None) -> Path:
    """The folder received instances go to: --source, else data.source (relative to data/).
    Raises PacsError for a source the receiver must not write into."""
    value = override if override is not None else params.data.source
    where = "--source" if override is not None else "params data.source"
    if value == "synthetic":
        raise PacsError(
            f"{where} is synthetic: the synth stage rewrites that folder; receive into a DICOM"
            " folder (set data.source to it, or pass --source FOLDER)"
        )
    if value == "pacs":
        raise PacsError(
            f"{where} is pacs: data/pacs mirrors the PACS query (the pull stage removes what it"
            " does not match); receive into a DICOM folder (--source FOLDER) instead"
        )
    source = params.data.model_copy(update={"source": value}).resolve_source(data)
    if source.suffix == ".npz" or source.is_file():
        raise PacsError(f"{where} {source} is a file: the receiver needs a folder")
    return source


def receive(
    params: ParamsOpt = Path("params.yaml"),
    port: Annotated[
        int | None, typer.Option("--port", help="TCP port (default params pacs.receive.port)")
    ] = None,
    ae_title: Annotated[
        str | None,
        typer.Option("--ae-title", help="this receiver's AE title (default pacs.receive.ae_title)"),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option("--host", help="address to listen on (default pacs.receive.host)"),
    ] = None,
    allow: Annotated[
        list[str] | None,
        typer.Option(
            "--allow",
            help="a calling AE title allowed to send (repeat for several; replaces"
            " pacs.receive.allowed_calling_ae_titles)",
        ),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            help="the DICOM folder to file into, relative to data/ or absolute (default"
            " data.source)",
        ),
    ] = None,
) -> None:
    """Receive DICOM (C-STORE, C-ECHO) from the allowed AE titles into the source folder, until
    Ctrl-C or SIGTERM. The data watcher sees the new files and triggers retraining."""
    from medflow.data.deid import resolve_deid_key
    from medflow.pacs.receive_files import Filer, Targets
    from medflow.pacs.receiver import Receiver, ReceiverSettings, quiet_pynetdicom

    config = load_params(params)
    cfg = config.pacs.receive
    data = Layout(params.resolve().parent).data
    folder = _receive_source(config, data, source)
    segmentation = config.data.task == "segmentation"
    targets = Targets(
        source=folder,
        held=data / HELD,
        study_labels=None if segmentation else data / (cfg.labels or config.pacs.labels),
        class_names=tuple(config.data.class_names),
        key=resolve_deid_key(os.environ, synthetic=False, allow_demo=False),
    )
    settings = ReceiverSettings(
        ae_title=ae_title or cfg.ae_title,
        host=host or cfg.host,
        port=cfg.port if port is None else port,
        allowed=tuple(allow if allow else cfg.allowed_calling_ae_titles),
    )
    quiet_pynetdicom()
    receiver = Receiver(settings, Filer(targets))
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    receiver.serve(stop)


def infer(
    params: ParamsOpt = Path("params.yaml"),
    bento_url: Annotated[
        str | None,
        typer.Option("--bento-url", help="the served Bento (default pacs.infer.bento_url)"),
    ] = None,
) -> None:
    """One inference pass: the PACS's new images (params pacs.infer) to the served champion
    Bento; each result stored in the PACS by STOW-RS as a DICOM SR (a segmentation model's:
    its DICOM SEG). Images with a stored result of the served model are skipped."""
    from medflow.orchestration.pacs_infer import infer_pass

    result = infer_pass(params, bento_url)
    typer.echo(", ".join(f"{k}: {v}" for k, v in result.summary().items()))
