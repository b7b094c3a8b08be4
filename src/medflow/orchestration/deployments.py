"""Deployments of the pipeline on a Prefect server: scheduled and data-triggered training.

- `medflow-pipeline/train`: the pipeline on params `orchestration.cron`, on every
  `medflow.data.changed` event of this project (a DeploymentEventTrigger passes the new hash,
  which names the run) and on every `medflow.monitor.drift` event of this project (the
  monitor saw a rule break). One training at a time: deployment concurrency limit 1, a second
  trigger waits (ENQUEUE) or is dropped (CANCEL_NEW), params `orchestration.collision_strategy`.
- `medflow-data-watch/watch`: the watcher (flows/watch.py) every `watch_interval_seconds`.
- `medflow-monitor/monitor`: the monitor (medflow.orchestration.monitor) on `monitor.cron`;
  one run at a time, a run asked for during one is dropped.
- `medflow-pacs-infer/infer` (params pacs.url set): inference on the PACS's new images, results
  stored back (medflow.orchestration.pacs_infer), on `pacs.infer.cron` and on every
  `medflow.data.changed` event; one pass at a time, a pass asked for during one is dropped
  (the next cron or event catches up: the ledger knows what is done).
- With params `orchestration.notify_block` set, `register` creates the automations
  `medflow-run-failed` (a failed or crashed pipeline run) and `medflow-monitor-drift` (a
  `medflow.monitor.drift` event of this project), each sending a notification through that
  saved block. Nothing is hard-coded; empty: no automation.

Needs a server (triggers and automations do not run in ephemeral mode):

    prefect server start                               # or: make server
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m medflow.orchestration.deployments serve --root .
"""  # noqa: E501 (the module docstring is the command's --help)

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from medflow.config import MonitorParams, OrchestrationParams, PacsInferParams, load_params
from medflow.stages.layout import Layout

log = logging.getLogger(__name__)

TRAIN = "train"
WATCH = "watch"
INFER = "infer"
MONITOR = "monitor"
AUTOMATION = "medflow-run-failed"
DRIFT_AUTOMATION = "medflow-monitor-drift"


def training_deployment(root: Path, o: OrchestrationParams) -> Any:
    """The pipeline: cron schedule, data-change and drift triggers, concurrency limit 1."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.events import DeploymentEventTrigger
    from prefect.schedules import Cron

    from medflow.orchestration import monitor
    from medflow.orchestration.pipeline import pipeline
    from medflow.orchestration.watch import EVENT

    on_data = DeploymentEventTrigger(
        name="retrain-on-data-change",
        expect={EVENT},
        match={"prefect.resource.id": "medflow.data.*", "medflow.root": str(root)},
        parameters={"root": str(root), "data_hash": "{{ event.payload.hash }}"},
    )
    on_drift = DeploymentEventTrigger(
        name="retrain-on-drift",
        expect={monitor.EVENT},
        match={"prefect.resource.id": f"{monitor.RESOURCE_PREFIX}*", "medflow.root": str(root)},
        parameters={"root": str(root)},
    )
    return pipeline.to_deployment(
        name=TRAIN,
        schedules=[Cron(o.cron, timezone=o.timezone)] if o.cron else None,
        triggers=[on_data, on_drift],
        parameters={"root": str(root)},
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=o.collision_strategy),
        tags=["medflow", "training"],
        description="medflow pipeline: scheduled, and on every data change the watcher sees",
    )


def watcher_deployment(root: Path, o: OrchestrationParams) -> Any:
    """The watcher on an interval; overlapping looks are dropped."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig

    from medflow.orchestration.watch import watch_data

    return watch_data.to_deployment(
        name=WATCH,
        interval=o.watch_interval_seconds,
        parameters={"root": str(root)},
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy="CANCEL_NEW"),
        tags=["medflow", "watcher"],
        description="hash data.source; emit medflow.data.changed when it changes",
    )


def pacs_infer_deployment(root: Path, infer: PacsInferParams, o: OrchestrationParams) -> Any:
    """PACS inference: cron pacs.infer.cron, data-change trigger, one pass at a time."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.events import DeploymentEventTrigger
    from prefect.schedules import Cron

    from medflow.orchestration.pacs_infer import pacs_infer
    from medflow.orchestration.watch import EVENT

    trigger = DeploymentEventTrigger(
        name="infer-on-data-change",
        expect={EVENT},
        match={"prefect.resource.id": "medflow.data.*", "medflow.root": str(root)},
        parameters={"root": str(root)},
    )
    return pacs_infer.to_deployment(
        name=INFER,
        schedules=[Cron(infer.cron, timezone=o.timezone)] if infer.cron else None,
        triggers=[trigger],
        parameters={"root": str(root)},
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy="CANCEL_NEW"),
        tags=["medflow", "pacs", "inference"],
        description="new PACS images to the served champion; SR/SEG results back by STOW-RS",
    )


def monitor_deployment(root: Path, m: MonitorParams, o: OrchestrationParams) -> Any:
    """The monitor on monitor.cron; a run asked for during one is dropped."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.schedules import Cron

    from medflow.orchestration.monitor import monitor_flow

    return monitor_flow.to_deployment(
        name=MONITOR,
        schedules=[Cron(m.cron, timezone=o.timezone)] if m.cron else None,
        parameters={"root": str(root)},
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy="CANCEL_NEW"),
        tags=["medflow", "monitoring"],
        description="recent predictions against the training data and evaluated performance;"
        " emits medflow.monitor.drift when a rule breaks",
    )


