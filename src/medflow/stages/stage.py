"""What a stage is: a name, its run on the project layout, and its command-line form.

Each module of medflow.stages defines one `STAGE`; medflow.stages.STAGES lists them in
dvc.yaml order for the CLI and the Prefect flow.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from medflow.config import Params
from medflow.stages.layout import Layout

ParamsOpt = Annotated[
    Path, typer.Option("--params", "-p", help="the params.yaml to read", show_default=True)
]
ChampionsOpt = Annotated[
    Path | None,
    typer.Option(
        "--champions",
        help="folder of champions, one per dataset (<folder>/<dataset key>/); the dataset is"
        " that of params data.source and data.class_names",
    ),
]


Progress = Callable[[int, int], None]
"""A stage's progress report, called as it goes with (units done, units in all)."""


@dataclass(frozen=True)
class Stage:
    """One pipeline stage.

    Attributes:
        name: the stage's name in dvc.yaml, the CLI and the Prefect flow.
        run: the stage on the project's layout (the Prefect task calls it): `run(layout,
            params)`, or `run(layout, params, progress=None)` for a stage that reports its
            progress (a Progress: ingest counts files, train epochs).
        command: the stage with its paths as command-line arguments (the CLI command that
            dvc.yaml runs). Both call the same stage function of the module.
        runs_always: whether it must run whatever DVC says (`always_changed` in dvc.yaml: the
            pull, whose input is a server), given the params; None: never.
    """

    name: str
    run: Callable[..., Any]
    command: Callable[..., Any]
    runs_always: Callable[[Params], bool] | None = None

    @property
    def reports_progress(self) -> bool:
        """Whether `run` takes a `progress` callback."""
        return "progress" in inspect.signature(self.run).parameters

    def execute(self, layout: Layout, params: Params, progress: Progress | None = None) -> Any:
        """Run the stage on `layout`; `progress` reaches the stages that report progress,
        the others ignore it."""
        if self.reports_progress:
            return self.run(layout, params, progress=progress)
        return self.run(layout, params)
