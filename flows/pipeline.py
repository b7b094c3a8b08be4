"""The medflow pipeline as a Prefect flow: the same run_<stage>() functions dvc.yaml calls.

Run it (ephemeral Prefect, no server needed):  python -m flows.pipeline [--root .]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.layout import Layout
from medflow.config import load_params

# Stages write files; their inputs are paths, so caching on inputs would be wrong.
_TASK = {"cache_policy": NO_CACHE, "log_prints": True}


@task(name="synth", **_TASK)
def synth(layout: Layout) -> Any:
    from medflow.data.synthetic import run_synth

    p = load_params(layout.params)
    return run_synth(p.synth, p.data.class_names, layout.synthetic)


@task(name="ingest", **_TASK)
def ingest(layout: Layout) -> Any:
    from medflow.data.deid import resolve_deid_key
    from medflow.data.ingest import IngestConfig, run_ingest

    p = load_params(layout.params)
    key = resolve_deid_key(
        os.environ, synthetic=p.data.is_synthetic, allow_demo=p.deid.allow_demo_key_for_synthetic
    )
    return run_ingest(
        IngestConfig.from_params(p), p.data.resolve_source(layout.data), layout.ingested, key
    )


@task(name="validate", **_TASK)
def validate(layout: Layout) -> Any:
    from medflow.validation.stage import run_validate

    p = load_params(layout.params)
    return run_validate(
        p.validate_, p.data.class_names, layout.ingested, layout.validation, layout.reference
    )


@task(name="preprocess", **_TASK)
def preprocess(layout: Layout) -> Any:
    from medflow.preprocess_stage import run_preprocess

    return run_preprocess(
        load_params(layout.params).preprocess, layout.ingested, layout.preprocessed
    )


@task(name="train", **_TASK)
def train(layout: Layout) -> Any:
    from medflow.train import run_train

    p = load_params(layout.params)
    return run_train(p.train, p.data.class_names, layout.preprocessed, layout.models)


@task(name="evaluate", **_TASK)
def evaluate(layout: Layout) -> Any:
    from medflow.evaluate import run_evaluate

    return run_evaluate(
        load_params(layout.params).evaluate,
        layout.models,
        layout.preprocessed,
        layout.manifest,
        layout.reports,
    )


@task(name="gate", **_TASK)
def gate(layout: Layout) -> Any:
    from medflow.gate import run_gate

    return run_gate(
        load_params(layout.params).gate,
        layout.metrics,
        layout.gate,
        subgroups_file=layout.subgroups,
        champion_file=layout.champion_metrics,
        context_file=layout.evaluation,
        card_file=layout.model_card,
    )


@task(name="package", **_TASK)
def package(layout: Layout) -> Any:
    from medflow.package import run_package

    return run_package(
        load_params(layout.params).package,
        layout.models,
        layout.metrics,
        layout.gate,
        layout.root,
        layout.bento,
        champion_dir=layout.champion,
    )


STAGES = ("synth", "ingest", "validate", "preprocess", "train", "evaluate", "gate", "package")


@flow(name="medflow-pipeline", log_prints=True)
def pipeline(root: str = ".", stages: list[str] | None = None) -> dict[str, Any]:
    """Run the stages in order (all by default, or the named subset, e.g. to re-judge a model
    with new gate thresholds); a failing stage (e.g. the gate) fails the flow run."""
    layout = Layout(Path(root).resolve())
    logger = get_run_logger()
    params = load_params(layout.params)  # fail on config before any heavy work
    unknown = sorted(set(stages or ()) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
    wanted = [s for s in STAGES if (stages is None or s in stages)]
    if not params.data.is_synthetic and "synth" in wanted:
        wanted.remove("synth")  # synthetic data is only made when it is the source
    results: dict[str, Any] = {}
    for name in wanted:
        stage = _TASKS[name]
        logger.info("stage %s: starting", name)
        results[name] = stage(layout)
        logger.info("stage %s: done: %s", name, results[name])
    return results


_TASKS = {t.name: t for t in (synth, ingest, validate, preprocess, train, evaluate, gate, package)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default=".", help="project root holding params.yaml")
    parser.add_argument("--stages", nargs="+", choices=STAGES, help="run only these stages")
    args = parser.parse_args(argv)
    state = pipeline(root=args.root, stages=args.stages, return_state=True)
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
