"""The `medflow` console script: one sub-command per stage, called by dvc.yaml.

The Prefect flow in flows/ calls the same run_<stage>() functions directly.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from medflow.config import ConfigError, Params, load_params

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="medflow: DICOM in; de-identified data, a gated model and a Bento out.",
)
log = logging.getLogger("medflow")

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="params.yaml to read")]
F = TypeVar("F", bound=Callable[..., Any])


def _setup_logging() -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=os.environ.get("MEDFLOW_LOG_LEVEL", "INFO"),
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(show_path=False, markup=False)],
    )
    for noisy in (
        "great_expectations",
        "bentoml",
        "pytorch_lightning",
        "lightning_fabric",
        "httpx",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _stage(func: F) -> F:
    """Run a stage command: expected failures become one clear message and exit code 1."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from medflow.errors import StageFailed
        from medflow.imaging.dicom import (
            DicomError,  # not via medflow.imaging.preprocess: that loads torch
        )

        _setup_logging()
        try:
            return func(*args, **kwargs)
        except (StageFailed, ConfigError, DicomError, FileNotFoundError, ValueError) as exc:
            typer.secho(
                f"medflow {func.__name__.rstrip('_')}: {type(exc).__name__}: {exc}",
                fg=typer.colors.RED,
                err=True,
            )
            raise typer.Exit(code=1) from None

    return wrapper  # type: ignore[return-value]


def _params(path: Path) -> Params:
    return load_params(path)


@app.command()
@_stage
def synth(out: Path, params: ParamsOpt = Path("params.yaml")) -> None:
    """Write the synthetic DICOM dataset (with labels.csv) into OUT."""
    from medflow.data.synthetic import run_synth

    p = _params(params)
    result = run_synth(p.synth, p.data.class_names, out)
    log.info("synthetic dataset: %s", result)


@app.command()
@_stage
def ingest(
    src: Path,
    out: Path,
    params: ParamsOpt = Path("params.yaml"),
    workers: Annotated[
        int | None, typer.Option(help="worker processes (default: ingest.workers)")
    ] = None,
) -> None:
    """Read SRC recursively (DICOM + labels.csv or class folders, or .npz), de-identify, and
    write the images, manifest.csv and quarantine.csv into OUT. Re-running only reads new or
    changed files."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from medflow.data.deid import resolve_deid_key
    from medflow.data.ingest import IngestConfig, run_ingest

    p = _params(params)
    if workers is not None:
        p = p.model_copy(update={"ingest": p.ingest.model_copy(update={"workers": workers})})
    key = resolve_deid_key(
        os.environ, synthetic=p.data.is_synthetic, allow_demo=p.deid.allow_demo_key_for_synthetic
    )
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task("ingest", total=None)
        result = run_ingest(
            IngestConfig.from_params(p),
            src,
            out,
            key,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    if result.unchanged:
        log.info(
            "ingest: nothing changed since the last run; %d images in %s", result.n_images, out
        )
    else:
        log.info(
            "ingest: %d images from %d files (%d reused); not ingested: %s",
            result.n_images,
            result.n_files,
            result.n_reused,
            result.outcomes or "none",
        )


ReferenceOpt = Annotated[
    Path | None,
    typer.Option(
        "--reference",
        help="drift reference profile: compared with if present, replaced when the run passes",
    ),
]
ReferencesOpt = Annotated[
    Path | None,
    typer.Option(
        "--references",
        help="folder of drift references, one per dataset: uses <folder>/<dataset key>/"
        "profile.json for the dataset of params data.source and data.class_names",
    ),
]


@app.command()
@_stage
def validate(
    ingest_dir: Path,
    out: Path,
    reference: ReferenceOpt = None,
    references: ReferencesOpt = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Validate the manifest in INGEST_DIR with Great Expectations; report into OUT."""
    from medflow.data.dataset import Dataset, reference_profile
    from medflow.validation.stage import run_validate

    p = _params(params)
    dataset = Dataset.of(p.data)
    if references is not None:
        if reference is not None:
            raise ValueError("give --reference (one profile) or --references (a folder), not both")
        reference = reference_profile(references, dataset.key)
    result = run_validate(p.validate_, p.data.class_names, ingest_dir, out, reference, dataset)
    log.info("validation passed (%s); Data Docs: %s", result.statistics, result.docs_index)


