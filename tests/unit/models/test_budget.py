"""The time budget's plan: epochs and members from the measured speed, within the budget."""

from __future__ import annotations

import math

import pytest
import torch

from medflow.config import TrainParams
from medflow.models.budget import PLANNED_SHARE, measure_step_seconds, plan_training
from medflow.models.net import build_network


def _params(**kw: object) -> TrainParams:
    return TrainParams(**{"batch_size": 32, "max_epochs": 60, "target_steps": 2400, **kw})


def test_a_large_set_gets_the_epochs_for_its_steps_and_one_member() -> None:
    # PneumoniaMNIST's size at 0.15 s/step: 17 epochs of 148 steps, about 6.5 min of 7.5
    plan = plan_training(_params(time_budget_minutes=7.5), 4708, 524, 0.15)
    assert (plan.epochs, plan.members, plan.steps_per_epoch) == (17, 1, 148)
    assert plan.planned_seconds <= 7.5 * 60 * PLANNED_SHARE


def test_a_small_set_gets_max_epochs_and_several_members_within_the_budget() -> None:
    p = _params(time_budget_minutes=7.5, ensemble_max=5)
    plan = plan_training(p, 300, 60, 0.05)  # 10 steps, ~0.53 s an epoch
    assert plan.epochs == 60 and plan.members == 5
    assert plan.planned_seconds <= 7.5 * 60 * PLANNED_SHARE
    slow = plan_training(p, 300, 60, 0.2)  # four times slower: fewer members, same epochs
    assert slow.epochs == 60 and 1 <= slow.members < 5
    assert slow.planned_seconds <= 7.5 * 60 * PLANNED_SHARE
    assert "at most 5" in plan.reason


def test_a_budget_too_short_for_the_steps_shortens_the_one_member() -> None:
    plan = plan_training(_params(time_budget_minutes=2), 4708, 524, 0.15)
    assert plan.members == 1 and plan.epochs == math.floor(
        120 * PLANNED_SHARE / plan.seconds_per_epoch
    )
    assert "holds" in plan.reason
    tiny = plan_training(_params(time_budget_minutes=0.01), 4708, 524, 0.15)
    assert tiny.epochs == 1 and "over budget" in tiny.reason


def test_without_a_budget_the_run_is_one_network_of_max_epochs() -> None:
    plan = plan_training(_params(time_budget_minutes=None, max_epochs=7), 4708, 524, 0.0)
    assert (plan.epochs, plan.members, plan.budget_seconds) == (7, 1, None)


def test_measuring_leaves_the_network_untouched() -> None:
    net = build_network("smallcnn", 1, 2, 4, 0.1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = torch.rand(40, 1, 16, 16), torch.randint(0, 2, (40,))
    seconds = measure_step_seconds(net, _params(batch_size=8), x, y, torch.device("cpu"))
    assert 0 < seconds < 10
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("field", ["time_budget_minutes", "ensemble_max", "target_steps"])
def test_non_positive_budget_knobs_are_refused(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        TrainParams(**{field: 0})
