"""register refuses a metrics.json that evaluate wrote for another model than models/ holds."""

from __future__ import annotations

import json
import logging

import pytest

from stages import register
from taglens.lifecycle import registration
from taglens.lifecycle.lineage import check_metrics_run


def _reports(tmp_path, run_in_metrics: str | None):
    models, reports = tmp_path / "models", tmp_path / "reports"
    models.mkdir()
    reports.mkdir()
    (models / "model_info.json").write_text(json.dumps({"run_id": "a" * 32}))
    metrics = {"accuracy": 0.9, "n_test": 30}
    if run_in_metrics is not None:
        metrics["model_run_id"] = run_in_metrics
    (reports / "metrics.json").write_text(json.dumps(metrics))
    return models, reports


def test_metrics_of_another_run_stop_register_before_the_registry(tmp_path, tiny_params,
                                                                  monkeypatch):  # fmt: skip
    # Given models/ of run aaaa... and a stale metrics.json left by the previous model, bbbb...
    models, reports = _reports(tmp_path, "b" * 32)
    touched = []
    monkeypatch.setattr(registration, "Registry", lambda *a, **k: touched.append(a))

    # When register runs, Then it stops with what to do, and the registry is never touched
    with pytest.raises(ValueError, match=r"metrics of train run b{32}, but model_info.json is run "
                                         r"a{32}: run the evaluate stage"):  # fmt: skip
        register.run(tiny_params.register, models=models, metrics=reports / "metrics.json",
                     out=reports / "register.json")  # fmt: skip
    assert touched == [] and not (reports / "register.json").exists()


def test_matching_or_unrecorded_runs_pass_the_check(tmp_path, caplog):
    _, reports = _reports(tmp_path, "a" * 32)
    check_metrics_run(reports / "metrics.json", "a" * 32)  # no error
    (tmp_path / "old").mkdir()
    _, older = _reports(tmp_path / "old", None)
    with caplog.at_level(logging.WARNING):
        check_metrics_run(older / "metrics.json", "a" * 32)
    assert "names no model_run_id" in caplog.text
