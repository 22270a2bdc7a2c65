"""Entry points print a user's error as one line with exit code 2, and let bugs through."""

import os
import subprocess
import sys
import types

import pytest

from taglens import artifacts, cli
from taglens.cli import run_main
from taglens.errors import TaglensError
from taglens.features.backbones import BackboneWeightsError
from taglens.lifecycle.registry import RegistryError
from taglens.params import ParamsError
from taglens.serving.model_ref import ModelNotFoundError
from tests.helpers.paths import ROOT


@pytest.mark.parametrize(
    "error",
    [
        ParamsError("train.epochs must be >= 1, got 0"),
        BackboneWeightsError("model.weights: no weights file at x.h5"),
        ModelNotFoundError("no champion yet: run `dvc repro`"),
        RegistryError("taglens has no version 9"),
        FileNotFoundError("no metrics at reports/metrics.json"),
        TaglensError("scrape.folder photos has no class folders"),
    ],
)
def test_user_errors_become_one_line_and_exit_2(error, capsys):
    def body():
        raise error

    assert run_main(body) == 2
    assert capsys.readouterr().err == f"error: {error}\n"


def test_model_not_found_is_still_a_lookup_error():
    assert issubclass(ModelNotFoundError, LookupError)


def test_a_bug_is_not_hidden():
    def body():
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run_main(body)


def test_a_plain_value_error_is_a_bug_and_keeps_its_traceback():
    def body():
        int("not a number")  # a ValueError from a bug, not from the user

    with pytest.raises(ValueError, match="invalid literal"):
        run_main(body)


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for command in (
        "scrape",
        "featurize",
        "clean",
        "train",
        "evaluate",
        "register",
        "registry",
        "predict",
        "serve",
        "retrain",
        "schedule",
    ):
        assert f"\n    {command}" in out, command


def test_version(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.startswith("taglens ")


def test_a_subcommand_runs_its_module_with_the_rest_of_the_arguments(monkeypatch, capsys):
    seen = []
    fake = types.ModuleType("fake_stage")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "fake_stage", fake)
    monkeypatch.setitem(cli.COMMANDS, "clean", ("fake_stage", "x"))
    assert cli.main(["clean", "--params", "p.yaml", "--out", "o"]) == 0
    assert seen == [["--params", "p.yaml", "--out", "o"]]


def test_registry_needs_an_admin_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["registry", "--params", "params.yaml"])
    assert exit_info.value.code == 2
    needs = "registry needs one of: history, list, promote, rollback, unlock"
    assert needs in capsys.readouterr().err


def test_a_bug_in_a_subcommand_keeps_its_traceback(monkeypatch):
    def buggy_main(argv):
        return run_main(lambda: {}["missing key"])

    fake = types.ModuleType("buggy_stage")
    fake.main = buggy_main
    monkeypatch.setitem(sys.modules, "buggy_stage", fake)
    monkeypatch.setitem(cli.COMMANDS, "train", ("buggy_stage", "x"))
    with pytest.raises(KeyError, match="missing key"):
        cli.main(["train"])


def test_the_command_line_help_and_a_user_error_in_a_subprocess(tmp_path):
    command = [sys.executable, "-m", "taglens.cli"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this source tree, wherever it is installed
    helped = subprocess.run(
        [*command, "clean", "--help"], capture_output=True, text=True, timeout=120, env=env
    )
    assert helped.returncode == 0
    assert helped.stdout.startswith("usage: taglens clean ")
    assert "--features" in helped.stdout
    # A missing params file is the user's to fix: one line, exit 2, no traceback
    failed = subprocess.run(
        [*command, "clean", "--params", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert failed.returncode == 2
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "nope.yaml" in errors[0], failed.stderr
    assert "Traceback" not in failed.stderr


def _options_without_help(text: str) -> list[str]:
    """Option lines of an argparse help text that have no description beside or below them."""
    lines = text.splitlines()
    missing = []
    for number, line in enumerate(lines):
        if not line.startswith("  -"):
            continue
        described = "  " in line.strip()  # "--out OUT    where it goes"
        following = lines[number + 1] if number + 1 < len(lines) else ""
        below = following.startswith("    ") and not following.strip().startswith("-")
        if not (described or below):
            missing.append(line.strip())
    return missing


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_option_of_every_command_says_what_it_is(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: ")
    assert _options_without_help(text) == []


def test_every_pipeline_stage_is_a_command():
    assert set(artifacts.STAGES) <= set(cli.COMMANDS)
