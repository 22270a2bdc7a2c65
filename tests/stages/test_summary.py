"""The end-of-demo summary and the list of held-out test images it hands to batch predict."""

import json
from pathlib import Path

from stages.summary import main, summarize, write_test_image_list


def _finished_run(root):
    (root / "reports").mkdir(parents=True)
    (root / "reports" / "metrics.json").write_text(
        json.dumps({"accuracy": 0.8125, "top3_accuracy": 0.95, "n_test": 16})
    )
    (root / "reports" / "register.json").write_text(
        json.dumps({"model_name": "taglens", "version": 3, "decision": "champion", "reason": "ok"})
    )
    (root / "reports" / "curves.png").write_bytes(b"png")
    (root / "predictions").mkdir()
    (root / "predictions" / "demo.csv").write_text("path\n")
    (root / "predictions" / "demo-inputs.txt").write_text("x\n")
    clean = root / "data" / "clean"
    clean.mkdir(parents=True)
    (clean / "manifest.csv").write_text(
        "id,sha256,image,label,split,distance\n"
        "a,1,images/a.jpg,art,train,0.1\n"
        "b,2,images/b.jpg,art,test,0.2\n"
        "c,3,images/c.jpg,food,test,0.3\n"
        "d,4,images/d.jpg,food,val,0.3\n"
    )


def test_summary_names_metrics_decision_plots_and_predictions(tmp_path):
    _finished_run(tmp_path)
    text = summarize(tmp_path)
    assert "accuracy 0.812" in text and "n_test 16" in text
    assert "taglens version 3: champion (ok)" in text
    assert "1 PNGs" in text
    assert str(tmp_path / "predictions" / "demo.csv") in text
    assert "demo-inputs.txt" not in text
    assert "make mlflow-ui" in text


def test_summary_says_an_experiment_was_not_registered(tmp_path):
    _finished_run(tmp_path)
    skipped = {"model_name": "taglens", "version": None, "decision": "skipped", "reason": "why"}
    (tmp_path / "reports" / "register.json").write_text(json.dumps(skipped))
    assert "taglens not registered: skipped (why)" in summarize(tmp_path)


def test_test_image_list_holds_only_the_test_split(tmp_path):
    _finished_run(tmp_path)
    out = tmp_path / "predictions" / "inputs.txt"
    assert write_test_image_list(tmp_path, out) == 2
    lines = out.read_text().splitlines()
    assert lines == [
        str(tmp_path / "data/raw/images/b.jpg"),
        str(tmp_path / "data/raw/images/c.jpg"),
    ]
    assert all(Path(line).is_absolute() for line in lines)
    assert main(["--root", str(tmp_path), "--list-test-images", str(out)]) == 0
