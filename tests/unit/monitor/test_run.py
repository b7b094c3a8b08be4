"""A monitor run end to end without Prefect: a real SQLite prediction log written through
medflow.serving.prediction_log, real model store entries, real Great Expectations suites, the
report on disk and the drift scores back in the log."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from medflow.config import Params
from medflow.monitor.report import SUMMARY_FILE
from medflow.monitor.result import REPORT_FILE, docs_slug
from medflow.monitor.run import run_monitor, sqlite_path
from medflow.serving.prediction_log import engine_for, latest_scores
from tests.helpers.monitoring import (
    SHIFTED,
    TRAINING,
    Site,
    log_predictions,
    reference,
    store_model,
)

URL = "sqlite:///monitoring/predictions.sqlite"
PARAMS = Params.model_validate({"evaluate": {"n_bootstrap": 200}})
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _run(root: Path, params: Params = PARAMS, **kwargs):
    return run_monitor(params, URL, root / "reports" / "monitor", root=root, now=NOW, **kwargs)


def _rules(result) -> dict[str, tuple[bool, bool]]:
    (model,) = result.models
    return {r.name: (r.judged, r.broken) for r in model.rules}


def _output_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (root / "reports").rglob("*") if p.is_file())


def test_no_log_yet_is_named_and_nothing_is_created(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="serve the Bento first") as exc:
        _run(tmp_path)
    assert str(tmp_path / "monitoring" / "predictions.sqlite") in str(exc.value)
    assert not (tmp_path / "monitoring").exists() and not (tmp_path / "reports").exists()
    assert sqlite_path("postgresql://medflow@db/medflow", tmp_path) is None


def test_the_training_distribution_breaks_no_rule(tmp_path: Path) -> None:
    tag = store_model(reference())
    logged = log_predictions(URL, tmp_path, tag, 150, TRAINING, at=NOW, seed=1)
    result = _run(tmp_path)
    assert _rules(result) == {
        "manufacturer_mix": (True, False),
        "intensity": (True, False),
        "psi": (True, False),
        "auroc_drop": (False, False),  # no feedback
    }
    assert result.broken == [] and result.summary()["predictions"] == 150
    out = tmp_path / "reports" / "monitor"
    assert (out / REPORT_FILE).is_file() and (out / SUMMARY_FILE).is_file()
    assert (out / "docs" / docs_slug(tag) / "index.html").is_file()
    assert "No rule broke." in (out / REPORT_FILE).read_text()

    # the scores the Bento's /metrics shows: one row per rule, this run's
    scores = {r["name"]: r for r in latest_scores(engine_for(URL, tmp_path))}
    assert set(scores) == {"manufacturer_mix", "intensity", "psi", "auroc_drop"}
    assert not any(r["broken"] for r in scores.values()) and scores["auroc_drop"]["score"] is None
    assert scores["psi"]["threshold"] == 0.25 and scores["psi"]["score"] < 0.25

    data = _output_bytes(tmp_path)
    leaked = [v for v in [*logged.prediction_ids, *logged.image_hashes] if v.encode() in data]
    assert not leaked, "prediction ids or image hashes in the report"


def test_a_shifted_site_with_wrong_feedback_breaks_every_rule(tmp_path: Path) -> None:
    tag = store_model(reference(auroc=0.8))
    before = log_predictions(URL, tmp_path, tag, 100, TRAINING, at=NOW, seed=2, feedback="right")
    after = log_predictions(URL, tmp_path, tag, 300, SHIFTED, at=NOW, seed=3, feedback="wrong")
    result = _run(tmp_path)
    assert _rules(result) == dict.fromkeys(
        ["manufacturer_mix", "intensity", "psi", "auroc_drop"], (True, True)
    )
    (model,) = result.models
    assert model.performance.n_labelled == 400 and model.performance.metrics["auroc"] < 0.5
    summary = result.summary()
    assert {b["name"] for b in summary["broken"]} == {
        "manufacturer_mix",
        "intensity",
        "psi",
        "auroc_drop",
    }
    html = (tmp_path / "reports" / "monitor" / REPORT_FILE).read_text()
    assert "Alarm: 4 rule(s) broke." in html and "Other Vendor" in html
    assert (
        html.count("data:image/png;base64,") == 4
    )  # probabilities, makers, intensity, reliability
    assert all(r["broken"] for r in latest_scores(engine_for(URL, tmp_path)))
    assert all(b["new"] for b in summary["broken"])
    # the next run finds the same rules broken: not news (no second drift event)
    assert not any(b["new"] for b in _run(tmp_path).summary()["broken"])

    data = _output_bytes(tmp_path)
    ids = [*before.prediction_ids, *before.image_hashes, *after.prediction_ids, *after.image_hashes]
    assert not [v for v in ids if v.encode() in data]


def test_too_few_predictions_or_no_reference_are_not_judged_and_say_why(tmp_path: Path) -> None:
    few = store_model(reference())
    log_predictions(URL, tmp_path, few, 40, SHIFTED, at=NOW, seed=4)
    old = store_model(None, metrics={"auroc": 0.95})  # packaged before monitoring
    log_predictions(URL, tmp_path, old, 120, TRAINING, at=NOW, seed=5, feedback="right")
    result = _run(tmp_path)
    models = {m.model_tag: m for m in result.models}
    for rule in models[few].rules:
        assert not rule.judged and not rule.broken
    assert "40 predictions in the window, fewer than monitor.min_predictions 100" in (
        models[few].rules[0].detail
    )
    by_name = {r.name: r for r in models[old].rules}
    for name in ("manufacturer_mix", "intensity", "psi"):
        assert not by_name[name].judged and "has no monitoring.json" in by_name[name].detail
    # live performance needs no reference: the store entry's evaluated AUROC is compared
    assert (
        by_name["auroc_drop"].judged
        and "evaluated test AUROC 0.950" in by_name["auroc_drop"].detail
    )
    html = (tmp_path / "reports" / "monitor" / REPORT_FILE).read_text()
    assert "has no monitoring.json in the model store" in html


def test_the_window_and_an_empty_one(tmp_path: Path) -> None:
    tag = store_model(reference())
    log_predictions(URL, tmp_path, tag, 120, TRAINING, at=NOW - timedelta(hours=30), seed=6)
    stale = tmp_path / "reports" / "monitor" / "stale.txt"
    stale.parent.mkdir(parents=True)
    stale.write_text("a previous run's file")

    empty = _run(tmp_path)  # the 24 h window holds none of them
    assert empty.models == [] and "nothing was judged" in empty.notes[0]
    assert not stale.exists()  # the report folder is replaced whole
    assert latest_scores(engine_for(URL, tmp_path)) == []

    wide = _run(tmp_path, window_hours=48)
    assert wide.summary()["predictions"] == 120
    assert wide.summary()["window"]["hours"] == 48


def test_names_from_the_images_are_escaped(tmp_path: Path) -> None:
    tag = store_model(reference())
    maker = Site(manufacturer="<script>alert(1)</script>")
    log_predictions(URL, tmp_path, tag, 120, maker, at=NOW, seed=7)
    _run(tmp_path)
    html = (tmp_path / "reports" / "monitor" / REPORT_FILE).read_text()
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
