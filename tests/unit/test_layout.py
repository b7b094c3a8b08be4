"""src/medflow/stages/layout.py must name the same paths as dvc.yaml (the single declaration)."""

from pathlib import Path

import yaml

from medflow.stages.layout import Layout

ROOT = Path(__file__).resolve().parents[2]


def _outs(stage: dict) -> set[str]:
    wdir = stage.get("wdir", ".")
    names = set()
    for key in ("outs", "metrics", "plots"):
        for item in stage.get(key, []):
            name = next(iter(item)) if isinstance(item, dict) else item
            names.add(str(Path(wdir) / name) if wdir != "." else name)
    return names


def test_layout_matches_dvc_outs():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    layout = Layout(Path("."))
    expected = {
        "synth": {layout.synthetic},
        "pull": {layout.pull_record},
        "ingest": {layout.ingested},
        "validate": {layout.validation, layout.references},
        "preprocess": {layout.preprocessed},
        "train": {
            layout.models,
            layout.training / "metrics.json",
            layout.training / "plots" / "metrics",
        },
        "evaluate": {layout.metrics, layout.subgroups, layout.evaluation, layout.baseline},
        "gate": {layout.gate, layout.model_card},
        "package": {layout.bento},
    }
    for name, paths in expected.items():
        assert {str(p) for p in paths} <= _outs(stages[name]), name
    # one plots folder for both tasks (classification curves, segmentation overlays)
    assert {str(layout.plots), str(layout.predictions)} <= _outs(stages["evaluate"])
    assert str(layout.manifest) in stages["evaluate"]["deps"]
    assert str(layout.ingested) in stages["evaluate"]["deps"]  # the champion's preprocessing
    # the raw folder is no output (identifiable: never cached); ingest is ordered after pull
    assert str(layout.pacs_raw) not in _outs(stages["pull"])
    pull_cmd = stages["pull"]["cmd"].split()
    assert pull_cmd[2:4] == [layout.pacs_raw.name, layout.pull_record.name]
    assert layout.pull_record.name in stages["ingest"]["deps"]
    assert f"--references {layout.references}" in stages["validate"]["cmd"]
    assert f"--champions {layout.champion}" in stages["evaluate"]["cmd"]
    assert f"--curves {layout.training}" in stages["train"]["cmd"]
    assert f"--baseline {layout.baseline}" in stages["gate"]["cmd"]
    assert str(layout.baseline) in stages["gate"]["deps"]
    assert f"--champions {layout.champion}" in stages["package"]["cmd"]
    # the stages that derive the dataset key (medflow.data.dataset) declare what it is made of
    for name in ("validate", "evaluate", "package"):
        assert {"data.source", "data.class_names"} <= set(stages[name]["params"]), name


def test_champion_is_no_stage_output_or_dependency():
    # Registry state that promote/rollback rewrite: as an output, `dvc repro` would undo a
    # rollback; as the gate's dependency, every package or promotion would re-judge the model.
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    champion = str(Layout(Path(".")).champion)
    for name, stage in stages.items():
        declared = _outs(stage) | {d for d in stage.get("deps", []) if isinstance(d, str)}
        assert not {p for p in declared if p == champion or p.startswith(champion + "/")}, name


def test_training_curves_are_plotted_from_the_train_stage_outputs():
    dvc_yaml = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    curves = str(Layout(Path(".")).training / "plots" / "metrics")
    plotted = set()
    for entry in dvc_yaml["plots"]:
        (spec,) = entry.values()
        plotted |= set(spec["y"])
    layout = Layout(Path("."))
    training = {p for p in plotted if p.startswith(curves + "/")}
    assert training == {
        f"{curves}/train/loss.tsv",
        f"{curves}/val/loss.tsv",
        f"{curves}/val/auroc.tsv",
        f"{curves}/val/dice.tsv",
    }
    assert curves in _outs(dvc_yaml["stages"]["train"])
    # the rest are the evaluate stage's test-split curves, in its declared outputs
    evaluated = plotted - training
    assert evaluated and all(
        p.startswith(str(layout.plots) + "/") or p == str(layout.predictions) for p in evaluated
    )
