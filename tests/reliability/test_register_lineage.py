"""register refuses a metrics.json that evaluate wrote for another model than models/ holds."""

from __future__ import annotations

import json

import pytest

from stages import register
from taglens.lifecycle import promotion
from taglens.lifecycle.evaluation import check_metrics_run
from taglens.lifecycle.gate import EvidenceError


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


def test_metrics_of_another_run_stop_register_before_the_registry(
    tmp_path, tiny_params, monkeypatch
):
    # Given models/ of run aaaa... and a stale metrics.json left by the previous model, bbbb...
    models, reports = _reports(tmp_path, "b" * 32)
    touched = []
    monkeypatch.setattr(promotion, "Registry", lambda *a, **k: touched.append(a))

    # When register runs, Then it stops with what to do, and the registry is never touched
    with pytest.raises(
        ValueError,
        match=r"metrics of train run b{32}, but model_info.json is run "
        r"a{32}: run the evaluate stage",
    ):
        register.run(
            tiny_params.register,
            models=models,
            metrics=reports / "metrics.json",
            out=reports / "register.json",
        )
    assert touched == [] and not (reports / "register.json").exists()


def test_matching_runs_pass_and_unrecorded_runs_are_refused(tmp_path, tiny_params, monkeypatch):
    _, reports = _reports(tmp_path, "a" * 32)
    check_metrics_run(reports / "metrics.json", "a" * 32)  # no error
    # a metrics.json naming no run (by hand, or an older evaluate) proves nothing: refused
    (tmp_path / "old").mkdir()
    models, older = _reports(tmp_path / "old", None)
    unrecorded = "names no model_run_id, so nothing ties it to train run a{32}"
    with pytest.raises(EvidenceError, match=unrecorded):
        check_metrics_run(older / "metrics.json", "a" * 32)
    touched = []
    monkeypatch.setattr(promotion, "Registry", lambda *a, **k: touched.append(a))
    with pytest.raises(EvidenceError, match="names no model_run_id"):
        register.run(
            tiny_params.register,
            models=models,
            metrics=older / "metrics.json",
            out=older / "register.json",
        )
    assert touched == [] and not (older / "register.json").exists()
