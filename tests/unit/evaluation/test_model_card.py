"""The model card carries what a reviewer needs: use, data, metrics, subgroups, gate."""

from medflow.config import GateParams
from medflow.evaluation.model_card import render_model_card
from medflow.handoffs import GateReport
from tests.helpers.handoffs import evaluation_context, metrics

METRICS = metrics(
    auroc=0.912, auroc_ci_low=0.85, auroc_ci_high=0.95, ece=0.041, ece_ci_low=0.02, ece_ci_high=0.07
)
SUBGROUPS = {
    "site": {
        "SITE-1": {"n": 100, "n_positive": 50, "small": 0, "auroc": 0.93},
        "SITE-2": {"n": 20, "n_positive": 9, "small": 1, "auroc": 0.7},
    }
}
CONTEXT = evaluation_context()
GATE = GateReport.model_validate(
    {
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
                "message": "",
            }
        ],
        "decision": "refused",
        "champion": {"status": "no champion", "reason": "", "file": "reports/baseline.json"},
        "thresholds": GateParams(min_auroc=0.85),
        "metrics": METRICS,
    }
)


def test_model_card_content():
    compared = GATE.champion.model_copy(update={"status": "compared", "model_tag": "m:1"})
    gate = GATE.model_copy(update={"champion": compared})
    card = render_model_card(METRICS, SUBGROUPS, CONTEXT, gate)
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
    gate = GATE.model_copy(update={"passed": True, "decision": "accepted", "failures": []})
    card = render_model_card(METRICS, {}, None, gate)
    assert "Gate decision: ACCEPTED" in card
    assert "No champion: judged by the value rules alone." in card
    assert "No subgroup attribute was available." in card


def test_model_card_of_a_multiclass_model_has_no_positive_count():
    three = metrics(n_test_positive=None)
    card = render_model_card(three, SUBGROUPS, CONTEXT, GATE.model_copy(update={"metrics": three}))
    assert "120 images of 40 patients" in card


def test_model_card_names_the_initial_weights():
    assert "- initial weights: random (no pretrained weights)" in render_model_card(
        METRICS, {}, CONTEXT, GATE
    )
    weights = {"path": "w/r18.pt", "sha256": "ab" * 32, "loaded": 60, "skipped_shape": ["fc.w"]}
    card = render_model_card(METRICS, {}, evaluation_context({"pretrained_weights": weights}), GATE)
    assert f"- initial weights: pretrained, `w/r18.pt` (sha256 `{'ab' * 32}`)" in card
    assert "60 tensors loaded, 1 of another shape initialised at random" in card


def test_model_card_states_the_training_plan_and_the_calibration():
    context = evaluation_context(
        {
            "plan": {
                "members": 3,
                "members_trained": 2,
                "epochs": 60,
                "reason": "60 epochs reach 600 steps (max_epochs 60)",
                "budget_seconds": 450.0,
                "seconds_spent": 401.2,
            },
            "calibration": {
                "method": "temperature",
                "temperature": 1.25,
                "cross_fitted_nll": {"none": 0.301, "temperature": 0.287},
            },
        }
    )
    card = render_model_card(METRICS, SUBGROUPS, context, GATE)
    assert "training plan: 2 member(s) of up to 60 epochs" in card
    assert "401.2 s spent of a 450 s budget" in card
    assert "Calibrated on the validation split: temperature (T = 1.250)" in card
    assert "cross-fitted validation NLL none 0.301, temperature 0.287" in card
