"""The nightly flow's drift check: the champion's validation outputs against each run's photos."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest

from flows.deploy import RETRAIN
from flows.predict import ARTIFACT_KEY, RUN_NAME, batch_predict_flow
from taglens.model.drift import DriftReference
from taglens.tracking import configure_tracking
from tests.helpers.params import tiny_params, write_tiny_params
from tests.stages.train_fixtures import run_train, small_params, write_inputs

pytestmark = pytest.mark.slow
MIN_PHOTOS = 20


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained by the train stage on three colour-coded classes, and its photos."""
    root = tmp_path_factory.mktemp("drift")
    params = small_params(tiny_params(), epochs=5)
    paths = write_inputs(root, params, per_class=60)
    configure_tracking(params.base.experiment)
    summary = run_train(params, paths)
    manifest = pd.read_csv(paths["clean"] / "manifest.csv")
    photos = {
        name: [str(paths["raw"] / image) for image in rows["image"]]
        for name, rows in manifest.groupby("split")
    }
    photos["animals"] = [str(paths["raw"] / i) for i in manifest.query("label == 'animals'").image]
    return {"models": paths["out"], "run_id": summary["run_id"], "photos": photos, "root": root}


def _listing(folder, name, photos):
    path = folder / f"{name}.txt"
    path.write_text("\n".join(photos) + "\n")
    return str(path)


def test_train_writes_the_validation_outputs_and_the_logged_model_carries_them(trained):
    from taglens.model.pyfunc import load_logged, logged_model_uri

    reference = DriftReference.load(trained["models"] / "drift_reference.json")
    assert reference.classes == ("animals", "food", "sports")
    assert reference.n == len(trained["photos"]["val"]) == 36
    assert sum(reference.confidence_counts) == 36
    assert len(reference.confidence_counts) == len(reference.confidence_edges) + 1
    assert len(reference.confidences) == 36 and list(reference.confidences) == sorted(
        reference.confidences
    )
    logged = load_logged(logged_model_uri(trained["run_id"]))
    assert logged.drift_reference == reference.to_dict()


def test_shifted_photos_raise_the_flag_and_the_validation_photos_do_not(
    trained, tmp_path, prefect_api
):
    params = write_tiny_params(
        tmp_path / "params.yaml",
        {"base.classes": ["animals", "food", "sports"], "predict.drift.min_photos": MIN_PHOTOS},
    )
    common = {"model_uri": str(trained["models"]), "params_path": str(params)}

    # Given the photos the reference was made from, scored as a nightly run would
    same = _listing(tmp_path, "val", trained["photos"]["val"])
    summary = batch_predict_flow(same, str(tmp_path / "val.parquet"), **common)
    # Then their predicted classes and confidences match the reference: no drift
    drift = summary["drift"]
    assert drift["judged"] and not drift["drifted"]
    assert drift["photos"] == 36 and drift["psi_class"] < 0.01 and drift["psi_confidence"] < 0.05
    assert drift["ks_statistic"] < 0.1

    # Given a night of one class only (the mix of classes moved)
    shifted = _listing(tmp_path, "animals", trained["photos"]["animals"])
    state = batch_predict_flow(shifted, str(tmp_path / "a.parquet"), return_state=True, **common)
    summary = state.result()
    # Then the class PSI exceeds the threshold and the run is flagged
    drift = summary["drift"]
    assert drift["judged"] and drift["drifted"] and drift["photos"] == 60
    assert drift["psi_class"] > 0.2 and drift["class_shares"]["animals"] > 0.6
    assert "retrain_flow_run_id" not in summary  # predict.drift.retrain is false by default
    # And the figures reach MLflow and the flow's artifact
    run = mlflow.get_run(summary["mlflow_run_id"])
    assert run.info.run_name == RUN_NAME and run.data.tags["drift"] == "flagged"
    assert run.data.metrics["drift_flag"] == 1.0
    assert run.data.metrics["drift_psi_class"] == pytest.approx(drift["psi_class"])
    assert run.data.metrics["scored"] == 60
    [artifact] = prefect_api.artifacts(state.state_details.flow_run_id)
    assert artifact.key == ARTIFACT_KEY and "| verdict | **DRIFT** |" in artifact.data
    assert "| PSI, predicted classes |" in artifact.data

    # And a run that adds nothing new judges nothing
    summary = batch_predict_flow(shifted, str(tmp_path / "a.parquet"), **common)
    assert summary["skipped"] == 60 and summary["drift"]["judged"] is False
    assert "no rows" in summary["drift"]["reason"]


def test_a_flagged_run_starts_the_retrain_deployment(trained, tmp_path, prefect_server):
    from prefect.client.orchestration import get_client

    from flows.training import training_flow

    # Given the weekly retrain deployment registered on the server, and retrain on drift
    deployment_id = training_flow.to_deployment(name=RETRAIN).apply()
    params = write_tiny_params(
        tmp_path / "params.yaml",
        {
            "base.classes": ["animals", "food", "sports"],
            "predict.drift.min_photos": MIN_PHOTOS,
            "predict.drift.retrain": True,
        },
    )
    common = {"model_uri": str(trained["models"]), "params_path": str(params)}
    # When an unshifted night runs, nothing is started
    same = _listing(tmp_path, "val", trained["photos"]["val"])
    summary = batch_predict_flow(same, str(tmp_path / "val.parquet"), **common)
    assert not summary["drift"]["drifted"] and "retrain_flow_run_id" not in summary
    # When a drifted night runs
    shifted = _listing(tmp_path, "animals", trained["photos"]["animals"])
    summary = batch_predict_flow(shifted, str(tmp_path / "a.parquet"), **common)
    # Then a run of the retrain deployment was created (the flow did not wait for it)
    assert summary["drift"]["drifted"]
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(summary["retrain_flow_run_id"])
    assert flow_run.deployment_id == deployment_id
    assert "drift" in flow_run.tags
    assert json.loads(json.dumps(summary["drift"]))["drifted"] is True


def test_a_retrain_that_cannot_start_fails_the_run_after_recording_it(
    trained, tmp_path, prefect_server, monkeypatch
):
    import flows.predict as predict_flow
    from taglens.errors import TaglensError
    from taglens.serving.batch.outputs import read_rows

    # Given retrain on drift, but no such deployment on the server
    monkeypatch.setattr(predict_flow, "RETRAIN_DEPLOYMENT", "training/not-registered")
    params = write_tiny_params(
        tmp_path / "params.yaml",
        {
            "base.classes": ["animals", "food", "sports"],
            "predict.drift.min_photos": MIN_PHOTOS,
            "predict.drift.retrain": True,
        },
    )
    out = tmp_path / "a.parquet"
    shifted = _listing(tmp_path, "animals", trained["photos"]["animals"])
    # When a drifted night runs
    state = batch_predict_flow(
        shifted,
        str(out),
        model_uri=str(trained["models"]),
        params_path=str(params),
        return_state=True,
    )
    # Then the run fails with what to do, after its rows and figures were recorded
    assert state.is_failed()
    with pytest.raises(TaglensError, match="no deployment training/not-registered: register it"):
        state.result()
    assert len(list(read_rows(out))) == 60
    [run] = mlflow.search_runs(
        filter_string=f"params.output = '{out}'", search_all_experiments=True, output_format="list"
    )
    assert run.data.tags["drift"] == "flagged" and run.data.metrics["drift_flag"] == 1.0
