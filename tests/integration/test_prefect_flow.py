"""A real Prefect flow run (ephemeral test server) of the same stages dvc.yaml runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medflow.handoffs import Metrics
from tests.helpers.pipeline_copy import clone, make_copy, set_params
from tests.helpers.stages import dvc_stages


@pytest.fixture(scope="module")
def flow_run(prefect_server, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A copy after one full flow run, and that run's final state. Tests only read the copy:
    a test that changes it works in a clone."""
    from medflow.orchestration.pipeline import pipeline

    repo = make_copy(tmp_path_factory.mktemp("flow_repo"))
    return repo, pipeline(root=str(repo), return_state=True)


def _task_runs(flow_run_id) -> dict[str, str]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {r.name.rsplit("-", 1)[0]: r.state.type.value for r in runs}


def test_flow_runs_every_stage(flow_run):
    from medflow.stages import STAGES

    repo, state = flow_run
    assert list(STAGES) == dvc_stages()  # the flow runs the stages dvc.yaml declares
    assert state.is_completed(), state.message
    results = state.result()
    assert list(results) == list(STAGES)
    bento = json.loads((repo / "reports/bento.json").read_text())
    assert bento["bento_tag"] == results["package"].bento_tag
    tasks = _task_runs(state.state_details.flow_run_id)
    assert set(tasks) == set(STAGES) and set(tasks.values()) == {"COMPLETED"}, tasks


def test_gate_refusal_fails_the_flow_run(flow_run, tmp_path: Path):
    from medflow.orchestration.pipeline import pipeline

    src, first = flow_run
    assert first.is_completed(), f"the module's flow run failed: {first.message}"
    repo = clone(src, tmp_path / "repo")
    before = (repo / "reports/bento.json").read_text()
    metrics = Metrics.read(repo / "reports/metrics.json")
    metric = next(m for m in ("sensitivity", "specificity", "auroc") if getattr(metrics, m) < 1.0)
    set_params(repo, {"gate": {f"min_{metric}": min(1.0, getattr(metrics, metric) + 0.01)}})
    state = pipeline(root=str(repo), stages=["evaluate", "gate", "package"], return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="refused by the evaluation gate"):
        state.result()
    tasks = _task_runs(state.state_details.flow_run_id)
    assert tasks.get("gate") == "FAILED" and "package" not in tasks, tasks
    assert (repo / "reports/bento.json").read_text() == before
