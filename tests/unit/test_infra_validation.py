from __future__ import annotations

from medflow.registry.infra_validation import check_prediction

CLASSES = ["normal", "lesion"]


def _body(**kw: object) -> dict:
    body = {"model_tag": "m:1", "label": "lesion", "probabilities": {"normal": 0.2, "lesion": 0.8}}
    return {**body, **kw}


def test_a_right_answer_has_no_problems() -> None:
    assert check_prediction(200, _body(), "m:1", CLASSES) == []


def test_every_wrong_answer_is_named() -> None:
    assert "HTTP 500" in check_prediction(500, "boom", "m:1", CLASSES)[0]
    assert "expected 'm:1'" in check_prediction(200, _body(model_tag="m:2"), "m:1", CLASSES)[0]
    (sums,) = check_prediction(
        200, _body(probabilities={"normal": 0.5, "lesion": 0.6}), "m:1", CLASSES
    )
    assert "sum to 1.1" in sums
    wrong_classes = check_prediction(200, _body(probabilities={"a": 1.0}), "m:1", CLASSES)
    assert "one per class" in wrong_classes[0]
    assert "label 'x'" in check_prediction(200, _body(label="x"), "m:1", CLASSES)[0]


def test_an_answer_other_than_the_evaluated_one_is_named() -> None:
    assert check_prediction(200, _body(), "m:1", CLASSES, [0.20004, 0.79996]) == []
    (differs,) = check_prediction(200, _body(), "m:1", CLASSES, [0.2003, 0.7997])
    assert "differ from the evaluated [0.2003, 0.7997] by 0.0003" in differs
    assert "does not answer as the evaluated model" in differs
