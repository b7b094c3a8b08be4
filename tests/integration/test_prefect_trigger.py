"""Data change -> event -> training run, on a real `prefect server start` (triggers need the
server's event services, which the ephemeral server does not run).

The served deployments are the ones `python -m medflow.orchestration.deployments serve`
registers; the served watcher (every 10 s) hashes the real data folder; new files make a new
hash, an event, and a training run, with nothing else called. A second run asked for while it
trains waits for the deployment's concurrency slot (ENQUEUE) and starts after it ends."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from medflow.orchestration.watch import EVENT
from medflow.registry.infra_validation import free_port, stop_process_group
from tests.helpers.pipeline_copy import make_copy, run

WAIT_RUN_S = 420  # the tiny pipeline, end to end, on two busy cores
POLL_S = 2  # how often the served runner looks for due runs


def _wait(what: str, check, timeout: float, procs: list[subprocess.Popen]) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{p.args} exited {p.returncode} while waiting for {what}")
        try:
            found = check()
        except httpx.HTTPError:
            found = None
        if found:
            return found
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _created(response: httpx.Response) -> dict | None:
    """The created object, or None when the busy server (SQLite, two cores) answered 5xx and
    the request should be tried again; any other refusal fails the test with its body."""
    if response.status_code >= 500:
        return None
    assert response.status_code in (200, 201), (response.status_code, response.text)
    return response.json()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    home = tmp_path_factory.mktemp("prefect_server_home")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_EXTRA_LOGGERS="medflow",
        # a run waiting for the deployment's concurrency slot retries every 3 s, not 30
        PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="3",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    log = (home / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
         "--port", str(port), "--no-ui"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/api"
    try:
        _wait("the server", lambda: httpx.get(f"{url}/health").status_code == 200, 180, [proc])
        yield url, {**env, "PREFECT_API_URL": url}
    finally:
        stop_process_group(proc, timeout=60)


def test_new_files_start_a_training_run(server, tmp_path_factory):
    from medflow.orchestration.watch import hash_source

    url, env = server
    repo = make_copy(
        tmp_path_factory.mktemp("triggered"),
        {"data": {"source": "incoming"}, "orchestration": {"watch_interval_seconds": 10}},
    )
    incoming = repo / "data" / "incoming"
    run([sys.executable, "-m", "medflow.cli", "synth", str(incoming)], repo)

    def watch() -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "medflow.orchestration.watch", "--root", str(repo)],
            cwd=repo, env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout + proc.stderr

    assert "baseline" in watch()  # first look: a baseline, no event
    serve_log = (repo / "serve.log").open("w")
    # The runner asks the server for due runs every 10 s by default; three pick-ups (a watcher
    # run, the one after the change, the training run) lie on this test's path.
    serve_env = {**env, "PREFECT_RUNNER_POLL_FREQUENCY": str(POLL_S)}
    serving = subprocess.Popen(
        [sys.executable, "-m", "medflow.orchestration.deployments", "serve", "--root", str(repo)],
        cwd=repo, env=serve_env, stdout=serve_log, stderr=subprocess.STDOUT,
        start_new_session=True,  # stopping it also stops a flow run it started
    )  # fmt: skip
    try:
        deployment = _wait(
            "the training deployment",
            lambda: httpx.get(f"{url}/deployments/name/medflow-pipeline/train").json().get("id"),
            120,
            [serving],
        )
        _wait(
            "its trigger",
            lambda: any(
                a["name"] == "retrain-on-data-change"
                for a in httpx.post(f"{url}/automations/filter", json={}).json()
            ),
            60,
            [serving],
        )
        watcher = _wait(
            "the watcher deployment",
            lambda: httpx.get(f"{url}/deployments/name/medflow-data-watch/watch").json().get("id"),
            60,
            [serving],
        )

        def runs_of(deployment_id: str) -> list[dict]:
            """Runs that started (not the cron schedule's future ones)."""
            runs = httpx.post(
                f"{url}/flow_runs/filter",
                json={"flow_runs": {"deployment_id": {"any_": [deployment_id]}}},
            ).json()
            return [r for r in runs if r["state_type"] != "SCHEDULED"]

        schedules = httpx.get(f"{url}/deployments/{deployment}").json()["schedules"]
        assert [s["schedule"]["cron"] for s in schedules] == ["0 3 * * 1"]  # params cron

        def logs_of(run_id: str) -> str:
            logs = httpx.post(
                f"{url}/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}}
            ).json()
            return "\n".join(entry["message"] for entry in logs)

        def watcher_saw_no_change(after: datetime | None = None):
            """A served watcher run (started after `after`) that looked and logged that the
            data is unchanged: what it decided, observed, not inferred from a quiet wait."""

            def found() -> dict | None:
                for r in runs_of(watcher):
                    started = r["start_time"] and datetime.fromisoformat(r["start_time"])
                    if r["state_type"] != "COMPLETED" or (after and started < after):
                        continue
                    if "data unchanged" in logs_of(r["id"]):
                        return r
                return None

            return found

        def data_events() -> list[dict]:
            """The data-change events of this copy the server has stored."""
            page = httpx.post(
                f"{url}/events/filter",
                json={"filter": {"event": {"name": [EVENT]}}, "limit": 50},
            ).json()
            root = str(repo.resolve())
            return [e for e in page["events"] if e["resource"].get("medflow.root") == root]

        # the served watcher looks on its own: unchanged data, no event, no training run
        _wait("a served watcher run to find the data unchanged", watcher_saw_no_change(), 120,
              [serving])  # fmt: skip
        assert data_events() == [] and runs_of(deployment) == []

        # new DICOM files in the source: nobody calls anything, the watcher sees them
        dicom = next(p for p in sorted(incoming.rglob("*.dcm")))
        shutil.copy2(dicom, dicom.with_name("new_arrival.dcm"))
        expected = hash_source(incoming).digest
        (event,) = _wait("the watcher's data-change event", data_events, 120, [serving])
        assert event["payload"]["hash"] == expected

        def in_state(*types: str, run_id: str | None = None):
            def found() -> dict | None:
                runs = [r for r in runs_of(deployment) if r["state_type"] in types]
                runs = [r for r in runs if run_id is None or r["id"] == run_id]
                return runs[0] if runs else None

            return found

        first = _wait("the triggered run to start", in_state("RUNNING"), WAIT_RUN_S, [serving])
        assert first["name"] == f"train-{expected[:12]}"
        assert first["parameters"]["data_hash"] == expected
        assert len(runs_of(deployment)) == 1  # one change, one event, one training run

        # A second request while it trains (another event, a cron tick, a person): with the
        # deployment's concurrency limit 1 and ENQUEUE it waits for the slot, never runs beside.
        second = _wait(
            "the second run to be created",
            lambda: _created(
                httpx.post(
                    f"{url}/deployments/{deployment}/create_flow_run",
                    json={"parameters": {"data_hash": expected}},
                    timeout=30,
                )
            ),
            60,
            [serving],
        )
        done = ("COMPLETED", "FAILED", "CRASHED")
        first = _wait(
            "the triggered run", in_state(*done, run_id=first["id"]), WAIT_RUN_S, [serving]
        )
        assert first["state_type"] == "COMPLETED", (first["state"], serve_log.name)
        assert (repo / "reports" / "bento.json").is_file()
        second = _wait("the queued run", in_state(*done, run_id=second["id"]), 180, [serving])
        assert second["state_type"] == "COMPLETED", (second["state"], serve_log.name)
        # it started once the first had ended (and found every stage current)
        started, ended = (
            datetime.fromisoformat(t) for t in (second["start_time"], first["end_time"])
        )
        assert started >= ended, (first, second)

        # having seen the change, the watcher looks again and finds nothing new: still the one
        # event, and no training run but the triggered one and the one asked for
        occurred = datetime.fromisoformat(event["occurred"])
        _wait("a later watcher run to find the data unchanged",
              watcher_saw_no_change(after=occurred), 120, [serving])  # fmt: skip
        assert [e["id"] for e in data_events()] == [event["id"]]
        assert {r["id"] for r in runs_of(deployment)} == {first["id"], second["id"]}
    finally:
        # A watcher run may be in flight when the test ends; the runner waits for it on
        # SIGTERM, and a busy machine may take longer than that wait: then SIGKILL.
        stop_process_group(serving, timeout=60)
