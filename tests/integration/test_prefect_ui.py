"""The Prefect UI, in a real headless Chromium, shows a finished pipeline run and its artifacts.

A real `prefect server start` (own PREFECT_HOME, default SQLite), the project's pipeline flow
run against it on a clone of the session's reproduced tiny copy (conftest.py `reproduced`: DVC
reports every stage current, so the run skips them and publishes their outputs, as
src/medflow/orchestration/artifacts.py does on every run), then the UI pages of that flow run
opened in Debian's `chromium` over the DevTools protocol. Screenshots land in
test-output/prefect-ui/.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from medflow.orchestration.artifacts import KEYS as ARTIFACT_KEYS
from tests.helpers.headless_chromium import BINARIES, HeadlessChromium, find_chromium
from tests.helpers.pipeline_copy import ROOT, clone
from tests.helpers.prefect_server import client_env, running_server

OUTPUT = ROOT / "test-output" / "prefect-ui"
# what src/medflow/orchestration/artifacts.py publishes on a run whose gate accepted (run or
# skipped as current)
EXPECTED_ARTIFACTS = set(ARTIFACT_KEYS)

CHROMIUM = find_chromium()
pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None,
        reason=f"no headless browser on PATH (looked for {', '.join(BINARIES)}); "
        "`make system-deps` installs Debian's chromium",
    ),
    pytest.mark.timeout(600),
]


@pytest.fixture(scope="module")
def finished_run(reproduced: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Serve Prefect, run the pipeline against it; yield base URL, the run and its artifacts."""
    tmp = tmp_path_factory.mktemp("prefect_ui")
    repo = clone(reproduced[0], tmp / "repo")  # private: DVC keeps its lock and state in it
    with running_server(tmp / "server_home") as base:
        api = f"{base}/api"
        proc = subprocess.run(
            [sys.executable, "-m", "medflow.orchestration.pipeline", "--root", "."],
            cwd=repo,
            env=client_env(api, tmp / "client_home"),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, f"flow failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        runs = httpx.post(f"{api}/flow_runs/filter", json={"limit": 10}, timeout=10).json()
        assert len(runs) == 1, [r["name"] for r in runs]
        run = runs[0]
        artifacts = httpx.post(
            f"{api}/artifacts/filter",
            json={"artifacts": {"flow_run_id": {"any_": [run["id"]]}}},
            timeout=10,
        ).json()
        yield {"base": base, "run": run, "artifacts": artifacts}


def test_ui_shows_the_finished_flow_run_and_its_artifacts(finished_run, tmp_path):
    run, base = finished_run["run"], finished_run["base"]
    assert run["state_type"] == "COMPLETED", run["state"]
    keys = {a["key"] for a in finished_run["artifacts"] if a["key"]}
    assert EXPECTED_ARTIFACTS <= keys, f"the run published {sorted(keys)}"
    flow = httpx.get(f"{base}/api/flows/{run['flow_id']}", timeout=10).json()

    with HeadlessChromium(CHROMIUM, tmp_path / "chromium") as browser:
        browser.goto(f"{base}/runs/flow-run/{run['id']}")
        # the SPA renders after fetching from the API; wait for the run itself, not the shell
        browser.wait_for_text(run["name"], "Completed", flow["name"], "Artifacts", timeout=60)
        browser.screenshot(OUTPUT / "flow-run.png")

        browser.click_text("Artifacts")
        shown = browser.wait_for_text(*sorted(keys), timeout=30)
        browser.screenshot(OUTPUT / "flow-run-artifacts.png")
        assert run["name"] in shown and "Completed" in shown

        # the artifacts page lists them too, with their descriptions
        browser.goto(f"{base}/artifacts")
        browser.wait_for_text(*sorted(keys), "Test metrics, 95% intervals", timeout=30)
        browser.screenshot(OUTPUT / "artifacts.png")

    for name in ("flow-run.png", "flow-run-artifacts.png", "artifacts.png"):
        assert (OUTPUT / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