@app.command()
@_stage
def preprocess(ingest_dir: Path, out: Path, params: ParamsOpt = Path("params.yaml")) -> None:
    """Turn the de-identified DICOM in INGEST_DIR into training arrays in OUT."""
    from medflow.data.preprocessing import run_preprocess

    run_preprocess(_params(params).preprocess, ingest_dir, out)


@app.command()
@_stage
def train(
    arrays_dir: Path,
    out: Path,
    params: ParamsOpt = Path("params.yaml"),
    checkpoints: Annotated[
        Path | None,
        typer.Option(help="Checkpoints to resume from (default: .<OUT>-checkpoints beside OUT)"),
    ] = None,
) -> None:
    """Train the classifier on ARRAYS_DIR; write the model artifact into OUT. An interrupted
    run of the same params and data resumes from its last checkpoint."""
    from medflow.models.training import run_train

    p = _params(params)
    run_train(p.train, p.data.class_names, arrays_dir, out, checkpoint_dir=checkpoints)


ChampionsOpt = Annotated[
    Path | None,
    typer.Option(
        "--champions",
        help="folder of champions, one per dataset (<folder>/<dataset key>/); the dataset is"
        " that of params data.source and data.class_names",
    ),
]


@app.command()
@_stage
def evaluate(
    model_dir: Path,
    arrays_dir: Path,
    manifest: Path,
    out: Path,
    params: ParamsOpt = Path("params.yaml"),
    champions: ChampionsOpt = None,
) -> None:
    """Choose the operating threshold on val, score the test split overall and per subgroup
    of MANIFEST (the ingest's manifest.csv); write metrics, subgroups, plots and predictions
    into OUT. With --champions, score the dataset's champion on the same test split too
    (OUT/baseline.json, what the gate's change rules compare with)."""
    from medflow.data.dataset import Dataset, champion_folder
    from medflow.evaluation.scoring import run_evaluate

    p = _params(params)
    dataset = Dataset.of(p.data)
    folder = champion_folder(champions, dataset.key) if champions is not None else None
    run_evaluate(
        p.evaluate, model_dir, arrays_dir, manifest, out, champion_dir=folder, dataset=dataset
    )


@app.command()
@_stage
def gate(
    metrics: Path,
    out: Path,
    params: ParamsOpt = Path("params.yaml"),
    subgroups: Annotated[Path | None, typer.Option(help="the evaluate stage's subgroups")] = None,
    context: Annotated[
        Path | None, typer.Option(help="the evaluate stage's evaluation.json (model card)")
    ] = None,
    baseline: Annotated[
        Path | None,
        typer.Option(
            help="the evaluate stage's baseline.json (the champion on the same test split);"
            " absent: value rules only"
        ),
    ] = None,
    card: Annotated[Path | None, typer.Option(help="write the model card here")] = None,
) -> None:
    """Judge METRICS against the gate's rules; write the decision to OUT (and the model card);
    exit 1, so that nothing is packaged, when refused."""
    from medflow.evaluation.gate import run_gate

    run_gate(
        _params(params).gate,
        metrics,
        out,
        subgroups_file=subgroups,
        baseline_file=baseline,
        context_file=context,
        card_file=card,
    )


@app.command()
@_stage
def package(
    model_dir: Path,
    metrics: Path,
    gate_report: Path,
    out: Path,
    params: ParamsOpt = Path("params.yaml"),
    project_root: Annotated[Path, typer.Option(help="where deploy/ and src/ are")] = Path("."),
    champions: ChampionsOpt = None,
    manifest: Annotated[
        Path | None, typer.Option(help="the ingested manifest: test-split reference samples")
    ] = None,
    predictions: Annotated[
        Path | None, typer.Option(help="evaluate's predictions.csv: the samples' probabilities")
    ] = None,
) -> None:
    """Save the model to the BentoML store and build the Bento; write its tag to OUT and,
    with --champions, make it the champion of its dataset, the one the next gate on that
    dataset compares against."""
    from medflow.data.dataset import Dataset, champion_folder
    from medflow.registry.packaging import run_package

    p = _params(params)
    dataset = Dataset.of(p.data)
    result = run_package(
        p.package,
        model_dir,
        metrics,
        gate_report,
        project_root,
        out,
        champion_dir=champion_folder(champions, dataset.key) if champions is not None else None,
        dataset=dataset,
        manifest=manifest,
        predictions=predictions,
    )
    typer.echo(f"Bento built: {result.bento_tag}\nServe it with:  bentoml serve {result.bento_tag}")
    if champions is not None and not result.champion:
        typer.echo(
            f"Not made the champion: the same network was replaced by hand (promote/rollback);"
            f" to serve it anyway: medflow models promote {result.model_tag}"
        )


