"""Sweep grids, CLI parsing, and one nested MLflow run per setting with the best one picked."""

from __future__ import annotations

import mlflow
import pytest

from taglens.params import ParamsError, SweepParams
from taglens.tracking import configure_tracking
from taglens.training.head import HeadFit
from taglens.training.search import apply_setting, grid, parse_sweep_arg, run_sweep, setting_name
from tests.helpers.params import tiny_params


@pytest.fixture
def train_params():
    return tiny_params().train


def test_empty_sweep_means_no_grid():
    assert grid(SweepParams()) == []


def test_grid_is_the_product_and_cli_values_replace_params():
    sweep = SweepParams(learning_rate=(0.1, 0.01), dropout=(0.0, 0.5))
    assert grid(sweep) == [
        {"learning_rate": 0.1, "dropout": 0.0},
        {"learning_rate": 0.1, "dropout": 0.5},
        {"learning_rate": 0.01, "dropout": 0.0},
        {"learning_rate": 0.01, "dropout": 0.5},
    ]
    assert grid(sweep, {"dropout": (0.2,)}) == [
        {"learning_rate": 0.1, "dropout": 0.2},
        {"learning_rate": 0.01, "dropout": 0.2},
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("learning_rate=0.1,0.01", ("learning_rate", (0.1, 0.01))),
        ("train.epochs=3, 5", ("epochs", (3, 5))),
        ("train.sweep.hidden_units=0", ("hidden_units", (0,))),
    ],
)
def test_cli_sweep_values_are_parsed_with_their_types(text, expected):
    assert parse_sweep_arg(text) == expected


@pytest.mark.parametrize("text", ["colour=red", "epochs", "epochs=a,b", "dropout="])
def test_bad_cli_sweep_values_are_refused(text):
    with pytest.raises(ParamsError, match="--sweep"):
        parse_sweep_arg(text)


def test_out_of_range_setting_names_the_key(train_params):
    assert apply_setting(train_params, {"dropout": 0.5}).dropout == 0.5
    with pytest.raises(ParamsError, match="train.dropout"):
        apply_setting(train_params, {"dropout": 1.5})


@pytest.mark.slow
def test_each_setting_gets_a_child_run_and_the_best_is_picked(train_params):
    scores = {0.1: (0.6, 0.9), 0.01: (0.8, 0.7), 0.001: (0.8, 0.5)}  # acc tie -> lower loss

    def fake_fit(params, on_epoch):
        accuracy, loss = scores[params.learning_rate]
        for epoch in (1, 2):
            on_epoch(epoch, {"val_accuracy": accuracy, "val_loss": loss})
        return HeadFit(model=None, history=[], val_loss=loss, val_accuracy=accuracy)

    settings = grid(SweepParams(learning_rate=(0.1, 0.01, 0.001)))
    configure_tracking("sweep-test")
    with mlflow.start_run(run_name="parent") as parent:
        trials, best = run_sweep(train_params, settings, fake_fit, {"base.seed": 42})
    assert best == 2 and trials[best].params.learning_rate == 0.001
    children = mlflow.search_runs(
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'", output_format="list"
    )
    assert sorted(c.info.run_name for c in children) == sorted(setting_name(s) for s in settings)
    child = next(c for c in children if c.info.run_id == trials[0].run_id)
    assert child.data.params == {"base.seed": "42", "train.learning_rate": "0.1"}
    assert child.data.metrics["best_val_accuracy"] == 0.6
    history = mlflow.MlflowClient().get_metric_history(child.info.run_id, "val_loss")
    assert [m.step for m in history] == [1, 2]


def test_default_search_draws_both_families_reproducibly(train_params):
    from taglens.training.search import default_search

    counts = {"logreg_candidates": 3, "kernel_candidates": 2, "dense_candidates": 4}
    search = train_params.search.model_copy(update=counts)
    settings = default_search(search, seed=1)
    assert [s["head"] for s in settings] == ["logreg"] * 3 + ["kernel"] * 2 + ["dense"] * 4
    assert settings == default_search(search, seed=1)
    # the kernel grid draws after the others: turning it off leaves their draws as they are
    no_kernel = default_search(search.model_copy(update={"kernel_candidates": 0}), seed=1)
    assert no_kernel == [s for s in settings if s["head"] != "kernel"]
    for setting in settings:
        params = apply_setting(train_params, setting)
        assert params.normalise in search.normalise and params.augment in search.augment
        if setting["head"] == "logreg":
            assert params.logreg_c in search.logreg_c
        elif setting["head"] == "kernel":
            assert params.kernel_c in search.kernel_c
            assert params.kernel_gamma in search.kernel_gamma
        else:
            assert params.hidden_units in search.hidden_units
            assert params.weight_decay in search.weight_decay
    everything = search.model_copy(
        update={"logreg_candidates": 1000, "kernel_candidates": 0, "dense_candidates": 0}
    )
    assert len(default_search(everything, seed=0)) == (
        len(search.logreg_c) * len(search.normalise) * len(search.augment)
    )


def test_train_json_shows_every_key_the_default_search_sets(train_params):
    from taglens.training.search import CHOSEN_KEYS, default_search, search_note, setting_report

    counts = {"logreg_candidates": 4, "kernel_candidates": 4, "dense_candidates": 6}
    search = train_params.search.model_copy(update=counts)
    settings = default_search(search, seed=0)
    for setting in settings:  # `chosen` in train.json covers what the search set for that head
        assert set(setting) <= set(CHOSEN_KEYS[setting["head"]])
    searched = {f"train.{key}" for setting in settings for key in setting}
    note = search_note("default", searched)
    assert "train.learning_rate" in note and "train.search.enabled=false" in note

    # every setting sets the learning rate it is fitted at: train.learning_rate (which a
    # `dvc exp run -S` may change) reaches no fit while the search is on, as the note says
    assert all("learning_rate" in setting for setting in settings if setting["head"] != "kernel")
    logreg_rates = {s["learning_rate"] for s in settings if s["head"] == "logreg"}
    assert logreg_rates == {search.logreg_learning_rate}

    fit = HeadFit(model=None, val_loss=0.5, val_accuracy=0.75)
    chosen = {"head": "logreg", "logreg_c": 10.0, "learning_rate": 0.002}
    logreg = apply_setting(train_params.model_copy(update={"learning_rate": 0.5}), chosen)
    report = setting_report(logreg, "default", searched, fit)
    assert report["search"] is True and report["sweep"] is False
    assert report["searched_keys"] == ",".join(sorted(searched))
    assert report["chosen"] == {
        **chosen,
        "normalise": train_params.normalise,
        "augment": train_params.augment,
    }
    assert report["search_val_accuracy"] == 0.75
    single = setting_report(train_params, None, set(), fit)
    assert (single["search"], single["sweep"], single["searched_keys"]) == (False, False, "")
    assert single["chosen"]["learning_rate"] == train_params.learning_rate
    assert "search_val_accuracy" not in single


def test_one_se_rule_orders_logistic_then_kernel_then_dense(train_params):
    from taglens.training.search import simplicity

    settings = [
        {"head": "logreg", "logreg_c": 10.0},
        {"head": "kernel", "kernel_c": 1.0, "kernel_gamma": 0.5},  # wide kernel, strong penalty
        {"head": "kernel", "kernel_c": 1.0, "kernel_gamma": 2.0},
        {"head": "kernel", "kernel_c": 10.0, "kernel_gamma": 0.5},
        {"head": "dense", "hidden_units": 32},
    ]
    ordered = [apply_setting(train_params, setting) for setting in settings]
    assert sorted(ordered, key=simplicity) == ordered
