"""train killed with SIGKILL at a seeded random point, then re-run: a complete, valid model."""

from __future__ import annotations

import json
import random
import shutil

import pytest
from reliability_kit import (
    PIPELINE_OVERRIDES,
    copy_repo,
    kill_when,
    ok,
    run_stage,
    start_stage,
    write_params,
)

pytestmark = pytest.mark.slow

# Seeds of the kill point: 1 kills while the model is saved, 5 while the rest of models/ is written.
SEEDS = (1, 5)
# Log lines that mark the phases of a train run: before the fit, after it (saving the model),
# after model.keras (writing the rest), and inside the MLflow model logging.
PHASES = ("MLflow tracking at", "head fitted", "hashtag statistics", "Validating input example")
MODEL_FILES = (
    "drift_reference.json",
    "hashtags.json",
    "image_rankers.npz",
    "model.keras",
    "model_info.json",
)


def _load_model(models):
    import keras

    from taglens.features.backbones import preprocess_layer
    from taglens.features.views import register_view_layers

    preprocess_layer("none")  # registers the custom layers the file names
    register_view_layers()
    return keras.saving.load_model(models / "model.keras", compile=False)


def _visible(models) -> list[str]:
    """The outputs proper; a kill can leave a hidden temp file beside them, which nothing reads."""
    hidden = [p.name for p in models.glob(".*")]
    assert all(".tmp" in name for name in hidden), hidden
    return sorted(p.name for p in models.glob("*") if not p.name.startswith("."))


@pytest.mark.parametrize("seed", SEEDS)
def test_killed_train_reruns_to_a_complete_model(pipeline, tmp_path, monkeypatch, seed):
    # Given the reference pipeline's data, and a train run killed in a seeded random phase
    repo = copy_repo(tmp_path / "repo", source=pipeline)
    write_params(repo, PIPELINE_OVERRIDES)
    for part in ("data", "reports"):
        shutil.copytree(pipeline / part, repo / part)
    rng = random.Random(seed)
    phase = rng.choice(PHASES)
    log = tmp_path / "killed.log"
    proc = start_stage(repo, "train", log=log)
    kill_when(proc, lambda: phase in log.read_text(errors="replace"), seed=seed, max_delay=0.3)

    # Then every model file present is whole (each is written atomically)
    models = repo / "models"
    present = _visible(models) if models.exists() else []
    assert set(present) <= set(MODEL_FILES), f"partial files after the kill: {present}"
    if "model.keras" in present:
        assert _load_model(models).output["probabilities"].shape[-1] == 10
    for name in ("model_info.json", "hashtags.json"):
        if name in present:
            json.loads((models / name).read_text())

    # When train runs again
    ok(run_stage(repo, "train"))

    # Then models/ holds exactly its files, valid and shaped like the uninterrupted run's
    assert _visible(models) == list(MODEL_FILES)
    info = json.loads((models / "model_info.json").read_text())
    ref_info = json.loads((pipeline / "models" / "model_info.json").read_text())
    assert {k: v for k, v in info.items() if k != "run_id"} == {
        k: v for k, v in ref_info.items() if k != "run_id"
    }
    assert json.loads((models / "hashtags.json").read_text()) == json.loads(
        (pipeline / "models" / "hashtags.json").read_text()
    )
    model, reference = _load_model(models), _load_model(pipeline / "models")
    assert model.input_shape == reference.input_shape
    assert model.output_shape == reference.output_shape
    # The fit is seeded: the epochs run and their scores match the uninterrupted run's.
    assert (repo / "reports/history.csv").read_text() == (
        pipeline / "reports/history.csv"
    ).read_text()

    # And the model is logged in a finished MLflow run (the killed run is not the one used)
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")
    run = client.get_run(info["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == str(PIPELINE_OVERRIDES[("train", "epochs")])
    assert len(
        client.search_logged_models(
            experiment_ids=[run.info.experiment_id],
            filter_string=f"source_run_id='{run.info.run_id}'",
        )
    )
