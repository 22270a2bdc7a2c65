"""Entry points print a user's error as one line with exit code 2, and let bugs through."""

import pytest

from taglens.backbones import BackboneWeightsError
from taglens.cli import run_main
from taglens.params import ParamsError
from taglens.pyfunc import ModelNotFoundError
from taglens.registry import RegistryError


@pytest.mark.parametrize(
    "error",
    [
        ParamsError("train.epochs must be >= 1, got 0"),
        BackboneWeightsError("model.weights: no weights file at x.h5"),
        ModelNotFoundError("no champion yet: run `dvc repro`"),
        RegistryError("taglens has no version 9"),
        FileNotFoundError("no metrics at reports/metrics.json"),
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