@app.command("show-bento")
def show_bento(
    report: Annotated[Path, typer.Argument(help="the package stage's report")] = Path(
        "reports/bento.json"
    ),
) -> None:
    """Print the Bento the last package stage built and how to serve it."""
    import json

    if not report.is_file():
        typer.secho(
            f"no {report}: run the pipeline first (make run)", fg=typer.colors.RED, err=True
        )
        raise typer.Exit(code=1)
    tag = json.loads(report.read_text())["bento_tag"]
    home = os.environ.get("BENTOML_HOME", "~/bentoml")
    typer.echo(
        f"Bento built: {tag}\n"
        f"Serve it:    bentoml serve {tag}   (with BENTOML_HOME={home})\n"
        "Then:        curl -F file=@image.dcm http://127.0.0.1:3000/predict"
    )


models_app = typer.Typer(
    no_args_is_help=True,
    help="The model registry: list packaged models, promote one to champion, roll back.",
)
app.add_typer(models_app, name="models")
ChampionRootOpt = Annotated[
    Path,
    typer.Option(
        "--champions", help="the folder of champions, one per dataset (<folder>/<dataset key>/)"
    ),
]
DatasetOpt = Annotated[
    str | None,
    typer.Option(
        "--dataset",
        help="dataset key (medflow models datasets); default: the dataset of params.yaml's"
        " data.source and data.class_names",
    ),
]
CHAMPIONS = Path("reports/champion")


def _champion_of(params: Path, champions: Path, key: str | None) -> tuple[Path, dict[str, Any]]:
    """The champion folder of the selected dataset and the dataset's description."""
    from medflow.data.dataset import Dataset, champion_folder, check_key
    from medflow.registry.champion import read_champion

    current = Dataset.of(_params(params).data)
    if key is None or key == current.key:
        return champion_folder(champions, current.key), current.as_dict()
    folder = champion_folder(champions, check_key(key))
    recorded = (read_champion(folder) or {}).get("dataset")
    return folder, recorded or {"key": key}


@models_app.command("list")
@_stage
def models_list(
    params: ParamsOpt = Path("params.yaml"),
    champions: ChampionRootOpt = CHAMPIONS,
    dataset: DatasetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Every packaged model: tag, metrics, gate decision, data hash, dataset, date, Bento;
    * = the champion of the selected dataset."""
    import json

    from rich.console import Console
    from rich.table import Table

    from medflow.registry.store import list_models

    champion, _ = _champion_of(params, champions, dataset)
    entries = list_models(_params(params).package.model_name, champion)
    if as_json:
        rows = [{**e.__dict__, "created": e.created.isoformat()} for e in entries]
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    table = Table(title=f"{len(entries)} models ({champion}: * = champion)")
    columns = ("", "tag", "auroc", "sens", "spec", "ece", "gate", "data hash", "dataset", "created")
    for column in columns:
        table.add_column(column, no_wrap=True)
    table.add_column("bento", no_wrap=True)

    def num(value: object) -> str:
        return f"{value:.3f}" if isinstance(value, int | float) else "-"

    for e in entries:
        m = e.metrics
        table.add_row(
            "*" if e.champion else "",
            e.tag,
            *(num(m.get(k)) for k in ("auroc", "sensitivity", "specificity", "ece")),
            e.gate,
            (e.data_hash or "-")[:12],
            e.dataset or "-",
            e.created.strftime("%Y-%m-%d %H:%M"),
            ", ".join(e.bentos) or "(none)",
        )
    # piped (no terminal width): wide enough that tags are never cut
    Console(width=None if sys.stdout.isatty() else 200).print(table)


@models_app.command("promote")
@_stage
def models_promote(
    tag: Annotated[str, typer.Argument(help="model tag (name:version or version) or Bento tag")],
    params: ParamsOpt = Path("params.yaml"),
    champions: ChampionRootOpt = CHAMPIONS,
    dataset: DatasetOpt = None,
    samples: Annotated[
        Path | None,
        typer.Option(
            help="folder of DICOM files to send besides the model's reference samples"
            " (answers checked for shape only)"
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="seconds the Bento may take to start")] = 120,
) -> None:
    """Infra-validate TAG's Bento (serve it, send its reference DICOM files and check that it
    answers the evaluated probabilities); if it passes, make it the champion of the dataset.
    A failure changes nothing."""
    from medflow.registry.store import promote

    files = sorted(p for p in samples.rglob("*") if p.is_file()) if samples else None
    champion, described = _champion_of(params, champions, dataset)
    result = promote(
        tag,
        _params(params).package.model_name,
        champion,
        described,
        samples=files,
        timeout=timeout,
    )
    typer.echo(
        f"champion: {result.model_tag} (was {result.previous or 'none'})\n"
        f"serving:  {result.bento_tag}  (infra-validated on {result.infra.n_samples} files)"
    )


@models_app.command("rollback")
@_stage
def models_rollback(
    params: ParamsOpt = Path("params.yaml"),
    champions: ChampionRootOpt = CHAMPIONS,
    dataset: DatasetOpt = None,
    timeout: Annotated[float, typer.Option(help="seconds the Bento may take to start")] = 120,
) -> None:
    """Make the dataset's previous champion its champion again (infra-validated first)."""
    from medflow.registry.store import rollback

    champion, described = _champion_of(params, champions, dataset)
    result = rollback(_params(params).package.model_name, champion, described, timeout=timeout)
    typer.echo(
        f"rolled back: {result.model_tag} is the champion again (was {result.previous})\n"
        f"serving:     {result.bento_tag}"
    )


