"""Benchmarks leave their numbers as JSON plus a markdown table."""

import json

from bench.results_io import save_results


def test_save_results_writes_json_and_markdown(tmp_path, capsys):
    save_results(tmp_path, "predict-vgg19-224px", {"ratio": 0.97}, "| ratio |\n| 0.97 |\n")
    assert json.loads((tmp_path / "predict-vgg19-224px.json").read_text()) == {"ratio": 0.97}
    assert (tmp_path / "predict-vgg19-224px.md").read_text() == "| ratio |\n| 0.97 |\n"
    assert "| 0.97 |" in capsys.readouterr().out
