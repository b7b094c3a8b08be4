"""`medflow models`: the model registry (list, promote, roll back, the served Bento)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from medflow.cli.common import command
from medflow.config import load_params
from medflow.stages.stage import ParamsOpt


def _registry(name: str) -> Callable[[Any], Any]:
    return lambda func: command(f"models {name}", func)


app = typer.Typer(
    no_args_is_help=True,
    help="The model registry: list packaged models, promote one to champion, roll back.",
)
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

    current = Dataset.of(load_params(params).data)
    if key is None or key == current.key:
        return champion_folder(champions, current.key), current.as_dict()
    folder = champion_folder(champions, check_key(key))
    champion = read_champion(folder)
    recorded = champion.dataset if champion is not None else None
    return folder, recorded.model_dump() if recorded is not None else {"key": key}


@app.command("list")
@_registry("list")
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
    entries = list_models(load_params(params).package.model_name, champion)
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


@app.command("promote")
@_registry("promote")
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
        load_params(params).package.model_name,
        champion,
        described,
        samples=files,
        timeout=timeout,
    )
    typer.echo(
        f"champion: {result.model_tag} (was {result.previous or 'none'})\n"
        f"serving:  {result.bento_tag}  (infra-validated on {result.infra.n_samples} files)"
    )


@app.command("rollback")
@_registry("rollback")
def models_rollback(
    params: ParamsOpt = Path("params.yaml"),
    champions: ChampionRootOpt = CHAMPIONS,
    dataset: DatasetOpt = None,
    timeout: Annotated[float, typer.Option(help="seconds the Bento may take to start")] = 120,
) -> None:
    """Make the dataset's previous champion its champion again (infra-validated first)."""
    from medflow.registry.store import rollback

    champion, described = _champion_of(params, champions, dataset)
    result = rollback(load_params(params).package.model_name, champion, described, timeout=timeout)
    typer.echo(
        f"rolled back: {result.model_tag} is the champion again (was {result.previous})\n"
        f"serving:     {result.bento_tag}"
    )


@app.command("served-bento")
@_registry("served-bento")
def models_served_bento(
    params: ParamsOpt = Path("params.yaml"),
    champions: ChampionRootOpt = CHAMPIONS,
    dataset: DatasetOpt = None,
) -> None:
    """Print the dataset's champion's Bento tag (what `make serve` serves)."""
    from medflow.registry.store import served_bento

    champion, _ = _champion_of(params, champions, dataset)
    typer.echo(served_bento(champion))


@app.command("datasets")
@_registry("datasets")
def models_datasets(
    params: ParamsOpt = Path("params.yaml"),
    champions: ChampionRootOpt = CHAMPIONS,
) -> None:
    """Every dataset with a champion: key, source, class names, champion; * = params.yaml's."""
    from medflow.data.dataset import Dataset, known_keys
    from medflow.registry.champion import read_champion

    current = Dataset.of(load_params(params).data).key
    for key in known_keys(champions):
        champion = read_champion(champions / key)
        described = champion.dataset if champion is not None else None
        source = (described.source if described else None) or "?"
        classes = ",".join((described.class_names if described else None) or []) or "?"
        tag = champion.model_tag if champion is not None else "-"
        typer.echo(
            f"{'*' if key == current else ' '} {key}  source={source}  classes={classes}"
            f"  champion={tag}"
        )
    if current not in known_keys(champions):
        typer.echo(f"* {current}  (params.yaml's dataset: no champion yet)")