def deployments(root: Path) -> list[Any]:
    """Every deployment of the project: training, watcher and monitor; PACS inference when
    pacs.url is set."""
    params = load_params(Layout(root).params)
    o = params.orchestration
    found = [
        training_deployment(root, o),
        watcher_deployment(root, o),
        monitor_deployment(root, params.monitor, o),
    ]
    if params.pacs.url:
        found.append(pacs_infer_deployment(root, params.pacs.infer, o))
    return found


def register_notifications(o: OrchestrationParams, root: Path | None = None) -> str | None:
    """Create (or replace) the notification automations when a block is configured: failed
    pipeline runs (AUTOMATION) and, with the project root, its drift events
    (DRIFT_AUTOMATION). Returns the failure automation's name, or None when `notify_block` is
    empty."""
    if not o.notify_block:
        log.info("orchestration.notify_block is empty: no failure or drift notifications")
        return None
    from prefect.blocks.core import Block

    if "/" not in o.notify_block:
        raise ValueError(
            f"orchestration.notify_block = {o.notify_block!r}: expected "
            "'<block-type-slug>/<block name>', e.g. 'slack-webhook/medflow-ops' "
            "(create one with `prefect block create` or in the UI)"
        )
    try:
        block = Block.load(o.notify_block)
    except ValueError as exc:
        raise ValueError(
            f"orchestration.notify_block = {o.notify_block!r} is not a saved block on this "
            f"server ({exc}); create it first (`prefect block ls` lists them)"
        ) from exc
    automations = [failure_automation(block._block_document_id)]
    if root is not None:
        automations.append(drift_automation(block._block_document_id, root))
    for automation in automations:
        _replace(automation)
        log.info("automation %s notifies through %s", automation.name, o.notify_block)
    return automations[0].name


def _replace(automation: Any) -> None:
    from prefect.automations import Automation

    try:
        Automation.read(name=automation.name).delete()
    except ValueError:
        pass  # none yet
    automation.create()


def failure_automation(block_document_id: Any) -> Any:
    """A failed or crashed pipeline run -> a notification through the block (not created)."""
    from prefect.automations import Automation
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture

    return Automation(
        name=AUTOMATION,
        description="a medflow pipeline run failed or crashed",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
            match_related={
                "prefect.resource.role": "flow",
                "prefect.resource.name": "medflow-pipeline",
            },
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[
            SendNotification(
                block_document_id=block_document_id,
                subject="medflow: run {{ flow_run.name }} {{ flow_run.state.name }}",
                body=(
                    "Flow run {{ flow_run.name }} ended {{ flow_run.state.name }}:\n"
                    "{{ flow_run.state.message }}\n{{ flow_run|ui_url }}"
                ),
            )
        ],
    )


def drift_automation(block_document_id: Any, root: Path) -> Any:
    """The project's medflow.monitor.drift event -> a notification through the block naming
    the broken rules (not created). The event carries no identifier, nor does the message."""
    from prefect.automations import Automation
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture

    from medflow.orchestration import monitor

    return Automation(
        name=DRIFT_AUTOMATION,
        description="medflow monitor: a rule broke (drift or a live performance drop)",
        trigger=EventTrigger(
            expect={monitor.EVENT},
            match={
                "prefect.resource.id": f"{monitor.RESOURCE_PREFIX}*",
                "medflow.root": str(root),
            },
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[
            SendNotification(
                block_document_id=block_document_id,
                subject="medflow: drift alarm for {{ event.payload.model }}",
                body=(
                    "medflow monitor: {{ event.payload.broken|length }} rule(s) broke for"
                    " {{ event.payload.model }} ({{ event.payload.predictions }} predictions"
                    " in {{ event.payload.window_hours }} h):\n"
                    "{% for r in event.payload.broken %}- {{ r.model_tag }}: {{ r.name }}"
                    " {{ r.score }} (threshold {{ r.threshold }})\n{% endfor %}"
                    f"Report: {monitor.report_dir(root) / 'report.html'}"
                ),
            )
        ],
    )


def serve_all(root: Path) -> None:
    """Register the deployments (and the notification automation) and serve them; blocks."""
    from prefect import serve

    register_notifications(load_params(Layout(root).params).orchestration, root)
    serve(*deployments(root))


def main(argv: list[str] | None = None) -> int:
    """`python -m medflow.orchestration.deployments serve|register`."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("command", choices=["serve", "register"], help="serve: register + run")
    parser.add_argument("--root", default=".", help="project root holding params.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = Path(args.root).resolve()
    if args.command == "register":
        register_notifications(load_params(Layout(root).params).orchestration, root)
        return 0
    serve_all(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
