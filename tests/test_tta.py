"""Time to accuracy: the evaluation cadence, the target, the clocks and MLPerf's scoring."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from bench import tta
from cifar_model.curves import eval_interval_steps, first_reaching, heldout_scores
from cifar_model.results import CurvePoint


class FakeClock:
    """Training advances it by one second a step; an evaluation by ten."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def drive(curve, clock, epochs: int, steps_per_epoch: int, steps_per_call: int = 1):
    """Run ``curve``'s hooks as Keras's fit loop does, one second of training per step."""
    model = SimpleNamespace(stop_training=False)
    curve.set_model(model)
    curve.set_params({"epochs": epochs, "steps": steps_per_epoch, "verbose": 0})
    curve.on_train_begin()
    for epoch in range(epochs):
        curve.on_epoch_begin(epoch)
        for first in range(0, steps_per_epoch, steps_per_call):
            curve.on_train_batch_begin(first)
            clock.now += steps_per_call
            curve.on_train_batch_end(first + steps_per_call - 1, {"loss": 1.0})
            if model.stop_training:
                break
        if model.stop_training:
            break
    curve.on_train_end()
    return model


def curve_with(accuracies, clock, **kwargs):
    from cifar_model.training import HeldOutCurve

    scores = iter(accuracies)

    def evaluate():
        clock.now += 10
        return next(scores), 2.0

    return HeldOutCurve(evaluate, clock=clock, global_batch_size=32, **kwargs)


def test_evaluates_at_the_cadence_asked_and_keeps_evaluation_out_of_training_time():
    clock = FakeClock()
    curve = curve_with([0.1, 0.2, 0.3, 0.4], clock, eval_every_epochs=0.5)
    drive(curve, clock, epochs=2, steps_per_epoch=10)
    assert [p.step for p in curve.points] == [5, 10, 15, 20]
    assert [p.epoch for p in curve.points] == [1, 1, 2, 2]
    assert [p.images_seen for p in curve.points] == [160, 320, 480, 640]
    # one second a step of training, evaluations of ten seconds each kept apart
    assert [p.train_seconds for p in curve.points] == [5, 10, 15, 20]
    assert [p.wall_seconds for p in curve.points] == [15, 30, 45, 60]
    assert all(p.eval_seconds == 10 for p in curve.points)


def test_stops_at_the_first_evaluation_at_or_above_the_target():
    clock = FakeClock()
    curve = curve_with([0.30, 0.50, 0.65, 0.70], clock, eval_every_epochs=1, target=0.5)
    model = drive(curve, clock, epochs=4, steps_per_epoch=8)
    assert model.stop_training
    assert curve.reached is curve.points[1]
    assert [p.step for p in curve.points] == [8, 16]          # no training after the target


def test_not_reached_when_the_budget_ends_first_and_the_curve_ends_where_training_did():
    clock = FakeClock()
    curve = curve_with([0.2, 0.3, 0.35], clock, eval_every_epochs=2, target=0.9)
    model = drive(curve, clock, epochs=5, steps_per_epoch=4)
    assert not model.stop_training and curve.reached is None
    assert [p.step for p in curve.points] == [8, 16, 20]      # the last at the end of epoch 5


def test_several_steps_a_call_evaluate_at_the_first_call_past_each_interval():
    clock = FakeClock()
    curve = curve_with([0.1] * 10, clock, eval_every_epochs=0.25)
    drive(curve, clock, epochs=1, steps_per_epoch=24, steps_per_call=8)
    assert [p.step for p in curve.points] == [8, 16, 24]


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
def test_a_cadence_that_is_not_a_positive_number_is_refused(bad):
    with pytest.raises(ValueError, match="positive number of epochs"):
        eval_interval_steps(bad, 100)


def test_heldout_scores_from_logits():
    accuracy, loss = heldout_scores([[2.0, 0.0], [0.0, 0.0], [0.0, 3.0]], [0, 1, 0])
    assert accuracy == pytest.approx(1 / 3)
    # log(1 + e^-2), log 2, log(1 + e^3), averaged
    import math
    assert loss == pytest.approx((math.log1p(math.exp(-2)) + math.log(2) + math.log1p(math.exp(3))) / 3)


def test_curve_points_from_a_worker_are_checked():
    good = CurvePoint(1, 10, 320, 5.0, 6.0, 1.0, 0.4, 1.7).as_dict()
    assert CurvePoint.from_dict(good).step == 10
    for field, value in [("heldout_accuracy", 1.5), ("wall_seconds", float("nan")),
                         ("step", -1), ("train_seconds", "5")]:
        with pytest.raises(ValueError, match=field):
            CurvePoint.from_dict({**good, field: value})
    with pytest.raises(ValueError, match="unknown field"):
        CurvePoint.from_dict({**good, "extra": 1})


def test_olympic_mean_drops_the_fastest_and_the_slowest():
    assert tta.olympic_mean([10.0, 12.0, 11.0, 30.0, 9.0]) == pytest.approx(11.0)
    assert tta.olympic_mean([4.0, 5.0, 9.0]) == pytest.approx(5.0)
    assert tta.olympic_mean([4.0, 5.0]) is None


def point(step, wall, accuracy):
    return CurvePoint(1, step, step * 32, wall - 1, wall, 1.0, accuracy, 1.0)


def runs_reaching(times, target=0.5, data_seconds=2.0):
    out = []
    for i, t in enumerate(times):
        points = [point(1, t / 2, 0.3), point(2, t, 0.6 if t is not None else 0.3)] if t else \
            [point(1, 5, 0.3), point(2, 10, 0.4)]
        out.append(tta.run_to_target(i, points, target, data_seconds))
    return out