@models_app.command("served-bento")
@_stage
def models_served_bento(
    params: ParamsOpt = Path("params.yaml"),
    champions: ChampionRootOpt = CHAMPIONS,
    dataset: DatasetOpt = None,
) -> None:
    """Print the dataset's champion's Bento tag (what `make serve` serves)."""
    from medflow.registry.store import served_bento

    champion, _ = _champion_of(params, champions, dataset)
    typer.echo(served_bento(champion))


@models_app.command("datasets")
@_stage
def models_datasets(
    params: ParamsOpt = Path("params.yaml"),
    champions: ChampionRootOpt = CHAMPIONS,
) -> None:
    """Every dataset with a champion: key, source, class names, champion; * = params.yaml's."""
    from medflow.data.dataset import Dataset, known_keys
    from medflow.registry.champion import read_champion

    current = Dataset.of(_params(params).data).key
    for key in known_keys(champions):
        champion = read_champion(champions / key) or {}
        described = champion.get("dataset") or {}
        typer.echo(
            f"{'*' if key == current else ' '} {key}  source={described.get('source', '?')}"
            f"  classes={','.join(described.get('class_names') or []) or '?'}"
            f"  champion={champion.get('model_tag') or '-'}"
        )
    if current not in known_keys(champions):
        typer.echo(f"* {current}  (params.yaml's dataset: no champion yet)")


orchestrate_app = typer.Typer(
    no_args_is_help=True,
    help="Prefect deployments: scheduled and data-triggered training (docs/orchestration.md).",
)
app.add_typer(orchestrate_app, name="orchestrate")
RootOpt = Annotated[Path, typer.Option("--root", help="project root (params.yaml, dvc.yaml)")]


@orchestrate_app.command("serve")
@_stage
def orchestrate_serve(root: RootOpt = Path(".")) -> None:
    """Register the training (cron + data-change trigger, one at a time) and watcher
    deployments, and the failure notification if configured; serve them until Ctrl-C.
    Needs PREFECT_API_URL pointing at a server (make server)."""
    root = root.resolve()
    from medflow.orchestration.deployments import serve_all

    serve_all(root)


@orchestrate_app.command("register")
@_stage
def orchestrate_register(root: RootOpt = Path(".")) -> None:
    """Create the failure-notification automation from params orchestration.notify_block."""
    root = root.resolve()
    from medflow.orchestration.deployments import register_notifications

    name = register_notifications(_params(root / "params.yaml").orchestration)
    typer.echo(f"automation: {name}" if name else "orchestration.notify_block is empty: none")


@orchestrate_app.command("watch")
@_stage
def orchestrate_watch(root: RootOpt = Path(".")) -> None:
    """Hash data.source once; emit medflow.data.changed if it changed since the last look."""
    root = root.resolve()
    from medflow.orchestration.watch import watch_data

    state = watch_data(root=str(root), return_state=True)
    if not state.is_completed():
        raise typer.Exit(code=1)


def main() -> None:  # pragma: no cover
    app(prog_name="medflow")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
