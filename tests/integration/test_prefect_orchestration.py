"""The orchestrated pipeline on a real (test harness) Prefect server: a transient failure is
retried, unchanged stages are skipped by asking DVC, a gate refusal fails the run with the
rule, and the run's artifacts (progress of ingest and train too) are there for the UI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medflow.handoffs import Metrics
from medflow.orchestration.artifacts import KEYS as ARTIFACT_KEYS
from medflow.stages import STAGES
from tests.helpers.pipeline_copy import clone, make_copy, set_params


def _task_runs(flow_run_id) -> dict[str, object]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {r.name.rsplit("-", 1)[0]: r for r in runs}


def _run_name(flow_run_id) -> str:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).name


def _artifacts(flow_run_id) -> dict[str, object]:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a for a in found}


@pytest.fixture(scope="module")
def first_run(prefect_server, tmp_path_factory: pytest.TempPathFactory):
    """A copy after one full flow run in which preprocess failed once with a transient I/O
    error; the copy, the run's final state and how often preprocess was called. Tests only
    read the copy: a test that changes it works in a clone."""
    import dataclasses

    import medflow.orchestration.pipeline as fp

    repo = make_copy(
        tmp_path_factory.mktemp("orchestrated"),
        {"orchestration": {"retries": 2, "retry_delay_seconds": 0}},
    )
    real = STAGES["preprocess"]
    calls = []

    def flaky_once(layout, params):  # the real stage, after one transient I/O failure
        calls.append(1)
        if len(calls) == 1:
            raise OSError("[Errno 5] Input/output error (injected, once)")
        return real.run(layout, params)

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(STAGES, "preprocess", dataclasses.replace(real, run=flaky_once))
        state = fp.pipeline(root=str(repo), return_state=True)
    return repo, state, len(calls)


def _completed(first_run) -> tuple[Path, object]:
    repo, state, _ = first_run
    assert state.is_completed(), f"the module's flow run failed: {state.message}"
    return repo, state


def test_transient_failure_is_retried(first_run):
    import medflow.orchestration.pipeline as fp

    repo, state = _completed(first_run)
    assert first_run[2] == 2
    flow_run_id = state.state_details.flow_run_id
    tasks = _task_runs(flow_run_id)
    assert tasks["preprocess"].run_count == 2 and tasks["preprocess"].state.is_completed()
    assert tasks["ingest"].run_count == 1
    assert _run_name(flow_run_id) == "train-nodata"  # synthetic: no data before synth ran
    # dvc.lock records every stage the flow ran: DVC and the flow agree it is all current
    assert fp.dvc_stale(repo) == set()
    arts = _artifacts(flow_run_id)
    assert set(ARTIFACT_KEYS) <= set(arts)
    bento = json.loads((repo / "reports/bento.json").read_text())["bento_tag"]
    assert bento in arts["bento"].data
    assert "auroc" in json.dumps(arts["metrics"].data)


def test_ingest_and_train_show_their_progress(first_run):
    repo, state = _completed(first_run)
    arts = _artifacts(state.state_details.flow_run_id)
    for key in ("ingest-progress", "train-progress"):
        assert key in arts, sorted(arts)
        assert arts[key].type == "progress" and arts[key].data == 100, (key, arts[key])
        assert arts[key].task_run_id is not None  # shown with the stage's task run
    # the pull reports progress too (here it only writes its record: not a PACS source)
    reporting = {"ingest-progress", "train-progress", "pull-progress"}
    assert not {k for k in arts if k.endswith("-progress")} - reporting


def _progress_value(artifact_id) -> float:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterId

    with get_client(sync_client=True) as client:
        (found,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(id=ArtifactFilterId(any_=[artifact_id]))
        )
    return found.data


def test_progress_updates_are_throttled_and_end_at_100(prefect_server):
    from prefect import flow

    from medflow.orchestration.progress import StageProgress

    now = [0.0]
    seen: list[float] = []

    @flow
    def a_stage() -> None:
        progress = StageProgress("ingest", clock=lambda: now[0])
        for t, done in [(0.5, 500), (1.5, 500), (1.6, 990), (3.0, 504), (3.0, 990)]:
            now[0] = t
            progress(done, 1000)
            seen.append(_progress_value(progress.artifact_id))
        progress.finish()
        seen.append(_progress_value(progress.artifact_id))

    a_stage()
    # under a second since the last update, or the same percent: not sent
    assert seen == [0, 50, 50, 50, 99, 100]


@pytest.mark.filterwarnings("ignore:Artifact creation outside of a flow:FutureWarning")
def test_progress_that_cannot_be_published_never_fails_the_stage(
    caplog: pytest.LogCaptureFixture,
):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from medflow.orchestration.progress import StageProgress
    from medflow.registry.infra_validation import free_port

    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}):
        progress = StageProgress("train")  # no server there
        progress(1, 2)
        progress.finish()
    assert progress.artifact_id is None
    assert "progress of train not published" in caplog.text


def test_unchanged_stages_skip(first_run, tmp_path: Path):
    import medflow.orchestration.pipeline as fp
    from medflow.orchestration.watch import hash_source

    src, _ = _completed(first_run)
    repo = clone(src, tmp_path / "repo")
    # nothing changed: every stage is skipped, nothing runs
    again = fp.pipeline(root=str(repo), return_state=True)
    assert again.is_completed(), again.message
    results = again.result()
    assert list(results) == list(STAGES)
    assert all(isinstance(r, fp.Skipped) for r in results.values()), results
    digest = hash_source(repo / "data" / "synthetic").digest
    assert _run_name(again.state_details.flow_run_id) == f"train-{digest[:12]}"


def test_data_error_is_not_retried_and_gate_failure_names_the_rule(first_run, tmp_path: Path):
    import medflow.orchestration.pipeline as fp

    src, _ = _completed(first_run)
    repo = clone(src, tmp_path / "repo")
    metrics = Metrics.read(repo / "reports/metrics.json")
    metric = next(m for m in ("sensitivity", "specificity", "auroc") if getattr(metrics, m) < 1.0)
    set_params(repo, {"gate": {f"min_{metric}": min(1.0, getattr(metrics, metric) + 0.01)}})
    state = fp.pipeline(root=str(repo), return_state=True)
    assert state.is_failed()
    assert "stage gate failed" in state.message and f"gate.min_{metric}" in state.message
    tasks = _task_runs(state.state_details.flow_run_id)
    assert tasks["gate"].run_count == 1 and tasks["gate"].state.is_failed()  # not retried
    assert "package" not in tasks and tasks["train"].state.is_completed()
    arts = _artifacts(state.state_details.flow_run_id)
    assert (
        "REFUSED" in arts["gate-decision"].data
        and f"gate.min_{metric}" in arts["gate-decision"].data
    )
