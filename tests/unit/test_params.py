"""The params loader: valid files load, typos and bad values fail naming the key."""

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from taglens.features.backbones import BACKBONES
from taglens.params import ParamsError, flatten, load_params, parse_params
from tests.helpers.params import tiny_params, tiny_params_path

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("path", "classes"),
    [
        (ROOT / "params.yaml", None),  # null: the classes the source finds
        (tiny_params_path(), 10),
    ],
)
def test_shipped_params_files_load(path, classes):
    params = load_params(path)
    assert (params.base.classes and len(params.base.classes)) == classes
    assert params.register.model_name == "taglens"


def test_classes_given_need_at_least_two():
    with pytest.raises(ParamsError, match="base.classes"):
        load_params(ROOT / "params.yaml", {"base.classes": ["art"]})


def test_fixture_params_are_tiny():
    params = tiny_params()
    assert params.model.image_size == 32
    assert params.model.weights is None


def _raw():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_unknown_key_is_named():
    raw = _raw()
    raw["train"]["learnig_rate"] = 0.1
    with pytest.raises(ParamsError, match=r"train\.learnig_rate is not a known key"):
        parse_params(raw)


@pytest.mark.parametrize(
    ("dotted", "value", "message"),
    [
        ("train.learning_rate", -1, r"train\.learning_rate must be > 0(\.0)?, got -1"),
        ("train.epochs", 0, r"train\.epochs must be >= 1, got 0"),
        ("clean.k_std", 0, r"clean\.k_std must be > 0"),
        ("hashtags.top_k", 31, r"hashtags\.top_k must be <= 30, got 31"),
        ("model.backbone", "alexnet", r"model\.backbone must be one of .*got 'alexnet'"),
        ("featurize.engine", "tensorrt", r"featurize\.engine: .*got 'tensorrt'"),
        ("featurize.engine", "int8", r"featurize\.engine: .*'openvino-int8', got 'int8'"),
        ("featurize.int8.max_drop", 1.5, r"featurize\.int8\.max_drop must be < 1"),
        ("featurize.int8.max_drop", -0.1, r"featurize\.int8\.max_drop must be >= 0"),
        ("featurize.int8.calibration_images", 0, r"int8\.calibration_images must be >= 1"),
        ("featurize.int8.max_iterations", 0, r"featurize\.int8\.max_iterations must be >= 1"),
        ("serve.port", 70000, r"serve\.port must be <= 65535"),
        ("serve.follow_seconds", -1, r"serve\.follow_seconds must be >= 0"),
        ("serve.log_format", "xml", r"serve\.log_format: .* 'text' or 'json', got 'xml'"),
        ("base.seed", 2**32, r"base\.seed must be <= 4294967295"),
        ("team.heartbeat_s", 10, r"team\.heartbeat_s must be >= 30, got 10"),
        ("team.crashed_after_s", 60, r"team\.crashed_after_s \(60\) must exceed team\.heart"),
    ],
)
def test_bad_values_are_named(dotted, value, message):
    with pytest.raises(ParamsError, match=message):
        load_params(ROOT / "params.yaml", {dotted: value})


def test_an_unknown_backbone_names_every_allowed_one_from_the_one_list():
    with pytest.raises(ParamsError) as caught:
        load_params(ROOT / "params.yaml", {"model.backbone": "alexnet"})
    allowed = ", ".join(BACKBONES)
    assert str(caught.value) == (
        f"invalid params: model.backbone must be one of {allowed}, got 'alexnet'"
    )
    for name in BACKBONES:  # and every name of the list is accepted
        assert load_params(ROOT / "params.yaml", {"model.backbone": name}).model.backbone == name


def test_missing_section_is_named():
    raw = _raw()
    del raw["clean"]
    with pytest.raises(ParamsError, match=r"clean is missing"):
        parse_params(raw)


def test_split_fractions_must_leave_training_data():
    with pytest.raises(ParamsError, match=r"val_fraction \+ clean\.test_fraction must be < 0\.9"):
        load_params(ROOT / "params.yaml", {"clean.val_fraction": 0.5, "clean.test_fraction": 0.45})


def test_xla_needs_the_tensorflow_engine():
    with pytest.raises(
        ParamsError,
        match=r"featurize\.jit_compile: true applies to "
        r"featurize\.engine: tensorflow only, got engine 'openvino'",
    ):
        load_params(
            ROOT / "params.yaml", {"featurize.jit_compile": True, "featurize.engine": "openvino"}
        )
    both = {"featurize.jit_compile": True, "featurize.engine": "tensorflow"}
    assert load_params(ROOT / "params.yaml", both).featurize.jit_compile is True


def test_the_int8_engine_is_a_featurize_engine_with_its_own_settings():
    # Given params.yaml with the INT8 engine chosen
    params = load_params(ROOT / "params.yaml", {"featurize.engine": "openvino-int8"})
    # Then it loads, with the quantization settings params.yaml gives
    assert params.featurize.engine == "openvino-int8"
    assert params.featurize.int8.max_drop == 0.01
    assert params.featurize.int8.calibration_images == 300
    # and XLA stays TensorFlow's only, a misspelt INT8 key is named, the section is required
    with pytest.raises(ParamsError, match=r"got engine 'openvino-int8'"):
        load_params(
            ROOT / "params.yaml",
            {"featurize.jit_compile": True, "featurize.engine": "openvino-int8"},
        )
    raw = _raw()
    raw["featurize"]["int8"]["maxdrop"] = 0.1
    with pytest.raises(ParamsError, match=r"featurize\.int8\.maxdrop is not a known key"):
        parse_params(raw)
    del raw["featurize"]["int8"]
    with pytest.raises(ParamsError, match=r"featurize\.int8 is missing"):
        parse_params(raw)


def test_folder_source_needs_a_folder():
    with pytest.raises(ParamsError, match="scrape.folder must name a directory"):
        load_params(ROOT / "params.yaml", {"scrape.source": "folder", "scrape.folder": None})


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("- just a list\n")
    with pytest.raises(ParamsError, match="mapping of sections"):
        load_params(bad)


def test_params_are_frozen():
    params = load_params(ROOT / "params.yaml")
    with pytest.raises(ValidationError):
        params.train.epochs = 3


def test_flatten_uses_section_names():
    flat = flatten(load_params(ROOT / "params.yaml"))
    assert flat["train.learning_rate"] == 0.001
    assert flat["train.fine_tune.enabled"] is False
    assert flatten(tiny_params())["base.classes"].startswith("animals,art,")


@pytest.mark.parametrize("dotted", ["train.crops", "train.fine_tune.enabled"])
def test_the_choices_made_on_validation_take_auto_true_or_false(dotted):
    for value in ("auto", True, False):
        params = load_params(ROOT / "params.yaml", {dotted: value})
        section, *rest = dotted.split(".")
        got = getattr(params, section)
        for key in rest:
            got = getattr(got, key)
        assert got == value
    with pytest.raises(ParamsError, match=dotted.replace(".", r"\.")):
        load_params(ROOT / "params.yaml", {dotted: "sometimes"})


def test_the_crops_view_is_a_featurize_view():
    params = load_params(ROOT / "params.yaml", {"featurize.views": ["flip", "crops"]})
    assert params.featurize.views == ("flip", "crops")
    with pytest.raises(ParamsError, match=r"featurize\.views"):
        load_params(ROOT / "params.yaml", {"featurize.views": ["zoom"]})
