"""The model card carries what a reviewer needs: use, data, metrics, subgroups, gate."""

from medflow.evaluation.model_card import render_model_card

METRICS = {
    "auroc": 0.912,
    "auroc_ci_low": 0.85,
    "auroc_ci_high": 0.95,
    "ece": 0.041,
    "ece_ci_low": 0.02,
    "ece_ci_high": 0.07,
    "sensitivity": 0.9,
    "specificity": 0.8,
    "n_test": 120,
    "n_test_patients": 40,
    "threshold": 0.37,
}
SUBGROUPS = {
    "site": {
        "SITE-1": {"n": 100, "n_positive": 50, "small": 0, "auroc": 0.93},
        "SITE-2": {"n": 20, "n_positive": 9, "small": 1, "auroc": 0.7},
    }
}
CONTEXT = {
    "threshold": {"policy": "target_sensitivity", "value": 0.37, "chosen_on": "val"},
    "bootstrap": {"unit": "patient", "n": 1000, "level": 0.95, "seed": 0},
    "subgroups": {"reported": ["site"], "missing": ["sex", "age_band"]},
    "data": {
        "data_hash": "cafe1234",
        "class_counts": {"test": {"normal": 70, "lesion": 50}, "train": {"normal": 200}},
    },
    "model": {
        "architecture": "SmallCNN",
        "class_names": ["normal", "lesion"],
        "provenance": {
            "git_revision": "0123abc",
            "library_versions": {"torch": "2.13.0"},
            "train_params": {"max_epochs": 3},
        },
    },
    "params": {"n_bins": 10},
    "plots": {"calibration": "plots/calibration.png", "roc": "plots/roc.png"},
}
GATE = {
    "passed": False,
    "failures": ["auroc = 0.9120 is 0.0300 below the champion's 0.9420 (...)"],
    "rules": [
        {
            "rule": "gate.min_auroc",
            "metric": "auroc",
            "observed": 0.912,
            "threshold": 0.85,
            "op": ">=",
            "passed": True,
        }
    ],
    "champion": {"status": "compared", "file": "reports/champion/metrics.json"},
    "thresholds": {"min_auroc": 0.85},
}


def test_model_card_content():
    card = render_model_card(METRICS, SUBGROUPS, CONTEXT, GATE)
    assert card.startswith("# Model card: normal / lesion classifier")
    assert "## Intended use and limits" in card and "not a diagnostic device" in card
    assert "cafe1234" in card and "| test | 70 | 50 | 120 |" in card
    assert "| AUROC | 0.912 [0.850, 0.950] |" in card
    assert "1000 resamples of patients" in card
    assert "| site | SITE-2 | 20 | 9 | 0.700 [–, –]" in card and "small" in card
    assert "Not measured per subgroup: sex, age_band" in card
    assert "![reliability diagram](plots/calibration.png)" in card
    assert "Gate decision: REFUSED" in card and "below the champion's 0.9420" in card
    assert "Compared with the current champion" in card
    assert "0123abc" in card and "| torch | 2.13.0 |" in card
    assert '"max_epochs": 3' in card and '"min_auroc": 0.85' in card


def test_model_card_without_champion_or_subgroups():
    gate = {**GATE, "passed": True, "failures": [], "champion": {"status": "no champion"}}
    card = render_model_card(METRICS, {}, {}, gate)
    assert "Gate decision: ACCEPTED" in card
    assert "No champion: judged by the value rules alone." in card
    assert "No subgroup attribute was available." in card
