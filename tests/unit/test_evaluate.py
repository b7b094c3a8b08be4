import numpy as np
import pytest

from medflow.evaluate import classification_metrics


def test_binary_metrics_at_threshold():
    y = np.array([0, 0, 0, 1, 1, 1])
    p1 = np.array([0.1, 0.4, 0.6, 0.55, 0.8, 0.3])
    m = classification_metrics(y, np.stack([1 - p1, p1], 1), threshold=0.5)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["auroc"] == pytest.approx(6 / 9)


def test_multiclass_macro_auroc_perfect():
    y = np.array([0, 1, 2, 0, 1, 2])
    probs = np.eye(3)[y] * 0.8 + 0.2 / 3
    m = classification_metrics(y, probs, threshold=0.5)
    assert m["auroc"] == 1.0 and m["accuracy"] == 1.0


def test_single_class_test_split_is_refused():
    with pytest.raises(ValueError, match="only class"):
        classification_metrics(np.zeros(4, int), np.full((4, 2), 0.5), 0.5)