def test_time_to_target_is_the_mlperf_clock_and_scored_olympic():
    result = tta.TimeToTarget(0.5, tuple(runs_reaching([10.0, 20.0, 12.0, 11.0, 13.0])), 26)
    # data loading (2 s) + wall to the reaching evaluation, evaluations included
    assert [r.mlperf_seconds for r in result.runs] == [12.0, 22.0, 14.0, 13.0, 15.0]
    assert [r.train_seconds for r in result.runs] == [9.0, 19.0, 11.0, 10.0, 12.0]
    assert result.score_seconds == pytest.approx(14.0)      # (13 + 14 + 15) / 3
    text = result.describe()
    assert text == "14.0 s (olympic mean of 5; range 12.0 s–22.0 s)"   # a score means every run reached it


def test_never_a_number_for_a_target_not_reached():
    none = tta.TimeToTarget(0.5, tuple(runs_reaching([None, None, None])), 26)
    assert none.score_seconds is None and none.describe() == "not reached in 26 epochs (3 runs)"
    some = tta.TimeToTarget(0.5, tuple(runs_reaching([10.0, None, 12.0])), 26)
    assert some.score_seconds is None
    assert "2/3 runs reached it" in some.describe() and "no score" in some.describe()


def test_fewer_than_three_runs_say_they_are_single_runs():
    one = tta.TimeToTarget(0.5, tuple(runs_reaching([10.0])), 26)
    assert one.describe() == "12.0 s (a single run)"
    assert "(a single run)" in one.describe_accuracy()
    two = tta.TimeToTarget(0.5, tuple(runs_reaching([10.0, 20.0])), 26)
    assert "2 single runs: too few to score" in two.describe()


def test_final_accuracy_is_mean_and_spread_over_repeats():
    result = tta.TimeToTarget(0.5, tuple(runs_reaching([10.0, 20.0, 12.0])), 26)
    mean, std, n = result.final_accuracy
    assert (round(mean, 6), std, n) == (0.6, 0.0, 3)
    assert result.describe_accuracy() == "60.00% ± 0.00 (n = 3)"


def test_first_reaching():
    points = [point(1, 1, 0.2), point(2, 2, 0.5), point(3, 3, 0.7)]
    assert first_reaching(points, 0.5) is points[1]
    assert first_reaching(points, 0.8) is None


def test_accuracy_plot_draws_repeats_and_medians(tmp_path):
    rows = []
    for cell, scale in [("cpu_bs128", 100.0), ("gpu_bs128", 1.0)]:
        for repeat in range(3):
            for i, acc in enumerate([0.3, 0.5, 0.6], start=1):
                rows.append({"cell_id": cell, "repeat": repeat, **point(i, i * scale + repeat, acc).as_dict()})
    frame = pd.DataFrame(rows, columns=list(tta.CURVE_COLUMNS))
    path = tta.accuracy_plot(frame, {"cpu_bs128": "CPU", "gpu_bs128": "GPU"}, 0.55,
                             tmp_path / tta.ACCURACY_PNG, "Held-out accuracy")
    assert path is not None and path.stat().st_size > 10_000
    single = frame[frame["step"] == 1]
    assert tta.accuracy_plot(single, {}, None, tmp_path / "none.png", "t") is None


def test_settings_refuse_what_cannot_be_a_curve_or_a_target():
    from cifar_model import TrainSettings

    for kwargs, message in [({"eval_every": 0}, "eval_every must be a positive number"),
                            ({"eval_every": float("nan")}, "eval_every must be a positive number"),
                            ({"eval_every": 1, "target_accuracy": 1.5}, "target_accuracy must be a fraction"),
                            ({"target_accuracy": 0.5}, "target_accuracy needs eval_every"),
                            ({"eval_every": 1, "eval_images": 0}, "eval_every needs held-out evaluation")]:
        with pytest.raises(ValueError, match=message):
            TrainSettings(**kwargs)


@pytest.mark.slow
def test_real_training_stops_at_the_target_and_keeps_evaluation_out_of_training_time(real_cifar_dir):
    """A short real run on a subset: curve at the cadence asked, stopped at the first
    evaluation at or above a low target, the result's clocks consistent."""
    from dataclasses import replace

    from cifar_model import TrainSettings, load_dataset, train

    full = load_dataset(real_cifar_dir, split="seed", download=False)
    data = replace(full, x_train=full.x_train[:2048], y_train=full.y_train[:2048],
                   x_test=full.x_test[:500], y_test=full.y_test[:500])
    result = train(data, TrainSettings(batch_size=64, epochs=6, warmup_steps=2, seed=3, eval_every=0.25,
                                       target_accuracy=0.18), device="cpu:0")
    assert result.curve, "no evaluation during training"
    steps = [p.step for p in result.curve]
    assert steps[0] == 8 and all(b - a == 8 for a, b in zip(steps, steps[1:], strict=False))
    reached = result.reached
    assert reached is not None and reached is result.curve[-1]        # training stopped there
    assert all(p.heldout_accuracy < 0.18 for p in result.curve[:-1])
    assert result.total_steps == reached.step
    assert result.curve_eval_seconds == pytest.approx(sum(p.eval_seconds for p in result.curve))
    assert result.time_to_target_seconds == pytest.approx(result.data_seconds + reached.wall_seconds)
    assert reached.wall_seconds > reached.train_seconds
